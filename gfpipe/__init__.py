"""gfpipe: Glance-and-Focus Networks as a real early-exit system for budgeted image tagging.

The public API imports no Ray: the model, its checkpoints and its costs. Its names load on first
use (PEP 562), so that the processes of the classify job that need no model (the budget ledger,
the read and decode tasks) do not import torch: on a small machine each import costs about a
second of CPU while the job starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
_LAZY = {
    "GFNet": "gfpipe.model",
    "GFNetConfig": "gfpipe.model",
    "GFState": "gfpipe.model",
    "load_checkpoint": "gfpipe.checkpoint",
    "save_checkpoint": "gfpipe.checkpoint",
    "CheckpointError": "gfpipe.checkpoint",
    "step_costs": "gfpipe.budget.costs",
}
__all__ = ["GFNet", "GFNetConfig", "GFState", "load_checkpoint", "save_checkpoint", "step_costs", "CheckpointError"]

if TYPE_CHECKING:
    from gfpipe.budget.costs import step_costs
    from gfpipe.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from gfpipe.model import GFNet, GFNetConfig, GFState


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'gfpipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
