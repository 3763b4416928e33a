"""Compress the KV cache of one generation: full ``DynamicCache`` vs ``EvolKVCache``.

What it shows: how to pass an :class:`evolkv_hf.EvolKVCache` to ``model.generate``, and what it stores
afterwards (per-layer lengths, bytes) next to the full cache, on a ~2,000-token needle-in-a-haystack
prompt with the offline demo model (SmolLM2-135M-Instruct). A uniform budget of 128 tokens per layer
keeps about 7% of the K/V memory; whether the answer survives depends on the budget, which is what
EvolKV's learned per-layer budgets are for.

Run it (after ``make demo``, offline, in float32: 11 s on 2 cores of an Intel Xeon with AMX, 22 s on 2 cores of
an AVX2-only AMD EPYC; the first run on a machine adds about 20 s to
convert the demo model)::

    HF_HUB_OFFLINE=1 .venv/bin/python examples/compress_generation.py --budget 256
"""

from __future__ import annotations

import argparse

import torch
from transformers import DynamicCache

from evolkv_hf import EvolKVCache
from evolkv_hf.cache import kv_memory_bytes
from evolkv_hf.demo import load_demo_model
from evolkv_hf.inference import cache_keyword, encode_samples
from evolkv_hf.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=128, help="tokens kept per layer (default 128)")
    parser.add_argument("--context-length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, tokenizer = load_demo_model()
    sample = load_task("niah_single", tokenizer, args.context_length, 1, seed=args.seed)[0]
    (encoded,) = encode_samples([sample], tokenizer)
    input_ids = torch.tensor([encoded.prompt_ids])
    print(f"{input_ids.shape[1]}-token prompt, needle {sample['answers'][0]}\n")

    for name, cache in (
        ("DynamicCache", DynamicCache(config=model.config)),
        ("EvolKVCache", EvolKVCache(model, args.budget)),
    ):
        output = model.generate(
            input_ids,
            max_new_tokens=sample["max_new_tokens"],
            do_sample=False,
            **{cache_keyword(model): cache},
        )
        answer = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()
        lengths = cache.stored_lengths() if isinstance(cache, EvolKVCache) else [cache.get_seq_length()]
        print(f"{name:12} answer {answer!r}  correct={sample['answers'][0] in answer}")
        print(
            f"             stores {min(lengths)}-{max(lengths)} tokens per layer, {kv_memory_bytes(cache) / 2**20:.1f} MiB"
        )


if __name__ == "__main__":
    main()
