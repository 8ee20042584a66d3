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
    add_budget_arguments,
    format_amount,
    format_duration,
    parse_budget,
)
from gfpipe.budget.solver import (
    SimulationResult,
    exit_fractions,
    exit_steps,
    simulate,
    thresholds,
    thresholds_reference,
)

__all__ = [
    "Budget",
    "BudgetController",
    "BudgetReport",
    "ObservationBuffer",
    "ResolvedBudget",
    "SimulationResult",
    "add_budget_arguments",
    "exit_fractions",
    "exit_steps",
    "format_amount",
    "format_duration",
    "is_shadow",
    "parse_budget",
    "shadow_draw",
    "simulate",
    "thresholds",
    "thresholds_reference",
]
