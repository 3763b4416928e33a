"""Compress the KV cache of one generation: full ``DynamicCache`` vs ``EvolKVCache``.

What it shows: how to pass an :class:`evolkv_hf.cache.EvolKVCache` to ``model.generate``, and what
it stores afterwards (per-layer lengths, bytes) next to the full cache, on a ~2,000-token passkey
prompt with the offline demo model (SmolLM2-135M-Instruct). A uniform budget of 128 tokens per
layer keeps ~7% of the K/V memory; whether the answer survives depends on the budget, which is what
EvolKV's learned per-layer budgets are for.

Run it (after ``make demo``, offline, about 15 s on 2 CPU cores; the first run on a machine adds
~20 s to convert the demo model)::

    HF_HUB_OFFLINE=1 .venv/bin/python examples/compress_generation.py --budget 256
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import transformers
from transformers import DynamicCache

from evolkv_hf.cache import EvolKVCache
from evolkv_hf.demo import build_passkey_prompt, dynamic_cache_memory_bytes, load_demo_model

# transformers 5.24 renamed generate's `past_key_values` argument to `cache`.
_VERSION = tuple(int(part) for part in transformers.__version__.split(".")[:2])
CACHE_KWARG = "cache" if _VERSION >= (5, 24) else "past_key_values"


def generate(model: Any, tokenizer: Any, input_ids: torch.Tensor, cache: Any) -> str:
    output = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=16,
        do_sample=False,
        **{CACHE_KWARG: cache},
    )
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=128, help="tokens kept per layer (default 128)")
    parser.add_argument("--context-length", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, tokenizer = load_demo_model()
    prompt = build_passkey_prompt(tokenizer, context_length=args.context_length, seed=args.seed)
    print(f"{prompt.num_tokens}-token prompt, pass key {prompt.answer}\n")

    full = DynamicCache(config=model.config)
    answer = generate(model, tokenizer, prompt.input_ids, full)
    full_bytes = dynamic_cache_memory_bytes(full)
    print(f"DynamicCache:          {answer!r:32} correct={prompt.is_correct(answer)}")
    print(f"  stores {full.get_seq_length()} tokens in every layer, {full_bytes / 2**20:.1f} MiB\n")

    cache = EvolKVCache(model, args.budget)
    answer = generate(model, tokenizer, prompt.input_ids, cache)
    lengths = cache.stored_lengths()
    print(f"EvolKVCache({args.budget}):      {answer!r:32} correct={prompt.is_correct(answer)}")
    print(
        f"  stores {min(lengths)}-{max(lengths)} tokens per layer (budget + generated tokens), "
        f"{cache.memory_bytes() / 2**20:.1f} MiB = {cache.memory_bytes() / full_bytes:.1%} of the full cache"
    )


if __name__ == "__main__":
    main()
