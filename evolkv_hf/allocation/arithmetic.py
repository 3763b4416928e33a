"""Exact integer arithmetic behind per-layer KV budgets: totals, proportional distribution, pyramids.

Everything is computed with :class:`fractions.Fraction`, so results are exact and platform independent;
only the final step rounds to integers, by largest remainder.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from fractions import Fraction

from .._validation import check_positive_int

__all__ = [
    "distribute",
    "pyramid_weights",
    "resolve_floor",
    "target_total",
]


def _as_fraction(name: str, value: object) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}.")
    if isinstance(value, numbers.Rational):
        return Fraction(int(value.numerator), int(value.denominator))
    return Fraction(float(value))


def target_total(mean_budget: float, num_layers: int) -> int:
    """Total token budget ``round(mean_budget * num_layers)``, rounding halves up.

    The product is computed exactly (a float ``mean_budget`` is taken at its exact binary value), so
    ``target_total(128.5, 3) == 386``. Raises ``ValueError`` when the total would leave a layer without a
    single token (``total < num_layers``).
    """
    num_layers = check_positive_int("num_layers", num_layers)
    mean = _as_fraction("mean_budget", mean_budget)
    if mean <= 0:
        raise ValueError(f"mean_budget must be > 0, got {mean_budget}.")
    total = math.floor(mean * num_layers + Fraction(1, 2))
    if total < num_layers:
        raise ValueError(
            f"mean_budget={mean_budget} gives {total} tokens in total for {num_layers} layers, fewer than one "
            f"token per layer; use mean_budget >= {1 - 0.5 / num_layers:g}."
        )
    return total


def resolve_floor(floor: int | None, window_size: int, total: int, num_layers: int) -> int:
    """Per-layer floor: ``floor`` if given, else ``min(window_size, total // num_layers)`` (at least 1).

    The default keeps the observation window in every layer whenever the target allows it; for targets below
    the window size it degrades to the largest floor that is still feasible.
    """
    if floor is not None:
        return check_positive_int("floor", floor)
    return max(1, min(window_size, total // num_layers))


def _clip(value: Fraction, floor: int, cap: int | None) -> Fraction:
    if value < floor:
        return Fraction(floor)
    if cap is not None and value > cap:
        return Fraction(cap)
    return value


def _clipped_sum(scale: Fraction, weights: Sequence[Fraction], floor: int, cap: int | None) -> Fraction:
    return sum((_clip(scale * w, floor, cap) for w in weights), Fraction(0))


def _solve_scale(weights: Sequence[Fraction], total: int, floor: int, cap: int | None) -> Fraction:
    """Find ``s`` with ``sum(clip(s * w_i, floor, cap)) == total`` (the sum is monotone, piecewise linear in s)."""
    breakpoints = sorted(
        {Fraction(floor) / w for w in weights} | ({Fraction(cap) / w for w in weights} if cap else set())
    )
    # Binary search the first breakpoint where the clipped sum reaches the total.
    lo, hi = 0, len(breakpoints)
    while lo < hi:
        mid = (lo + hi) // 2
        if _clipped_sum(breakpoints[mid], weights, floor, cap) >= total:
            hi = mid
        else:
            lo = mid + 1
    if lo < len(breakpoints) and _clipped_sum(breakpoints[lo], weights, floor, cap) == total:
        return breakpoints[lo]
    left = breakpoints[lo - 1] if lo > 0 else Fraction(0)
    right = breakpoints[lo] if lo < len(breakpoints) else left + 1
    probe = (left + right) / 2  # strictly inside the linear segment: classification of layers is constant
    fixed = Fraction(0)
    free_weight = Fraction(0)
    for w in weights:
        value = probe * w
        if value <= floor:
            fixed += floor
        elif cap is not None and value >= cap:
            fixed += cap
        else:
            free_weight += w
    # free_weight > 0: a flat segment cannot cross the total strictly inside it.
    return (total - fixed) / free_weight


def distribute(
    weights: Sequence[int | Fraction], total: int, *, floor: int = 1, cap: int | None = None
) -> list[int]:
    """Split ``total`` integer tokens across layers proportionally to ``weights``, within ``[floor, cap]``.

    Finds the scale ``s`` such that ``sum(clip(s * w_i, floor, cap)) == total`` exactly (layers that hit a
    bound stay there; the others keep their proportions), then rounds by largest remainder: every layer gets
    the integer part of its share and the leftover tokens go to the largest fractional parts, ties broken
    by larger weight, then lower layer index.

    Guarantees: ``sum(result) == total``; ``floor <= result[i] <= cap``; if ``w_i > w_j`` then
    ``result[i] >= result[j]``; integer weights already summing to ``total`` within the bounds are returned
    unchanged.

    Raises
    ------
    ValueError
        If ``total`` cannot be reached within the bounds (``total < L * floor`` or ``total > L * cap``), or a
        weight is not positive.
    """
    num_layers = len(weights)
    if num_layers == 0:
        raise ValueError("Cannot distribute a budget over zero layers.")
    floor = check_positive_int("floor", floor)
    if cap is not None:
        cap = check_positive_int("cap", cap)
        if cap < floor:
            raise ValueError(f"cap ({cap}) must be >= floor ({floor}).")
    fractions = [Fraction(w) for w in weights]
    if any(w <= 0 for w in fractions):
        raise ValueError(f"All weights must be > 0, got {list(weights)}.")
    if total < num_layers * floor:
        raise ValueError(
            f"Infeasible target: {total} tokens for {num_layers} layers is below the per-layer floor of {floor} "
            f"(needs at least {num_layers * floor} tokens, i.e. a mean budget >= {floor}). Raise the mean budget "
            f"or pass a smaller floor."
        )
    if cap is not None and total > num_layers * cap:
        raise ValueError(
            f"Infeasible target: {total} tokens for {num_layers} layers is above the per-layer cap of {cap} "
            f"(at most {num_layers * cap} tokens, i.e. a mean budget <= {cap}). Lower the mean budget or raise "
            f"the cap."
        )
    scale = _solve_scale(fractions, total, floor, cap)
    shares = [_clip(scale * w, floor, cap) for w in fractions]
    result = [math.floor(share) for share in shares]
    leftover = total - sum(result)
    order = sorted(range(num_layers), key=lambda i: (-(shares[i] - result[i]), -fractions[i], i))
    for i in order[:leftover]:
        result[i] += 1
    return result


def pyramid_weights(num_layers: int, total: int, *, base: int, beta: float) -> list[Fraction]:
    """Real-valued PyramidKV shares: linear from bottom to top layer, ``base`` + a tilted surplus.

    With ``m = total / num_layers - base`` the per-layer surplus above ``base``, the top layer gets
    ``base + m / beta`` and the bottom layer ``base + 2 * m - m / beta``; the layers in between are linear, so
    the shares sum to ``total`` exactly. ``beta = 1`` is uniform; larger ``beta`` is steeper.
    """
    num_layers = check_positive_int("num_layers", num_layers)
    beta_fraction = _as_fraction("beta", beta)
    if beta_fraction < 1:
        raise ValueError(f"beta must be >= 1 (1 is uniform, larger is steeper), got {beta}.")
    surplus = Fraction(total, num_layers) - base
    if surplus < 0:
        raise ValueError(f"base ({base}) must not exceed the mean budget {total / num_layers:g}.")
    if num_layers == 1:
        return [Fraction(total)]
    top = base + surplus / beta_fraction
    bottom = base + 2 * surplus - surplus / beta_fraction
    step = (bottom - top) / (num_layers - 1)
    return [bottom - i * step for i in range(num_layers)]
