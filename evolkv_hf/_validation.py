"""Argument checks and accepted option values shared by the package's entry points (one wording everywhere).

Torch-free, so that the allocation and CLI modules can use it without importing torch.
"""

from __future__ import annotations

import math
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


def check_positive_number(name: str, value: object, *, allow_zero: bool = False) -> int | float:
    """Return ``value`` as a plain ``int`` or ``float`` if it is a finite real number ``> 0`` (``>= 0`` with ``allow_zero``).

    Raises ``TypeError`` for a non-number (``bool`` excluded; numpy numbers are accepted) and ``ValueError`` for
    NaN, an infinity or a value out of range.

    >>> check_positive_number("sigma0", 0.3)
    0.3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    bound = ">= 0" if allow_zero else "> 0"
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {bound}, got {value}.")
    return int(value) if isinstance(value, numbers.Integral) else float(value)
