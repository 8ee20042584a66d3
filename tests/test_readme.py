"""README.md stays true: its Python blocks run as written, and its commands name real things.

The Python blocks run in order, in one namespace, in a folder that holds what the README's own
commands would have made: `model.pt` (a tiny glyph model) and `data/glyphs/test` (from
`gfpipe synth`). A block that needs a server it cannot have here (S3) is not in a python fence.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

import gfpipe
from gfpipe.checkpoint import OFFICIAL_KEYS
from gfpipe.data.synthetic import SYNTH_PREPROCESSING, SynthConfig, write_dataset
from gfpipe.model import GFNet, GFNetConfig, ModelCard
from tests.model.official_files import official_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    card = ModelCard(class_names=tuple("0123456789"), preprocessing=SYNTH_PREPROCESSING)
    model = GFNet(GFNetConfig(backbone="tiny", tiny_width=4, num_classes=10, input_size=224, patch_size=96, T=3), card)
    gfpipe.save_checkpoint(model, str(tmp_path / "model.pt"))
    write_dataset(str(tmp_path / "data" / "glyphs"), "test", 24, SynthConfig(seed=3))
    official = official_checkpoint("mobilenetv3_large_100", 96, T=3)
    torch.save(official, tmp_path / "mobilenetv3_large_100_patch_size_96.pth.tar")
    torch.save({k: official[k] for k in OFFICIAL_KEYS}, tmp_path / "trained.pth.tar")
    (tmp_path / "imagenet_classes.txt").write_text("".join(f"class {i}\n" for i in range(1000)))
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2, "the README's Python examples went missing"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README is ours
    assert "rows" in namespace and len(namespace["rows"]) == 24
    assert namespace["model"].class_names[7] == "class 7"  # the last load gave the names
    assert all(row["error"] is None for row in namespace["rows"])


def test_readme_names_only_commands_and_files_that_exist():
    text = README.read_text()
    from gfpipe.commands import SUBCOMMANDS

    shell = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))
    for name in re.findall(r"^gfpipe (\w+)", shell, flags=re.M):
        assert name in SUBCOMMANDS, f"README shows `gfpipe {name}`, which does not exist"
    root = README.parent
    for target in re.findall(r"`make (\w+)", text) + re.findall(r"^make (\w+)", shell, flags=re.M):
        assert re.search(rf"^{target}:", (root / "Makefile").read_text(), flags=re.M), f"make {target}"
    for path in re.findall(r"`((?:bench|gfpipe|tests|jobs|configs|infra)/[\w/.-]+\.(?:py|yaml|md))`", text):
        assert (root / path).exists(), f"README names {path}, which does not exist"


def test_every_gfpipe_and_job_command_in_the_guides_parses():
    """Each `gfpipe SUB ...` and `python jobs/SUB.py ...` line of README.md and docs/*.md parses
    with gfpipe's own CLI parser: a renamed or misspelled flag fails here, not for a user."""
    from gfpipe.cli import _parser

    from .markdown import GUIDES, bash_commands

    checked = 0
    for guide in GUIDES:
        for words in bash_commands(guide.read_text()):
            for i, word in enumerate(words):
                job = re.fullmatch(r"jobs/(\w+)\.py", word)
                if word == "gfpipe" and i == 0:
                    argv = words[1:]
                elif job and i > 0 and words[i - 1] == "python":
                    argv = [job.group(1), *words[i + 1 :]]
                else:
                    continue
                argv = argv[: argv.index("|")] if "|" in argv else argv
                try:
                    _parser(argv[0]).parse_args(argv)
                except SystemExit as exc:
                    raise AssertionError(f"{guide.name}: `{' '.join(words)}` does not parse") from exc
                checked += 1
    assert checked >= 10, checked
