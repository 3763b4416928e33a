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
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(
            f"gamma must be in [0, 1], got {gamma}: above 1 a scheme far below the target scores < 0."
        )
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
    """``F = f * (1 + lambda * CacheScore)`` for a score where larger is better (the paper's fitness).

    The factor must always help a scheme that holds the target better, whatever the sign of the score, so a
    negative score is divided by it instead (``F = f / (1 + lambda * CacheScore)``, closer to 0 is better):
    multiplying would reward overshooting the target. For a metric where smaller is better (a loss ``m``), the
    same rule applies to ``-m``. A NaN score gives ``-inf``.

    Example
    -------
    >>> combined_fitness(50.0, [128, 128], 128), combined_fitness(-1.0, [128, 128], 128)
    (65.0, -0.7692307692307692)
    """
    if math.isnan(score):
        return -math.inf
    factor = 1.0 + lam * cache_score(budgets, target, gamma)
    signed = score if greater_is_better else -score
    return signed * factor if signed >= 0 else signed / factor
