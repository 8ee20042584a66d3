"""Per-step costs, the budget-to-thresholds solver and online budget control (torch/numpy only)."""
