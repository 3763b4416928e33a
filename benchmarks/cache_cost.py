"""Cost of EvolKVCache against DynamicCache on the demo model, as ratios measured in one run.

Measures, interleaving the two caches so that a noisy shared machine affects both alike:

* prefill + compression time of one forward over a prompt of 2k, 4k and 8k tokens, EvolKVCache (mean
  budget 128, SnapKV scoring) over DynamicCache. The prefills run in blocks of four, A B B A, with the
  cache that opens a block alternating (D E E D, then E D D E, ...): a block's ratio
  ``(E1 + E2) / (D1 + D2)`` cancels a steady drift of the machine's speed within the block and the
  advantage of running first or second (measured: about 5% on a shared 2-core machine). The headline
  ratio is the geometric mean of the block ratios, with a 95% bootstrap interval over the blocks; the
  ratio of the medians of all runs is reported beside it;
* decode time per token at 8k context with budget 128, over DynamicCache (rounds interleaved A B A B,
  each cache continuing its own sequence);
* the K/V bytes each cache holds after the prefill.

Writes ``benchmarks/results/cache_cost.json`` (``prefill_ratio_2k``, ``prefill_ratio_4k``,
``prefill_ratio_8k``, ``decode_ratio_8k_c128``, the raw timings, the machine and versions).

Usage (with --repeats 6: about 26 minutes on 2 cores of an AVX2-only CPU in float32)::

    HF_HUB_OFFLINE=1 python benchmarks/cache_cost.py [--dtype auto] [--repeats 3] [--lengths 2048,4096,8192]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from evolkv_hf import EvolKVCache
from evolkv_hf.cache import kv_memory_bytes
from evolkv_hf.demo import load_demo_model, resolve_dtype
from evolkv_hf.metrics import bootstrap_ci

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine, positive_int, time_decode, time_prefill

RESULTS = Path(__file__).parent / "results" / "cache_cost.json"


def block_ratio(ratios: list[float]) -> tuple[float, float, float]:
    """Geometric mean of the ABBA blocks' ratios (a ratio and its inverse average to 1) and its 95% interval.

    The interval is the percentile bootstrap of the mean log-ratio (:func:`evolkv_hf.metrics.bootstrap_ci`),
    mapped back through ``exp``, which keeps percentiles.
    """
    logs = [math.log(r) for r in ratios]
    low, high = bootstrap_ci(logs, n_resamples=4000, seed=0)
    return math.exp(statistics.fmean(logs)), math.exp(low), math.exp(high)


def make_cache(kind: str, model: Any, budget: int) -> Any:
    return DynamicCache(config=model.config) if kind == "dynamic" else EvolKVCache(model, budget)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float32"],
        help="auto: bfloat16 where the CPU computes it natively, else float32 (evolkv_hf.demo.fast_dtype)",
    )
    parser.add_argument("--lengths", default="2048,4096,8192")
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="prefill: ABBA blocks per length (4 prefills each)"
    )
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    dtype = resolve_dtype(args.dtype)
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
        "dtype": str(dtype).removeprefix("torch."),
        "prefill_seconds": {},
        "kv_bytes": {},
    }
    for length in lengths:
        ids = torch.randint(100, vocab, (1, length), generator=generator)
        times: dict[str, list[float]] = {"dynamic": [], "evolkv": []}
        blocks: list[float] = []
        for block in range(args.repeats):
            first, second = ("dynamic", "evolkv") if block % 2 == 0 else ("evolkv", "dynamic")
            spent = {"dynamic": 0.0, "evolkv": 0.0}
            for kind in (first, second, second, first):
                cache = make_cache(kind, model, args.budget)
                seconds = time_prefill(model, ids, cache)
                times[kind].append(seconds)
                spent[kind] += seconds
                results["kv_bytes"].setdefault(f"{kind}_{length}", kv_memory_bytes(cache))
                del cache
                gc.collect()
            blocks.append(spent["evolkv"] / spent["dynamic"])
        medians = {kind: statistics.median(values) for kind, values in times.items()}
        ratio, low, high = block_ratio(blocks)
        tag = f"{length // 1024}k"
        results[f"prefill_ratio_{tag}"] = round(ratio, 3)
        results[f"prefill_ratio_{tag}_ci95"] = [round(low, 3), round(high, 3)]
        results[f"prefill_ratio_of_medians_{tag}"] = round(medians["evolkv"] / medians["dynamic"], 3)
        results["prefill_seconds"][str(length)] = {
            "runs": times,
            "median": medians,
            "block_ratios": [round(r, 4) for r in blocks],
        }
        print(
            f"prefill {length:>5} tokens: DynamicCache {medians['dynamic']:.2f}s  EvolKVCache {medians['evolkv']:.2f}s  "
            f"ratio {ratio:.3f} [{low:.3f}, {high:.3f}] (geometric mean of {len(blocks)} ABBA blocks; ratio of "
            f"medians {medians['evolkv'] / medians['dynamic']:.3f})",
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
