"""Speed and memory of each cache on one model, as ratios to a DynamicCache measured in the same run.

For every prompt length and mean budget, and for ``DynamicCache`` (no compression), ``EvolKVCache`` with
a uniform budget and ``EvolKVCache`` with a non-uniform allocation of the same mean (the learned
``niah_single`` allocation under ``results/allocations/`` rescaled, on the demo model; a pyramid on random
models), it measures:

* prefill + compression: seconds of one forward over a random-token prompt;
* decode: milliseconds per token over ``--decode-tokens`` greedy steps after that prefill;
* K/V bytes held after prefill and decode;
* peak memory of prefill + decode above the loaded model (on CPU one fresh process per configuration,
  the peak resident set; on CUDA ``max_memory_allocated``);
* the compression step alone (SnapKV scoring, top-k and gather for every layer) on random tensors of the
  model's shapes, which is what the prefill pays on top of a ``DynamicCache`` prefill.

Configurations are interleaved (A B C A B C ...) and medians taken, so that a noisy shared machine
affects all alike. With ``--kvpress`` the same table is measured for kvpress's ``SnapKVPress`` at the
same kept-token count, in kvpress's own virtual environment (it pins an older transformers), against a
``DynamicCache`` measured in that environment, and the side-by-side comparison is written to
``benchmarks/results/kvpress_compare.json``.

Usage (demo model, bfloat16, 2 CPU cores: about 12 minutes, 20 more with ``--kvpress``)::

    HF_HUB_OFFLINE=1 python benchmarks/cost_table.py --kvpress

On a GPU, a larger random model of a real architecture (see ``benchmarks/gpu_check.sh``)::

    python benchmarks/cost_table.py --model random:llama-3.1-8b --device cuda --lengths 8192,32768
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import (
    PeakMemory,
    kv_bytes,
    machine,
    positive_int,
    prompt_ids,
    run_memory_job,
    synchronize,
    time_decode,
    time_prefill,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
LEARNED_ALLOCATION = ROOT / "results" / "allocations" / "niah_single__c128__penalty__g3__seed0"
KVPRESS_VERSION = "0.5.5"
KVPRESS_TRANSFORMERS = "transformers>=4.56,<5.3"

# Random models of real architectures (shapes of the public configs; weights are random).
RANDOM_MODELS: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "vocab_size": 128256,
    },
    "qwen3-4b": {
        "model_type": "qwen3",
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rope_theta": 1000000.0,
        "vocab_size": 151936,
    },
    "tiny-llama": {  # for the benchmark's own tests
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "vocab_size": 512,
    },
}


@dataclass(frozen=True)
class Method:
    """One cache configuration of the table."""

    name: str  # "dynamic", "evolkv-uniform" or "evolkv-<allocation label>"
    budget: int | None  # mean budget; None for DynamicCache


def load_model(spec: str, dtype: torch.dtype, device: torch.device, attn: str) -> Any:
    """``demo`` (SmolLM2-135M-Instruct) or ``random:<name>`` from :data:`RANDOM_MODELS`."""
    if spec == "demo":
        from evolkv_hf.demo import load_demo_model

        demo: Any = load_demo_model(dtype=dtype, attn_implementation=attn)[0]
        return demo.to(device)
    if not spec.startswith("random:") or spec.removeprefix("random:") not in RANDOM_MODELS:
        raise SystemExit(
            f"--model must be 'demo' or one of {['random:' + n for n in RANDOM_MODELS]}, got {spec!r}"
        )
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(RANDOM_MODELS[spec.removeprefix("random:")])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    return model.eval()


def non_uniform_allocation(model: Any, spec: str, budget: int, path: Path | None) -> tuple[str, Any]:
    """The non-uniform allocation of mean ``budget``: a saved one rescaled, else a pyramid."""
    from evolkv_hf import BudgetAllocation

    if path is None and spec == "demo" and LEARNED_ALLOCATION.is_dir():
        path = LEARNED_ALLOCATION
    if path is not None:
        return "evolkv-learned", BudgetAllocation.from_pretrained(path).rescale(budget)
    return "evolkv-pyramid", BudgetAllocation.for_model(model, mean_budget=budget, kind="pyramid")


def make_cache(model: Any, method: Method, allocations: dict[tuple[str, int], Any]) -> Any:
    from transformers import DynamicCache

    from evolkv_hf import EvolKVCache

    if method.budget is None:
        return DynamicCache(config=model.config)
    if method.name == "evolkv-uniform":
        return EvolKVCache(model, method.budget)
    return EvolKVCache(model, allocations[(method.name, method.budget)])


def compression_alone_ms(model: Any, length: int, budget: int, repeats: int) -> float:
    """Milliseconds of the compression step of one prefill (all layers) on random tensors of the model's shapes."""
    from evolkv_hf.cache.layer import _gather
    from evolkv_hf.cache.policies import select_positions, snapkv_scores

    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    device, dtype = model.device, model.dtype
    generator = torch.Generator(device=device).manual_seed(0)
    window = min(32, budget)
    queries = torch.randn(1, heads, window, head_dim, device=device, dtype=dtype, generator=generator)
    keys = torch.randn(1, kv_heads, length, head_dim, device=device, dtype=dtype, generator=generator)
    values = torch.randn_like(keys)

    def one_layer() -> None:
        scores = snapkv_scores(queries, keys, None, scaling=head_dim**-0.5, prefix_length=length - window)
        positions = select_positions(scores, budget - window, length, window)
        _gather(keys, positions), _gather(values, positions)  # the cache's own gather

    for _ in range(3):
        one_layer()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(config.num_hidden_layers):
            one_layer()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def model_prompt(model: Any, length: int) -> torch.Tensor:
    """The shared benchmark prompt of ``length`` tokens on the model's device."""
    return prompt_ids(model.config.vocab_size, length).to(model.device)


def measure_timings(
    model: Any,
    methods: list[Method],
    allocations: dict[tuple[str, int], Any],
    length: int,
    args: argparse.Namespace,
) -> dict[Method, dict[str, Any]]:
    ids = model_prompt(model, length)
    runs: dict[Method, dict[str, list[float]]] = {m: {"prefill": [], "decode": []} for m in methods}
    held: dict[Method, int] = {}
    time_prefill(model, ids, make_cache(model, methods[0], allocations))  # untimed: first pass at this length
    for repeat in range(args.repeats):
        # Rotate the order so that no configuration always runs first (or right after another) in a round.
        shift = repeat % len(methods)
        for method in methods[shift:] + methods[:shift]:
            cache = make_cache(model, method, allocations)
            runs[method]["prefill"].append(time_prefill(model, ids, cache))
            runs[method]["decode"].append(time_decode(model, cache, args.decode_tokens, length))
            held[method] = kv_bytes(cache)
            del cache
            gc.collect()
    return {
        m: {
            "prefill_s": statistics.median(runs[m]["prefill"]),
            "decode_ms_per_token": statistics.median(runs[m]["decode"]) * 1000,
            "kv_bytes": held[m],
            "runs": runs[m],
        }
        for m in methods
    }


def peak_memory_in_process(
    model: Any, method: Method, allocations: dict[tuple[str, int], Any], length: int, decode_tokens: int
) -> tuple[int, str]:
    ids = model_prompt(model, length)
    gc.collect()
    if model.device.type == "cuda":
        torch.cuda.empty_cache()
    cache = None
    with PeakMemory(model.device) as peak:
        cache = make_cache(model, method, allocations)
        time_prefill(model, ids, cache)
        time_decode(model, cache, decode_tokens, length)
    del cache
    return peak.peak_bytes, peak.method


def peak_memory_subprocess(method: Method, length: int, args: argparse.Namespace) -> tuple[int, str]:
    """Run one configuration in a fresh process (CPU allocators keep freed memory, hiding later peaks)."""
    job = {"method": method.name, "budget": method.budget, "length": length}
    return run_memory_job(__file__, job, _model_arguments(args))


def _model_arguments(args: argparse.Namespace) -> list[str]:
    forwarded = ["--model", args.model, "--dtype", args.dtype, "--device", args.device, "--attn", args.attn]
    forwarded += ["--decode-tokens", str(args.decode_tokens)]
    if args.allocation is not None:
        forwarded += ["--allocation", str(args.allocation)]
    return forwarded


def memory_job(args: argparse.Namespace, model: Any) -> None:
    job = json.loads(args.memory_job)
    method = Method(job["method"], job["budget"])
    allocations = _allocations(model, args, [method.budget] if method.budget else [])
    # Warm-up with the measured configuration: the first forwards allocate kernel workspaces that are not the
    # cache's (the prompt is longer than every budget, so compression runs too).
    warm = torch.randint(100, model.config.vocab_size, (1, 600)).to(model.device)
    cache = make_cache(model, method, allocations)
    time_prefill(model, warm, cache)
    time_decode(model, cache, 4, warm.shape[1])
    del cache
    peak, how = peak_memory_in_process(model, method, allocations, job["length"], args.decode_tokens)
    print(json.dumps({"peak_bytes": peak, "method": how}))


def _allocations(model: Any, args: argparse.Namespace, budgets: list[int]) -> dict[tuple[str, int], Any]:
    allocations = {}
    for budget in budgets:
        label, allocation = non_uniform_allocation(model, args.model, budget, args.allocation)
        allocations[(label, budget)] = allocation
    return allocations


# ------------------------------------------------------------------------------------------------ kvpress
def kvpress_python(venv: Path) -> Path:
    """The kvpress virtual environment's interpreter, creating the environment on first use."""
    python = venv / "bin" / "python"
    ready = venv / ".installed"  # written last: an interrupted or failed install is redone, not reused
    if ready.exists():
        return python
    print(f"creating kvpress's virtual environment in {venv} (once; about 2 minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"  # the same torch on both sides
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            torch_pin,
            f"kvpress=={KVPRESS_VERSION}",
            KVPRESS_TRANSFORMERS,
        ],
        check=True,
    )
    ready.touch()
    return python


def run_kvpress(args: argparse.Namespace, lengths: list[int], budgets: list[int]) -> dict[str, Any]:
    from evolkv_hf.demo import demo_checkpoint_dir

    python = kvpress_python(args.kvpress_venv)
    output = args.output.parent / "_kvpress_raw.json"
    command = [
        str(python),
        str(Path(__file__).parent / "kvpress_worker.py"),
        "--checkpoint", str(demo_checkpoint_dir()),
        "--lengths", ",".join(map(str, lengths)),
        "--budgets", ",".join(map(str, budgets)),
        "--decode-tokens", str(args.decode_tokens),
        "--repeats", str(args.repeats),
        "--dtype", args.dtype,
        "--attn", args.attn,
        "--output", str(output),
    ]  # fmt: skip
    if args.no_memory:
        command.append("--no-memory")
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": ""})
    raw: dict[str, Any] = json.loads(output.read_text())
    output.unlink()
    return raw


# ------------------------------------------------------------------------------------------------ report
def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return round(value / base, 3)


_RATIOS = {
    "prefill_s": "prefill_ratio",
    "decode_ms_per_token": "decode_ratio",
    "kv_bytes": "kv_bytes_ratio",
    "peak_bytes": "peak_bytes_ratio",
}


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's ratios to the DynamicCache row of the same length and environment."""
    base = {(r["length"], r["environment"]): r for r in rows if r["method"] == "dynamic"}
    for row in rows:
        ref = base[(row["length"], row["environment"])]
        for key, name in _RATIOS.items():
            row[name] = ratio(row.get(key), ref.get(key))


def print_table(rows: list[dict[str, Any]]) -> None:
    mib = 2**20
    header = "| length | method | budget | prefill s | ratio | decode ms/token | ratio | K/V MiB | ratio | peak MiB | ratio |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for r in rows:
        peak = f"{r['peak_bytes'] / mib:.0f}" if r.get("peak_bytes") is not None else "-"
        print(
            f"| {r['length']} | {r['method']} | {r['budget'] or '-'} | {r['prefill_s']:.3f} | {r['prefill_ratio']} "
            f"| {r['decode_ms_per_token']:.1f} | {r['decode_ratio']} | {r['kv_bytes'] / mib:.1f} | {r['kv_bytes_ratio']} "
            f"| {peak} | {r.get('peak_bytes_ratio') or '-'} |"
        )


def plot_scaling(rows: list[dict[str, Any]], compression: dict[str, float], budget: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    series = [("dynamic", None, "DynamicCache"), ("evolkv-uniform", budget, f"EvolKVCache (budget {budget})")]
    if any(r["method"] == "kvpress-snapkv" for r in rows):
        series.append(("kvpress-snapkv", budget, f"kvpress SnapKVPress ({budget} kept)"))
    for method, b, label in series:
        # DynamicCache is measured in both environments: plot the evolkv one (transformers of this package).
        environment = "kvpress" if method.startswith("kvpress") else "evolkv"
        chosen = {
            r["length"]: r
            for r in rows
            if r["method"] == method and r["budget"] == b and r["environment"] == environment
        }
        if not chosen:
            continue
        xs = sorted(chosen)
        axes[0].plot(xs, [chosen[x]["prefill_s"] for x in xs], marker="o", label=label)
        axes[2].plot(xs, [chosen[x]["decode_ms_per_token"] for x in xs], marker="o", label=label)
    lengths = sorted(int(k) for k in compression)
    axes[1].plot(lengths, [compression[str(n)] for n in lengths], marker="o", color="C1")
    axes[0].set(title="prefill (+ compression)", xlabel="prompt tokens", ylabel="seconds")
    axes[1].set(
        title=f"compression step alone (budget {budget})", xlabel="prompt tokens", ylabel="ms per prefill"
    )
    axes[2].set(title="decode", xlabel="prompt tokens", ylabel="ms per token")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def kvpress_comparison(
    rows: list[dict[str, Any]], kvpress_environment: dict[str, Any], ours: dict[str, Any]
) -> dict[str, Any]:
    """Side by side: EvolKVCache (uniform) and SnapKVPress at each length and kept-token count."""
    pairs = []
    for row in rows:
        if row["method"] != "kvpress-snapkv":
            continue
        mine = next(
            r
            for r in rows
            if r["method"] == "evolkv-uniform"
            and r["length"] == row["length"]
            and r["budget"] == row["budget"]
        )
        pairs.append(
            {
                "length": row["length"],
                "kept_tokens_per_layer": row["budget"],
                "evolkv": {k: mine.get(k) for k in _REPORTED},
                "kvpress": {k: row.get(k) for k in _REPORTED},
            }
        )
    return {
        "what": "EvolKVCache (uniform budget) and kvpress SnapKVPress at the same kept tokens per layer, each as ratios "
        "to a DynamicCache measured in its own environment in the same run",
        "settings": {"window_size": 32, "kernel_size": 7, "pooling": "avg", "gqa_aggregation": "mean"},
        "evolkv_environment": ours,
        "kvpress_environment": kvpress_environment,
        "pairs": pairs,
    }


_REPORTED = (
    "prefill_s",
    "prefill_ratio",
    "decode_ms_per_token",
    "decode_ratio",
    "kv_bytes",
    "kv_bytes_ratio",
    "peak_bytes",
    "peak_bytes_ratio",
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="demo", help=f"'demo' or one of {['random:' + n for n in RANDOM_MODELS]}"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="auto: bfloat16 where the device computes it natively, else float32 (evolkv_hf.demo.fast_dtype)",
    )
    parser.add_argument(
        "--attn", default="sdpa", help="attn_implementation (sdpa, eager, flash_attention_2, ...)"
    )
    parser.add_argument("--lengths", default="1024,2048,4096,8192")
    parser.add_argument("--budgets", default="64,128,256,512")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument(
        "--allocation", type=Path, default=None, help="non-uniform allocation directory to rescale"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument(
        "--kvpress", action="store_true", help="also measure kvpress SnapKVPress (demo model only)"
    )
    parser.add_argument("--kvpress-venv", type=Path, default=Path(__file__).parent / ".kvpress-venv")
    parser.add_argument("--output", type=Path, default=RESULTS / "cost_table.json")
    parser.add_argument("--plot", type=Path, default=RESULTS / "scaling.png")
    parser.add_argument(
        "--replot", type=Path, default=None, help="only redraw plot and comparison from this JSON"
    )
    parser.add_argument("--memory-job", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dtype == "auto":  # resolved once, so that the memory jobs and kvpress's worker get the same
        from evolkv_hf.demo import resolve_dtype

        args.dtype = str(resolve_dtype(args.dtype, args.device)).removeprefix("torch.")
    if args.replot is not None:
        saved: dict[str, Any] = json.loads(args.replot.read_text())
        write_derived(saved, args.replot, args.plot)
        return saved
    if args.kvpress and (args.model != "demo" or args.device != "cpu"):
        parser.error(
            "--kvpress runs on the demo model on CPU only (its environment loads the demo checkpoint there)"
        )

    from transformers.utils import logging

    logging.disable_progress_bar()
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    model = load_model(args.model, dtype, device, args.attn)
    if args.memory_job is not None:
        memory_job(args, model)
        return {}

    lengths = [int(x) for x in args.lengths.split(",")]
    budgets = [int(x) for x in args.budgets.split(",")]
    allocations = _allocations(model, args, budgets)
    methods = [Method("dynamic", None)]
    for budget in budgets:
        methods.append(Method("evolkv-uniform", budget))
        methods += [Method(label, b) for (label, b) in allocations if b == budget]
    environment = {"machine": machine(), "transformers": __import__("transformers").__version__}

    # Warm-up: the first prefill and the first decode steps pick and build kernels (seconds on CPU).
    warm = torch.randint(100, model.config.vocab_size, (1, 128)).to(device)
    for method in methods[:2]:
        cache = make_cache(model, method, allocations)
        time_prefill(model, warm, cache)
        time_decode(model, cache, 4, warm.shape[1])

    rows: list[dict[str, Any]] = []
    compression: dict[str, float] = {}
    for length in lengths:
        started = time.perf_counter()
        timings = measure_timings(model, methods, allocations, length, args)
        for method, figures in timings.items():
            row = {"length": length, "method": method.name, "budget": method.budget, "environment": "evolkv"}
            row.update(figures)
            if not args.no_memory:
                if device.type == "cuda":
                    row["peak_bytes"], row["peak_method"] = peak_memory_in_process(
                        model, method, allocations, length, args.decode_tokens
                    )
                else:
                    row["peak_bytes"], row["peak_method"] = peak_memory_subprocess(method, length, args)
            rows.append(row)
        compression[str(length)] = compression_alone_ms(
            model, length, min(128, length // 2), max(3, args.repeats)
        )
        print(f"{length} tokens measured in {time.perf_counter() - started:.0f} s", flush=True)

    kvpress_raw = run_kvpress(args, lengths, budgets) if args.kvpress else None
    if kvpress_raw is not None:
        for row in kvpress_raw["rows"]:
            row["environment"] = "kvpress"
            rows.append(row)
    add_ratios(rows)
    print_table(rows)
    print("compression step alone (ms per prefill, all layers):", compression)

    results: dict[str, Any] = {
        "model": args.model,
        "dtype": args.dtype,
        "device": args.device,
        "attn_implementation": args.attn,
        "decode_tokens": args.decode_tokens,
        "repeats": args.repeats,
        "environment": environment,
        "rows": rows,
        "kvpress_environment": kvpress_raw["environment"] if kvpress_raw is not None else None,
        "compression_alone_ms": compression,
        "command": "python benchmarks/cost_table.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    write_derived(results, args.output, args.plot)
    return results


def write_derived(results: dict[str, Any], output: Path, plot: Path) -> None:
    """The scaling plot and, when kvpress was measured, ``kvpress_compare.json`` next to ``output``."""
    rows = results["rows"]
    budgets = sorted({r["budget"] for r in rows if r["budget"] is not None})
    plot_scaling(rows, results["compression_alone_ms"], 128 if 128 in budgets else budgets[0], plot)
    print(f"wrote {plot}")
    if results.get("kvpress_environment"):
        comparison = kvpress_comparison(rows, results["kvpress_environment"], results["environment"])
        comparison["command"] = results["command"]
        path = output.parent / "kvpress_compare.json"
        path.write_text(json.dumps(comparison, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
