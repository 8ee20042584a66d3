"""The `gfpipe` subcommands: one thin module per subcommand over library functions.

Each module provides `add_arguments(parser)` and `run(args) -> int`. A
module checks every argument and every location it will write before the long work starts,
raises `ValueError`/`OSError` with a message that says what to fix (the dispatcher in
`gfpipe.cli` prints it as one line and exits with status 2), and then calls the library.
Nothing in the library imports from here.
"""

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "classify": ("gfpipe.commands.classify", "tag an image archive under a compute budget (the nightly job)"),
    "synth": ("gfpipe.commands.synth", "write a split of the cluttered-glyphs benchmark dataset"),
    "evaluate": ("gfpipe.commands.evaluate", "anytime and budgeted accuracy of a checkpoint on labelled data"),
    "costs": ("gfpipe.commands.costs", "per-step cumulative Multiply-Adds of a checkpoint or an architecture"),
    "train": ("gfpipe.commands.train", "train a GFNet on a Ray cluster: three stages, calibration, one checkpoint"),
    "plan": ("gfpipe.commands.plan", "cost, accuracy, devices and device-hours of a classify job, or its best budget"),
}
"""Subcommand name -> (module, one-line help); a module is imported only when its subcommand runs."""
