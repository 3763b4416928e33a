"""Search cost: the prefill-once fitness engine against the plain per-sample path, on the demo model.

For each context length, evaluates the same candidate allocations (random non-uniform schemes around
the target mean) on the same search samples (``niah_single`` needles) with

* the plain path: ``model.generate(..., cache=EvolKVCache(model, budgets))`` per sample (batch 1), as
  the paper's search does, and
* the prefill-once engine: one full-cache prefill per sample (timed and included), then per candidate a
  gather of the kept entries and a batched greedy decode,

checks that every candidate gets the same answers and the same metric value on both paths, and prints
the speed-up. Writes ``benchmarks/results/fast_fitness.json`` (``speedup_2k``, ``speedup_4k``,
``identical``, timings, stored prefill bytes, peak RSS, machine and versions).

Usage (the full protocol, 10 candidates x 30 samples at 2k and 4k, takes about an hour on 2 CPU cores;
``--plain-candidates N`` times the plain path on the first N candidates only and scales its time, which
is linear in the number of candidates; the JSON records which was done)::

    HF_HUB_OFFLINE=1 python benchmarks/fast_fitness.py [--lengths 2048,4096] [--samples 30] [--candidates 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from evolkv_hf.demo import load_demo_model, resolve_dtype
from evolkv_hf.inference import encode_samples
from evolkv_hf.metrics import compute_metric, load_metric
from evolkv_hf.search.engine import CacheOptions, PlainEngine, PrefillOnceEngine
from evolkv_hf.tasks import load_task

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine

RESULTS = Path(__file__).parent / "results" / "fast_fitness.json"


def candidates(num_layers: int, target: int, count: int, seed: int, floor: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    schemes = []
    for _ in range(count):
        raw = np.clip(rng.lognormal(0.0, 0.5, num_layers) * target, floor, 4 * target)
        raw = raw * (target * num_layers / raw.sum())
        schemes.append([int(max(floor, round(x))) for x in raw])
    return schemes


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", default="2048,4096")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--plain-candidates", type=int, default=None)
    parser.add_argument("--target-budget", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float32"],
        help="auto: bfloat16 where the CPU computes it natively, else float32 (evolkv_hf.demo.fast_dtype)",
    )
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    dtype = resolve_dtype(args.dtype)
    args.dtype = str(dtype).removeprefix("torch.")  # recorded in the results by name

    model, tokenizer = load_demo_model(dtype=dtype, attn_implementation=args.attn)
    metric = load_metric("edit_sim")
    options = CacheOptions()
    num_layers = model.config.num_hidden_layers
    schemes = candidates(num_layers, args.target_budget, args.candidates, seed=0, floor=options.window_size)
    plain_count = min(args.plain_candidates or args.candidates, args.candidates)
    results: dict[str, Any] = {"per_length": {}, "identical": True}

    for length in [int(x) for x in args.lengths.split(",")]:
        dataset = load_task("niah_single", tokenizer, length, args.samples, seed=0)
        references = [list(r) for r in dataset["answers"]]
        samples = encode_samples(dataset, tokenizer)

        start = time.perf_counter()
        fast = PrefillOnceEngine(model, tokenizer, samples, options, batch_size=args.batch_size)
        prefill_seconds = time.perf_counter() - start
        fast_answers = []
        for scheme in schemes:
            fast_answers.append(fast.answers(scheme))
        fast_seconds = time.perf_counter() - start

        plain = PlainEngine(model, tokenizer, samples, options, batch_size=1)
        start = time.perf_counter()
        plain_answers = [plain.answers(scheme) for scheme in schemes[:plain_count]]
        plain_measured = time.perf_counter() - start
        plain_seconds = plain_measured * args.candidates / plain_count

        identical_answers = all(a == b for a, b in zip(fast_answers, plain_answers, strict=False))
        fast_scores = [compute_metric(metric, a, references)["edit_sim"] for a in fast_answers]
        plain_scores = [compute_metric(metric, a, references)["edit_sim"] for a in plain_answers]
        identical_scores = fast_scores[:plain_count] == plain_scores
        results["identical"] = bool(results["identical"] and identical_answers and identical_scores)
        speedup = plain_seconds / fast_seconds
        key = f"{length // 1024}k"
        results[f"speedup_{key}"] = round(speedup, 2)
        per_minute = {
            "plain": round(args.candidates / plain_seconds * 60, 2),
            "prefill_once_including_prefill": round(args.candidates / fast_seconds * 60, 2),
            "prefill_once_after_prefill": round(args.candidates / (fast_seconds - prefill_seconds) * 60, 2),
        }
        results["per_length"][key] = {
            "context_tokens": length,
            "samples": args.samples,
            "candidates": args.candidates,
            "plain_candidates_timed": plain_count,
            "plain_seconds": round(plain_seconds, 1),
            "plain_seconds_measured": round(plain_measured, 1),
            "fast_seconds_total": round(fast_seconds, 1),
            "fast_prefill_seconds": round(prefill_seconds, 1),
            "fast_seconds_per_candidate": round((fast_seconds - prefill_seconds) / args.candidates, 2),
            "candidates_per_minute": per_minute,
            "stored_prefill_mib": round(fast.stored_bytes / 2**20, 1),
            "identical_answers": identical_answers,
            "identical_scores": identical_scores,
            "fast_scores": fast_scores,
            "plain_scores": plain_scores,
            "peak_rss_mib_so_far": round(peak_rss_mib(), 1),
        }
        print(
            f"{length} tokens: plain {plain_seconds:.0f}s (measured {plain_measured:.0f}s on {plain_count} "
            f"candidates), prefill-once {fast_seconds:.0f}s (prefill {prefill_seconds:.0f}s) -> speed-up "
            f"{speedup:.1f}x; candidates/min: plain {per_minute['plain']}, prefill-once "
            f"{per_minute['prefill_once_including_prefill']} ({per_minute['prefill_once_after_prefill']} "
            f"after the prefill); identical={identical_answers and identical_scores}; stored prefills "
            f"{fast.stored_bytes / 2**20:.0f} MiB; peak RSS {peak_rss_mib():.0f} MiB",
            flush=True,
        )
        del fast

    results["machine"] = {**machine(), "dtype": args.dtype, "attn_implementation": args.attn}
    results["command"] = "python benchmarks/fast_fitness.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "output" and v is not None
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
