"""Cost of EvolKVCache against DynamicCache on the demo model, as ratios measured in one run.

Measures, interleaving the two caches so that a noisy shared machine affects both alike:

* prefill + compression time of one forward over a prompt of 2k, 4k and 8k tokens, EvolKVCache (mean
  budget 128, SnapKV scoring) over DynamicCache. The prefills run in blocks of four, A B B A, with the
  cache that opens a block alternating (D E E D, then E D D E, ...): a block's ratio
  ``(E1 + E2) / (D1 + D2)`` cancels a steady drift of the machine's speed within the block and the
  advantage of running first or second (measured: about 5% on a shared 2-core machine). The headline
  ratio is the geometric mean of the block ratios, with a 95% bootstrap interval over the blocks; the
  ratio of the medians of all runs is reported beside it;
* the prefill work EvolKVCache adds, without the model's computation: what every attention layer received in
  one prefill (the arguments of its pre-hooks, the keys and values handed to the cache's ``update``) is
  captured, then EvolKVCache's own steps (its decoder and attention pre-hooks, which keep the padding mask and
  recompute the window queries, and every ``update``: the contiguous copy, the scoring, the selection and the
  gather) are replayed on it, in alternation with ``DynamicCache.update`` on the same keys and values.
  ``prefill_work_ratio_<n>k`` is ``1 + (EvolKVCache's replay - DynamicCache's) / DynamicCache's median
  prefill``; its interval is over the replayed pairs of this run only (the level moves between processes:
  see benchmarks/README.md);
* decode time per token at 8k context with budget 128, over DynamicCache (rounds interleaved A B A B,
  each cache continuing its own sequence);
* the K/V bytes each cache holds after the prefill and after the decode.

Writes ``benchmarks/results/cache_cost.json`` (``prefill_ratio_2k``, ``prefill_ratio_4k``,
``prefill_ratio_8k``, ``prefill_work_ratio_<n>k``, ``decode_ratio_8k_c128``, the raw timings, the machine and versions).

Usage (with --repeats 8: about 33 minutes on 2 cores of an AVX2-only CPU in float32)::

    HF_HUB_OFFLINE=1 python benchmarks/cache_cost.py [--dtype auto] [--repeats 3] [--lengths 2048,4096,8192]
    python benchmarks/cache_cost.py --pool RUN1.json RUN2.json   # the prefill ratios of several runs' blocks pooled
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from evolkv_hf import EvolKVCache
from evolkv_hf.cache import hooks as evolkv_hooks
from evolkv_hf.cache import kv_memory_bytes
from evolkv_hf.cache.hooks import decoder_module, find_attention_modules
from evolkv_hf.demo import load_demo_model, resolve_dtype
from evolkv_hf.metrics import bootstrap_ci

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine, positive_int, synchronize, time_decode, time_prefill

RESULTS = Path(__file__).parent / "results" / "cache_cost.json"


def block_ratio(ratios: list[float]) -> tuple[float, float, float]:
    """Geometric mean of the ABBA blocks' ratios (a ratio and its inverse average to 1) and its 95% interval.

    The interval is the percentile bootstrap of the mean log-ratio (:func:`evolkv_hf.metrics.bootstrap_ci`),
    mapped back through ``exp``, which keeps percentiles.
    """
    logs = [math.log(r) for r in ratios]
    low, high = bootstrap_ci(logs, n_resamples=4000, seed=0)
    return math.exp(statistics.fmean(logs)), math.exp(low), math.exp(high)


@dataclass
class LayerInputs:
    """What one attention layer received during a prefill: its pre-hooks' arguments and its cache update."""

    module: torch.nn.Module
    arguments: tuple[Any, ...]
    keyword_arguments: dict[str, Any]
    keys: torch.Tensor
    values: torch.Tensor


class _CapturingCache(DynamicCache):
    """A DynamicCache that also keeps the very key and value tensors each layer's ``update`` receives."""

    def __init__(self, config: Any) -> None:
        super().__init__(config=config)
        self.received: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.received[layer_idx] = (key_states, value_states)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


@torch.no_grad()
def capture_layer_inputs(model: Any, ids: torch.Tensor) -> list[LayerInputs]:
    """Run one prefill and keep, per attention layer, its inputs and the keys/values its ``update`` received.

    The keys and values are kept as received (the projections' layout, a transposed view). At 8k tokens in
    float32 the demo model's captured inputs hold about 0.9 GiB.
    """
    modules = find_attention_modules(model)
    seen: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def keep(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        names = ("hidden_states", "position_embeddings", "position_ids")
        seen[module.layer_idx] = (args, {k: v for k, v in kwargs.items() if k in names})  # type: ignore[index]

    handles = [m.register_forward_pre_hook(keep, with_kwargs=True) for m in modules.values()]
    cache = _CapturingCache(model.config)
    try:
        time_prefill(model, ids, cache)
    finally:
        for handle in handles:
            handle.remove()
    if sorted(seen) != sorted(cache.received) or sorted(seen) != list(range(len(seen))):
        raise SystemExit(
            f"cache_cost.py replays models whose every decoder layer has one attention module updating the cache; "
            f"layers with attention inputs {sorted(seen)}, with cache updates {sorted(cache.received)}."
        )
    return [LayerInputs(modules[index], *seen[index], *cache.received[index]) for index in sorted(seen)]


@torch.no_grad()
def replay(model: Any, cache: Any, inputs: list[LayerInputs]) -> None:
    """Run what ``cache`` does in a prefill, beyond the model's computation, on the captured ``inputs``.

    For EvolKVCache that is its forward pre-hooks (on the decoder, which keeps the padding mask, and on every
    attention module, which recomputes the window queries) and every ``update`` (which scores, selects and
    stores the kept entries): the very functions a prefill runs. For DynamicCache, every ``update``.
    """
    if isinstance(cache, EvolKVCache):
        # The hooks EvolKVCache(model, ...) attached; called directly, so that no other hook is timed.
        installed = model.__dict__[evolkv_hooks._HOOKS_ATTRIBUTE]
        evolkv_hooks._decoder_pre_hook(decoder_module(model), (), {"cache": cache, "attention_mask": None})
    for index, layer in enumerate(inputs):
        if isinstance(cache, EvolKVCache):
            kwargs = {**layer.keyword_arguments, "cache": cache}
            evolkv_hooks._attention_pre_hook(installed.recipes[index], layer.module, layer.arguments, kwargs)
        cache.update(layer.keys, layer.values, index)


def replay_cache_work(model: Any, kind: str, budget: int, inputs: list[LayerInputs]) -> float:
    """Seconds of :func:`replay` for a new cache of ``kind``."""
    cache = make_cache(kind, model, budget)
    device = inputs[0].keys.device
    synchronize(device)
    start = time.perf_counter()
    replay(model, cache, inputs)
    synchronize(device)
    return time.perf_counter() - start


def measure_prefill_work(
    model: Any, ids: torch.Tensor, budget: int, repeats: int
) -> tuple[float, float, float, dict[str, list[float]]]:
    """EvolKVCache's added prefill work over DynamicCache's: mean seconds, its 95% interval, and the runs.

    The two replays alternate (D E, then E D); the mean is over the pairs' differences.
    """
    inputs = capture_layer_inputs(model, ids)
    for kind in ("dynamic", "evolkv", "dynamic", "evolkv"):  # warm-up
        replay_cache_work(model, kind, budget, inputs)
    runs: dict[str, list[float]] = {"dynamic": [], "evolkv": []}
    for repeat in range(repeats):
        for kind in ("dynamic", "evolkv") if repeat % 2 == 0 else ("evolkv", "dynamic"):
            runs[kind].append(replay_cache_work(model, kind, budget, inputs))
    differences = [e - d for e, d in zip(runs["evolkv"], runs["dynamic"], strict=True)]
    low, high = bootstrap_ci(differences, n_resamples=4000, seed=0)
    return statistics.fmean(differences), low, high, runs


def work_ratio(added: float, low: float, high: float, prefill: float) -> tuple[float, float, float]:
    """``1 + added / prefill`` and its interval's bounds, rounded to 4 places (the median prefill taken as exact)."""
    return tuple(round(1 + seconds / prefill, 4) for seconds in (added, low, high))  # type: ignore[return-value]


def make_cache(kind: str, model: Any, budget: int) -> Any:
    return DynamicCache(config=model.config) if kind == "dynamic" else EvolKVCache(model, budget)


def pooled_prefill_ratios(paths: list[Path]) -> dict[str, tuple[int, float, float, float]]:
    """Per prompt length, the ABBA block ratios of several result files pooled: ``(blocks, ratio, low, high)``."""
    blocks: dict[str, list[float]] = {}
    for path in paths:
        for length, measured in json.loads(path.read_text())["prefill_seconds"].items():
            blocks.setdefault(length, []).extend(measured["block_ratios"])
    return {length: (len(ratios), *block_ratio(ratios)) for length, ratios in blocks.items()}


def main(argv: list[str] | None = None) -> None:
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
    parser.add_argument(
        "--work-repeats",
        type=positive_int,
        default=20,
        help="replays of each cache's own prefill work per length (prefill_work_ratio)",
    )
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--pool",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="measure nothing: print the prefill ratios of these result files' ABBA blocks pooled",
    )
    args = parser.parse_args(argv)
    if args.pool:
        for length, (count, ratio, low, high) in pooled_prefill_ratios(args.pool).items():
            print(
                f"prefill {int(length):>5} tokens: ratio {ratio:.3f} [{low:.3f}, {high:.3f}] ({count} ABBA blocks pooled)"
            )
        return

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
        "prefill_work_seconds": {},
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
        added, added_low, added_high, work_runs = measure_prefill_work(
            model, ids, args.budget, args.work_repeats
        )
        work = work_ratio(added, added_low, added_high, medians["dynamic"])
        results[f"prefill_work_ratio_{tag}"] = work[0]
        results[f"prefill_work_ratio_{tag}_ci95"] = [work[1], work[2]]
        results["prefill_work_seconds"][str(length)] = {
            "added_mean": added,
            "added_ci95": [added_low, added_high],
            "runs": work_runs,
        }
        print(
            f"  EvolKVCache's own prefill work, replayed {args.work_repeats}x: +{added * 1000:.1f} ms "
            f"[{added_low * 1000:.1f}, {added_high * 1000:.1f}] over DynamicCache's update, ratio "
            f"{work[0]:.4f} [{work[1]:.4f}, {work[2]:.4f}] of its prefill (interval within this run)",
            flush=True,
        )
        gc.collect()

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
    decoded = args.repeats * args.decode_steps
    results["kv_bytes_after_decode"] = {"decoded_tokens": decoded}
    for kind, cache in caches.items():
        held = kv_memory_bytes(cache)
        results["kv_bytes_after_decode"][f"{kind}_{decode_length}"] = held
        print(
            f"K/V held after a {decode_length}-token prefill and {decoded} decoded tokens, {kind}: {held / 2**20:.1f} MiB"
        )

    results["machine"] = machine()
    results["command"] = "python benchmarks/cache_cost.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("output", "pool")
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
