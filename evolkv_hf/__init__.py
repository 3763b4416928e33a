"""evolkv_hf: learned per-layer KV-cache budgets (EvolKV) for Hugging Face transformers."""

from .allocation import BudgetAllocation
from .cache import EvolKVCache

__all__ = ["BudgetAllocation", "EvolKVCache"]
