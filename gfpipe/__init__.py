"""gfpipe: Glance-and-Focus Networks as a real early-exit system for budgeted image tagging.

The public API imports no Ray: the model, its checkpoints and its costs.
"""

from gfpipe.budget.costs import step_costs
from gfpipe.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gfpipe.model import GFNet, GFNetConfig, GFState

__version__ = "0.1.0"
__all__ = ["GFNet", "GFNetConfig", "GFState", "load_checkpoint", "save_checkpoint", "step_costs", "CheckpointError"]
