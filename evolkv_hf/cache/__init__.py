"""The compressing KV cache: storage, scoring policies and the model hooks it needs."""

from .cache import EvolKVCache, kv_memory_bytes
from .hooks import remove_hooks
from .layer import EvolKVLayer
from .policies import ScoringOptions

__all__ = ["EvolKVCache", "EvolKVLayer", "ScoringOptions", "kv_memory_bytes", "remove_hooks"]
