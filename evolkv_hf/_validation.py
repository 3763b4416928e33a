"""Argument checks and accepted option values shared by the package's entry points (one wording everywhere).

Torch-free, so that the allocation and CLI modules can use it without importing torch.
"""

from __future__ import annotations

import numbers

POLICIES = ("snapkv", "streaming")
"""Selection policies of ``EvolKVCache``."""
POOLINGS = ("avg", "max")
"""Pooling of the window attention over ``kernel_size`` neighbours."""
GQA_AGGREGATIONS = ("mean", "max")
"""How the query heads of one KV head are combined."""


def check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer (``bool`` excluded) ``>= minimum``.

    Raises ``TypeError`` for a non-integer (numpy integers are accepted) and ``ValueError`` below ``minimum``.

    >>> check_positive_int("window_size", 32)
    32
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}.")
    return int(value)
