"""EvolKV's fitness: the task score, scaled by how well a scheme holds the target mean budget."""

from __future__ import annotations

import math
from collections.abc import Sequence


def cache_score(budgets: Sequence[int], target: float, gamma: float = 0.2) -> float:
    """EvolKV's CacheScore of a scheme against the target mean budget ``c``.

    ``max(0, 1 - (kbar - c) / c)`` above the target (overshooting is penalised linearly, to 0 at twice the
    target) and ``1 - gamma * (1 - kbar / c)`` below it (a mild penalty for leaving budget unused).

    Example
    -------
    >>> cache_score([128, 128], 128), cache_score([192, 192], 128), cache_score([64, 64], 128)
    (1.0, 0.5, 0.9)
    """
    mean = sum(budgets) / len(budgets)
    if mean > target:
        return max(0.0, 1.0 - (mean - target) / target)
    return 1.0 - gamma * (1.0 - mean / target)


def combined_fitness(
    score: float,
    budgets: Sequence[int],
    target: float,
    *,
    lam: float = 0.3,
    gamma: float = 0.2,
    greater_is_better: bool = True,
) -> float:
    """``F = f * (1 + lambda * CacheScore)`` for a score where larger is better.

    For a metric where smaller is better (a loss ``m >= 0``), ``F = -m / (1 + lambda * CacheScore)`` so that
    a larger ``F`` is still better and a better CacheScore still helps. A NaN score gives ``-inf``.
    """
    if math.isnan(score):
        return -math.inf
    factor = 1.0 + lam * cache_score(budgets, target, gamma)
    return score * factor if greater_is_better else -score / factor
