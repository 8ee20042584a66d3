"""Per-step costs, the budget-to-thresholds solver and online budget control (torch/numpy only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gfpipe.budget.control import (
    BudgetController,
    BudgetReport,
    ObservationBuffer,
    is_shadow,
    shadow_draw,
)
from gfpipe.budget.grammar import (
    Budget,
    ResolvedBudget,
    format_amount,
    format_duration,
    parse_budget,
)
from gfpipe.budget.solver import (
    SimulationResult,
    ThresholdSolution,
    exit_fractions,
    exit_steps,
    simulate,
    solve_thresholds,
    thresholds,
    thresholds_msdnet,
    thresholds_reference,
)

# The score functions take torch tensors: they load on first use, so that the budget ledger's
# process (control and solver, numpy only) does not import torch.
_LAZY_SCORES = ("confidence_from_score", "exit_scores", "scores_from_confidences")

if TYPE_CHECKING:
    from gfpipe.budget.scores import confidence_from_score, exit_scores, scores_from_confidences


def __getattr__(name: str) -> Any:
    if name not in _LAZY_SCORES:
        raise AttributeError(f"module 'gfpipe.budget' has no attribute {name!r}")
    from gfpipe.budget import scores

    return getattr(scores, name)


__all__ = [
    "Budget",
    "BudgetController",
    "BudgetReport",
    "ObservationBuffer",
    "ResolvedBudget",
    "SimulationResult",
    "ThresholdSolution",
    "confidence_from_score",
    "exit_scores",
    "exit_fractions",
    "exit_steps",
    "format_amount",
    "format_duration",
    "is_shadow",
    "parse_budget",
    "scores_from_confidences",
    "shadow_draw",
    "simulate",
    "solve_thresholds",
    "thresholds",
    "thresholds_msdnet",
    "thresholds_reference",
]
