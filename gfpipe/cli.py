"""`gfpipe` command line: one subcommand per job, each defined in the module that owns it.

A subcommand module provides `add_arguments(parser)` and `run(args) -> int`. Modules are
imported only when their subcommand runs, so `gfpipe synth` never imports Ray or torch's
heavier parts it does not need. Logging is configured here and nowhere in the library.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("gfpipe.data.synthetic", "write the cluttered-glyphs benchmark dataset"),
    "evaluate": ("gfpipe.evaluate", "anytime and budgeted accuracy of a checkpoint on labelled data"),
    "costs": ("gfpipe.budget.costs", "per-step cumulative Multiply-Adds of a checkpoint or architecture"),
}


def _parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gfpipe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if a in SUBCOMMANDS), None)
    args = _parser(selected).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except (ValueError, OSError) as exc:
        # Bad input (budgets, checkpoints, storage URIs) is the user's to fix: say what, no traceback.
        logging.getLogger("gfpipe").error("%s", exc, exc_info=args.verbose)
        return 2


if __name__ == "__main__":
    sys.exit(main())
