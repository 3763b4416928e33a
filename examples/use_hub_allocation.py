"""Use an allocation from the Hub or a directory (mirrors docs/tutorials/hub-allocation.md).

What it shows: ``EvolKVCache.from_pretrained(repo_or_dir, model)`` in place of a uniform budget, on one
needle-in-a-haystack prompt, with the K/V memory it holds. Offline, point it at a directory (e.g. one of
``results/allocations/``); online, at a Hub repo id.

How long it takes with a local directory (2 CPU cores): 6 s on an Intel Xeon with AMX in bfloat16, 14 s on an
AVX2-only AMD EPYC in float32.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python examples/use_hub_allocation.py results/allocations/<name>
"""

from __future__ import annotations

import argparse

from evolkv_hf import EvolKVCache
from evolkv_hf.demo import fast_dtype, load_demo_model
from evolkv_hf.inference import encode_samples, generate_batch
from evolkv_hf.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("allocation", help="a directory with allocation.json, or a Hub repo id")
    parser.add_argument("--revision")
    args = parser.parse_args()

    model, tokenizer = load_demo_model(dtype=fast_dtype())
    cache = EvolKVCache.from_pretrained(args.allocation, model, revision=args.revision)
    sample = load_task("niah_single", tokenizer, 2048, 1, seed=7)[0]
    (encoded,) = encode_samples([sample], tokenizer)
    (tokens,) = generate_batch(model, tokenizer, [encoded], cache)
    answer = tokenizer.decode(tokens, skip_special_tokens=True)
    print(f"needle {sample['answers'][0]!r}, answer {answer!r}")
    print(
        f"K/V held: {cache.memory_bytes() / 2**20:.1f} MiB, stored tokens per layer {cache.stored_lengths()}"
    )


if __name__ == "__main__":
    main()
