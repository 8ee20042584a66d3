"""The exit score: how sure a step is of its top class, as a number that never saturates.

Trained models give many max-softmax confidences of exactly 1.0 in float32 (a logit margin of
17 is enough), so images that the model ranks very differently tie at 1.0, and a threshold
solved on such ties lets a whole tied group exit above its quota. gfpipe therefore ranks and
thresholds images by the log-odds of the top class,

    score = log(p_max / (1 - p_max)) = l_max - logsumexp_{j != max}(l_j),

computed from the logits, not from the rounded softmax. It is a strictly increasing function of
max-softmax (so it exits the same images for matching thresholds), it is finite whenever the
logits are, and it keeps ordering images long after max-softmax has rounded to 1.0.
The solver, the engine and the budget controller all use it; output rows still report the
familiar max-softmax as `confidence` (= sigmoid(score)).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

# The largest score a float32 max-softmax below 1.0 can express; confidences of exactly 1.0
# (saturated, from data that stored max-softmax instead of scores) map just above it.
_SATURATED_SCORE = float(-np.log(np.float64(np.finfo(np.float32).epsneg))) + 1.0  # about 17.6


def exit_scores(logits: Tensor) -> Tensor:
    """Logits (..., K) -> float32 exit scores (...): log-odds of the top class (see module doc).

    Non-finite logits give a NaN score; callers treat that image as failed. With K = 1 the
    score is +inf (the only class is certain).
    """
    x = logits.float()
    top, index = x.max(dim=-1, keepdim=True)  # (..., 1)
    others = x.scatter(-1, index, float("-inf"))  # (..., K) with the top class masked out
    score = (top - torch.logsumexp(others, dim=-1, keepdim=True)).squeeze(-1)  # (...)
    finite = torch.isfinite(x).all(dim=-1)
    return torch.where(finite, score, torch.full_like(score, float("nan")))


def confidence_from_score(score: Any) -> Any:
    """Max-softmax confidence of an exit score (sigmoid); works on tensors, arrays and floats."""
    if isinstance(score, Tensor):
        return torch.sigmoid(score)
    return 1.0 / (1.0 + np.exp(-np.asarray(score, dtype=np.float64)))


def scores_from_confidences(confidences: Any) -> np.ndarray:
    """Max-softmax confidences (N, T) -> exit scores (float64), for data that stored only those.

    Saturated confidences (exactly 1.0) stay tied just above the largest score a float32
    confidence can express: they carry no ordering information to recover.
    """
    if isinstance(confidences, Tensor):
        confidences = confidences.detach().cpu().double().numpy()
    p = np.asarray(confidences, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.log(p) - np.log1p(-p)
    return np.where(p >= 1.0, _SATURATED_SCORE, score)
