"""Per-step costs, the budget-to-thresholds solver and online budget control (torch/numpy only)."""

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
from gfpipe.budget.scores import confidence_from_score, exit_scores, scores_from_confidences
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
