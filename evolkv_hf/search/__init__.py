"""Learning per-layer budgets: the searcher, its arguments, callbacks and fitness engines."""

from .arguments import SearchArguments
from .callbacks import SearchCallback, SearchControl, SearchState
from .checkpoint import CheckpointError
from .engine import CacheOptions, PlainEngine, PrefillOnceEngine
from .searcher import BudgetSearcher, SearchResult

__all__ = [
    "BudgetSearcher",
    "CacheOptions",
    "CheckpointError",
    "PlainEngine",
    "PrefillOnceEngine",
    "SearchArguments",
    "SearchCallback",
    "SearchControl",
    "SearchResult",
    "SearchState",
]
