"""Token counting and fitting a generated context to a target length in tokens.

Every generator builds its context from a growing number of units (haystack words, noise sentences,
list words, documents) around a fixed part (needles, gold paragraphs, variable chains). The number
of units is searched so that the context has at most ``target`` tokens and at least
``(1 - LENGTH_TOLERANCE) * target`` tokens, measured as
``len(tokenizer(context, add_special_tokens=False).input_ids)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

LENGTH_TOLERANCE = 0.02
"""Generated contexts have between ``(1 - LENGTH_TOLERANCE) * target`` and ``target`` tokens."""


def count_tokens(tokenizer: PreTrainedTokenizerBase | Any, text: str) -> int:
    """Number of tokens of ``text`` alone (no special tokens), as the task generators measure it.

    Examples
    --------
    >>> count_tokens(tokenizer, "hello world")  # doctest: +SKIP
    2
    """
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


class LengthFitError(ValueError):
    """A context of the requested length cannot be built (too short for the fixed part, or not enough text)."""


def fit_largest(
    count_at: Callable[[int], int], target: int, lo: int, hi: int, probe: int | None = None
) -> tuple[int, int] | None:
    """Largest ``n`` in ``[lo, hi]`` with ``count_at(n) <= target``, for a (nearly) non-decreasing ``count_at``.

    A linear estimate from ``count_at(lo)`` and ``count_at(probe)`` is refined by galloping and
    bisection, so a good probe needs only a handful of evaluations.

    Parameters
    ----------
    count_at
        Token count of the context built with ``n`` units.
    target
        Maximum number of tokens.
    lo, hi
        Search range of ``n`` (inclusive).
    probe
        A second point for the initial linear estimate (default: ``hi``).

    Returns
    -------
    tuple of int or None
        ``(n, count_at(n))``, or ``None`` when even ``count_at(lo)`` exceeds ``target``.

    Examples
    --------
    >>> fit_largest(lambda n: 3 * n + 10, target=100, lo=0, hi=1000)
    (30, 100)
    """
    cache: dict[int, int] = {}

    def f(n: int) -> int:
        if n not in cache:
            cache[n] = count_at(n)
        return cache[n]

    if f(lo) > target:
        return None
    if lo == hi:
        return lo, f(lo)
    p = min(max(probe if probe is not None else hi, lo + 1), hi)
    slope = (f(p) - f(lo)) / (p - lo)
    guess = p if slope <= 0 else lo + int((target - f(lo)) / slope)
    guess = min(max(guess, lo), hi)
    step = max(1, guess // 50)
    good, bad = lo, None
    if f(guess) <= target:
        good = guess
        while good < hi:
            nxt = min(hi, good + step)
            if f(nxt) > target:
                bad = nxt
                break
            good, step = nxt, step * 2
        if bad is None:
            return good, f(good)
    else:
        bad = guess
        while True:
            nxt = max(lo, bad - step)
            if f(nxt) <= target:
                good = nxt
                break
            bad, step = nxt, step * 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if f(mid) <= target:
            good = mid
        else:
            bad = mid
    return good, f(good)


def check_length(length: int, target: int, what: str) -> None:
    """Raise :class:`LengthFitError` unless ``length`` is within the tolerance below ``target``."""
    if not (1.0 - LENGTH_TOLERANCE) * target <= length <= target:
        raise LengthFitError(
            f"{what}: could only build a context of {length} tokens for a target of {target} "
            f"(tolerance {LENGTH_TOLERANCE:.0%}); choose another context_length."
        )
