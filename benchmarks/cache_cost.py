"""Cost of EvolKVCache against DynamicCache on the demo model, as ratios measured in one run.

Measures, interleaving the two caches (for the prefills A B B A A B ...: the order alternates so that neither
cache always runs second) and taking medians so that a noisy shared machine affects both alike:

* prefill + compression time of one forward over a prompt of 2k, 4k and 8k tokens, EvolKVCache (mean
  budget 128, SnapKV scoring) over DynamicCache, as the ratio of the medians and as the median of the
  ratios of back-to-back pairs;
* decode time per token at 8k context with budget 128, over DynamicCache (rounds interleaved A B A B,
  each cache continuing its own sequence);
* the K/V bytes each cache holds after the prefill.

Writes ``benchmarks/results/cache_cost.json`` (``prefill_ratio_2k``, ``prefill_ratio_4k``,
``prefill_ratio_8k``, ``decode_ratio_8k_c128``, the raw timings, the machine and versions).

Usage (about 6 minutes on 2 CPU cores in bfloat16)::

    HF_HUB_OFFLINE=1 python benchmarks/cache_cost.py [--dtype bfloat16] [--repeats 3] [--lengths 2048,4096,8192]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from evolkv_hf import EvolKVCache
from evolkv_hf.cache import kv_memory_bytes
from evolkv_hf.demo import load_demo_model

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine, positive_int, time_decode, time_prefill

RESULTS = Path(__file__).parent / "results" / "cache_cost.json"


def make_cache(kind: str, model: Any, budget: int) -> Any:
    return DynamicCache(config=model.config) if kind == "dynamic" else EvolKVCache(model, budget)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--lengths", default="2048,4096,8192")
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    model, _ = load_demo_model(dtype=dtype)
    lengths = [int(x) for x in args.lengths.split(",")]
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size

    # Warm-up: first calls allocate and pick kernels.
    warm = torch.randint(100, vocab, (1, 256), generator=generator)
    for kind in ("dynamic", "evolkv"):
        cache = make_cache(kind, model, args.budget)
        time_prefill(model, warm, cache)
        time_decode(model, cache, 4, warm.shape[1])

    results: dict[str, Any] = {
        "budget": args.budget,
        "dtype": args.dtype,
        "prefill_seconds": {},
        "kv_bytes": {},
    }
    for length in lengths:
        ids = torch.randint(100, vocab, (1, length), generator=generator)
        times: dict[str, list[float]] = {"dynamic": [], "evolkv": []}
        for repeat in range(args.repeats):
            for kind in ("dynamic", "evolkv") if repeat % 2 == 0 else ("evolkv", "dynamic"):
                cache = make_cache(kind, model, args.budget)
                times[kind].append(time_prefill(model, ids, cache))
                results["kv_bytes"].setdefault(f"{kind}_{length}", kv_memory_bytes(cache))
                del cache
                gc.collect()
        medians = {kind: statistics.median(values) for kind, values in times.items()}
        ratio = medians["evolkv"] / medians["dynamic"]
        results["prefill_seconds"][str(length)] = {"runs": times, "median": medians}
        key = f"prefill_ratio_{length // 1024}k"
        results[key] = round(ratio, 3)
        # Each repeat times the two caches back to back: the median of those pairs' ratios is less sensitive to
        # a slow phase of the shared machine than the ratio of the two medians.
        pairs = [e / d for d, e in zip(times["dynamic"], times["evolkv"], strict=True)]
        paired = statistics.median(pairs)
        results[f"prefill_paired_ratio_{length // 1024}k"] = round(paired, 3)
        results["prefill_seconds"][str(length)]["paired_ratios"] = [round(r, 4) for r in pairs]
        print(
            f"prefill {length:>5} tokens: DynamicCache {medians['dynamic']:.2f}s  "
            f"EvolKVCache {medians['evolkv']:.2f}s  ratio {ratio:.3f} (median of paired ratios {paired:.3f})",
            flush=True,
        )

    decode_length = max(lengths)
    ids = torch.randint(100, vocab, (1, decode_length), generator=generator)
    caches = {kind: make_cache(kind, model, args.budget) for kind in ("dynamic", "evolkv")}
    for cache in caches.values():
        time_prefill(model, ids, cache)
    decode_times: dict[str, list[float]] = {"dynamic": [], "evolkv": []}
    for _ in range(args.repeats):
        for kind, cache in caches.items():
            position = decode_length + len(decode_times[kind]) * args.decode_steps  # the cache keeps growing
            decode_times[kind].append(time_decode(model, cache, args.decode_steps, position))
    decode_medians = {kind: statistics.median(values) for kind, values in decode_times.items()}
    decode_ratio = decode_medians["evolkv"] / decode_medians["dynamic"]
    key = f"decode_ratio_{decode_length // 1024}k_c{args.budget}"
    results[key] = round(decode_ratio, 3)
    results["decode_ms_per_token"] = {kind: round(v * 1000, 2) for kind, v in decode_medians.items()}
    results["decode_runs_seconds_per_token"] = decode_times
    print(
        f"decode at {decode_length} tokens: DynamicCache {decode_medians['dynamic'] * 1000:.1f} ms/token  "
        f"EvolKVCache(c={args.budget}) {decode_medians['evolkv'] * 1000:.1f} ms/token  ratio {decode_ratio:.3f}",
        flush=True,
    )
    for kind, cache in caches.items():
        print(
            f"K/V held after {decode_length}-token prefill + decode, {kind}: {kv_memory_bytes(cache) / 2**20:.1f} MiB"
        )

    results["machine"] = machine()
    results["command"] = "python benchmarks/cache_cost.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "output"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
