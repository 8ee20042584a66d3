"""`gfpipe` command line: the dispatcher.

Each subcommand lives in its own module under `gfpipe.commands` (arguments, checks, one call
into the library) and is imported only when it runs, so `gfpipe synth` never pays for torch.
This module owns what every subcommand shares: `-v` (before or after the subcommand), logging
(configured here and nowhere in the library), one-line errors with exit status 2 for bad input,
and quiet handling of a closed stdout.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from gfpipe.commands import SUBCOMMANDS
from gfpipe.runtime import tune_allocator

PROG = "gfpipe"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, off switches)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An argument error is one line on stderr (what was wrong, where to look) and status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _parser(selected: str | None) -> argparse.ArgumentParser:
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="debug logging, and tracebacks with errors",
    )
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0], parents=[verbose], formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module, summary) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary, parents=[verbose], formatter_class=_HelpFormatter)
        if name == selected:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = _parser(selected if selected in SUBCOMMANDS else None).parse_args(argv)
    verbose = getattr(args, "verbose", False)
    # gfpipe's own progress and notes at INFO; other libraries (botocore, s3fs, ...) only when
    # they warn, unless -v asks for everything.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger(PROG).setLevel(logging.DEBUG if verbose else logging.INFO)
    tune_allocator()  # steady model-call times: see gfpipe.runtime
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        # Bad input (arguments, budgets, checkpoints, data, storage) is the user's to fix:
        # one line that says what and how, no traceback unless -v.
        if verbose:
            logging.getLogger(PROG).exception("%s", exc)
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
