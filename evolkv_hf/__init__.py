"""evolkv_hf: learned per-layer KV-cache budgets (EvolKV) for Hugging Face transformers."""

from .cache import EvolKVCache

__all__ = ["EvolKVCache"]
