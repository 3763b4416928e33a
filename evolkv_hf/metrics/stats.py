"""Confidence intervals for mean scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._validation import check_positive_int

_MAX_CHUNK_ELEMENTS = 4_000_000


def bootstrap_ci(
    scores: Sequence[float] | np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``scores``.

    Parameters
    ----------
    scores
        Per-sample scores (e.g. from :func:`~evolkv_hf.metrics.per_sample_scores`).
    n_resamples
        Number of bootstrap resamples.
    confidence
        Coverage of the interval, in ``(0, 1)``.
    seed
        Seed of the resampling (``numpy.random.default_rng``); the interval is deterministic for it.

    Returns
    -------
    tuple of float
        ``(low, high)``.

    Examples
    --------
    >>> low, high = bootstrap_ci([0, 100, 100, 50, 100, 0, 100, 100], seed=0)
    >>> low <= 68.75 <= high
    True
    """
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one score")
    if not np.all(np.isfinite(values)):
        raise ValueError("bootstrap_ci: scores must be finite numbers")
    check_positive_int("n_resamples", n_resamples)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    rng = np.random.default_rng(seed)
    n = values.size
    means = np.empty(n_resamples)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        indices = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[indices].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)
