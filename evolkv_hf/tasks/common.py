"""Helpers shared by the task generators: per-sample random generators, depths, argument checks."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from .._validation import check_positive_int


def sample_rng(task: str, seed: int, index: int, stream: str = "") -> random.Random:
    """A random generator private to one sample of one task.

    Seeded with a string (hashed with SHA-512 by :mod:`random`, so independent of ``PYTHONHASHSEED``):
    sample ``i`` is the same whatever ``num_samples`` is, and tasks never share draws.
    """
    return random.Random(f"evolkv_hf.tasks/{task}/{seed}/{index}/{stream}")


def check_common_args(context_length: int, num_samples: int, seed: int) -> None:
    """Validate the arguments every generator takes."""
    check_positive_int("context_length", context_length)
    check_positive_int("num_samples", num_samples)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")


def resolve_depths(depths: float | Sequence[float] | None, num_samples: int) -> list[float]:
    """Depth of each sample, in ``[0, 1]``.

    ``None`` spreads the depths evenly over the samples (``0, 1/(n-1), ..., 1``; ``0.5`` for a single
    sample); a float gives every sample that depth; a sequence is cycled over the samples.

    Examples
    --------
    >>> resolve_depths(None, 3)
    [0.0, 0.5, 1.0]
    >>> resolve_depths([0.1, 0.9], 3)
    [0.1, 0.9, 0.1]
    """
    if depths is None:
        if num_samples == 1:
            return [0.5]
        return [i / (num_samples - 1) for i in range(num_samples)]
    values = [depths] if isinstance(depths, (int, float)) else list(depths)
    if not values:
        raise ValueError("depths must not be empty")
    for d in values:
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d <= 1.0:
            raise ValueError(f"depths must be numbers in [0, 1], got {d!r}")
    return [float(values[i % len(values)]) for i in range(num_samples)]


def make_row(
    *,
    context: str,
    question: str,
    answer_prefix: str,
    answers: Sequence[str],
    max_new_tokens: int,
    task: str,
    context_length: int,
    depth: float,
    seed: int,
    index: int,
) -> dict[str, Any]:
    """One generated sample, with every column of the task schema except ``mode``."""
    missing = [a for a in answers if a not in context]
    if missing:  # a generator bug, never a user error
        raise RuntimeError(f"{task} sample {index}: answers {missing} are not in the context")
    return {
        "context": context,
        "question": question,
        "answer_prefix": answer_prefix,
        "answers": list(answers),
        "max_new_tokens": int(max_new_tokens),
        "task": task,
        "context_length": int(context_length),
        "depth": float(depth),
        "seed": int(seed),
        "index": int(index),
    }
