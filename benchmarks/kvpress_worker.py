"""kvpress's side of ``cost_table.py --kvpress``; runs inside kvpress's own virtual environment.

Loads the demo checkpoint with that environment's transformers, and measures ``DynamicCache`` and
kvpress's ``SnapKVPress`` (window 32, kernel 7, the same as EvolKVCache's defaults) at the same kept tokens
per layer as EvolKVCache's budgets: ``compression_ratio = 1 - (budget + 0.5) / length``, so that kvpress's
``int(length * (1 - ratio))`` keeps exactly ``budget`` tokens. Same prompts (same seeds, same torch), same
timing helpers, configurations interleaved, medians; peak memory in one fresh process per configuration.
Not meant to be run by hand: ``cost_table.py --kvpress`` creates the environment and calls it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import PeakMemory, kv_bytes, machine, prompt_ids, run_memory_job, time_decode, time_prefill

WINDOW_SIZE = 32
KERNEL_SIZE = 7


def load(checkpoint: str, dtype: str, attn: str) -> Any:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=getattr(torch, dtype), attn_implementation=attn
    )
    return model.eval()


def run_once(
    model: Any, ids: torch.Tensor, budget: int | None, decode_tokens: int
) -> tuple[float, float, int]:
    """Prefill (compressed by SnapKVPress when ``budget`` is set), then decode; seconds, s/token, K/V bytes."""
    from kvpress import SnapKVPress
    from transformers import DynamicCache

    cache = DynamicCache()
    length = ids.shape[1]
    context: Any = contextlib.nullcontext()
    if budget is not None:
        press = SnapKVPress(
            compression_ratio=1 - (budget + 0.5) / length, window_size=WINDOW_SIZE, kernel_size=KERNEL_SIZE
        )
        context = press(model)
    with context:
        prefill = time_prefill(model, ids, cache)
    decode = time_decode(model, cache, decode_tokens, length)
    return prefill, decode, kv_bytes(cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--lengths", default="1024,2048,4096,8192")
    parser.add_argument("--budgets", default="64,128,256,512")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--memory-job", default=None)
    args = parser.parse_args()
    if args.output is None and args.memory_job is None:
        parser.error("--output is required")

    model = load(args.checkpoint, args.dtype, args.attn)
    vocab = model.config.vocab_size
    if args.memory_job is not None:
        job = json.loads(args.memory_job)
        # Warm-up with the measured configuration (the first forwards allocate kernel workspaces).
        run_once(model, prompt_ids(vocab, 600), job["budget"], 4)
        gc.collect()
        with PeakMemory(torch.device("cpu")) as peak:
            run_once(model, prompt_ids(vocab, job["length"]), job["budget"], args.decode_tokens)
        print(json.dumps({"peak_bytes": peak.peak_bytes, "method": peak.method}))
        return

    warm = prompt_ids(vocab, 128)
    run_once(model, warm, None, 4)  # the first prefill and decode steps build kernels
    run_once(model, warm, 64, 4)
    budgets: list[int | None] = [None, *(int(b) for b in args.budgets.split(","))]
    rows: list[dict[str, Any]] = []
    for length in (int(x) for x in args.lengths.split(",")):
        ids = prompt_ids(vocab, length)
        runs: dict[int | None, dict[str, list[float]]] = {b: {"prefill": [], "decode": []} for b in budgets}
        held: dict[int | None, int] = {}
        run_once(model, ids, None, 1)  # untimed: first pass at this length
        for repeat in range(args.repeats):
            shift = repeat % len(budgets)  # rotate the order, as cost_table.py does
            for budget in budgets[shift:] + budgets[:shift]:
                prefill, decode, held[budget] = run_once(model, ids, budget, args.decode_tokens)
                runs[budget]["prefill"].append(prefill)
                runs[budget]["decode"].append(decode)
                gc.collect()
        for budget in budgets:
            row: dict[str, Any] = {
                "length": length,
                "method": "dynamic" if budget is None else "kvpress-snapkv",
                "budget": budget,
                "prefill_s": statistics.median(runs[budget]["prefill"]),
                "decode_ms_per_token": statistics.median(runs[budget]["decode"]) * 1000,
                "kv_bytes": held[budget],
                "runs": runs[budget],
            }
            if not args.no_memory:
                forwarded = ["--checkpoint", args.checkpoint, "--decode-tokens", str(args.decode_tokens)]
                forwarded += ["--dtype", args.dtype, "--attn", args.attn]
                job = {"length": length, "budget": budget}
                row["peak_bytes"], row["peak_method"] = run_memory_job(__file__, job, forwarded)
            rows.append(row)
        print(f"kvpress: {length} tokens measured", flush=True)

    environment = {
        "machine": machine(),
        "transformers": importlib.metadata.version("transformers"),
        "kvpress": importlib.metadata.version("kvpress"),
    }
    args.output.write_text(json.dumps({"environment": environment, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
