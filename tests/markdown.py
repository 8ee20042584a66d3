"""Commands shown in the user guide (README.md, docs/*.md), as the shell would split them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def bash_commands(markdown: str) -> list[list[str]]:
    """The commands of the ```bash blocks, continuation lines joined, comments dropped, split as
    the shell would (`<`, `>` and `|` stay separate words)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars="|<>")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words = list(lexer)
            if words:
                commands.append(words)
    return commands
