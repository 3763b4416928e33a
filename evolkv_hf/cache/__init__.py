"""The compressing KV cache: storage, scoring policies and the model hooks it needs."""

from .cache import EvolKVCache
from .hooks import remove_hooks
from .layer import EvolKVLayer
from .policies import ScoringOptions

__all__ = ["EvolKVCache", "EvolKVLayer", "ScoringOptions", "remove_hooks"]
