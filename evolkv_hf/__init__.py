"""evolkv_hf: learned per-layer KV-cache budgets (EvolKV) for Hugging Face transformers."""

from .allocation import BudgetAllocation
from .cache import EvolKVCache
from .search import BudgetSearcher, SearchArguments, SearchCallback, SearchResult

__all__ = [
    "BudgetAllocation",
    "BudgetSearcher",
    "EvolKVCache",
    "SearchArguments",
    "SearchCallback",
    "SearchResult",
]
