"""Per-layer KV-cache budget allocations (EvolKV): arithmetic, JSON/Hub persistence, model cards.

``from evolkv_hf.allocation import BudgetAllocation`` is the entry point; see its docstring.
"""

from .allocation import FORMAT_VERSION, POOLING_CHOICES, BudgetAllocation
from .hub import ALLOCATION_FILE, AllocationPushError

__all__ = ["ALLOCATION_FILE", "FORMAT_VERSION", "POOLING_CHOICES", "AllocationPushError", "BudgetAllocation"]
