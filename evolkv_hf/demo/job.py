"""The project's main job on the demo model: ``python -m evolkv_hf.demo``.

1. Answers one long needle-in-a-haystack prompt with the full cache and with a uniform
   ``EvolKVCache``, and prints both answers with the K/V memory each holds.
2. Runs a short EvolKV search (group-wise CMA-ES) for a per-layer allocation at a mean budget of
   ``--budget`` tokens on a few search samples.
3. Compares, on held-out samples (disjoint from the search samples), the full cache, uniform SnapKV,
   PyramidKV and the learned allocation at the same mean budget, and at twice that budget (the learned
   allocation rescaled, no new search).

Everything runs offline on the CPU, in bfloat16 where the CPU computes it natively and in float32 elsewhere
(``--dtype auto``, see :func:`evolkv_hf.demo.fast_dtype`). Measured on 2 cores: about 2 to 2.5 minutes on an
Intel Xeon with AMX in bfloat16, 6.5 to 8 minutes on an AVX2-only AMD EPYC in float32.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import DEMO_MODEL_ID, DemoUnavailableError, load_demo_model, resolve_dtype

TASK = "niah_single"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m evolkv_hf.demo",
        description="EvolKV on SmolLM2-135M-Instruct, offline: full cache vs a compressed cache on one long "
        "prompt, a short budget search, and the learned allocation against uniform and pyramid budgets on "
        "held-out samples.",
    )
    parser.add_argument("--budget", type=int, default=128, help="mean KV tokens per layer (default: 128)")
    parser.add_argument("--context-length", type=int, default=2048, help="prompt tokens (default: 2048)")
    parser.add_argument("--search-samples", type=int, default=12, help="search samples (default: 12)")
    parser.add_argument("--eval-samples", type=int, default=24, help="held-out samples (default: 24)")
    parser.add_argument(
        "--generations", type=int, default=2, help="CMA-ES generations per group (default: 2)"
    )
    parser.add_argument("--population", type=int, default=6, help="candidates per generation (default: 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples and the search (default: 0)")
    parser.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float32"),
        default="auto",
        help="model dtype; auto: bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX), else float32 "
        "(default: auto)",
    )
    parser.add_argument(
        "--output-dir",
        help="where the search writes checkpoints and the allocation (default: a new temp dir)",
    )
    return parser.parse_args(argv)


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


def _one_prompt(model: Any, tokenizer: Any, sample: dict[str, Any], budget: int) -> None:
    from transformers import DynamicCache

    from ..cache import EvolKVCache, kv_memory_bytes
    from ..inference import encode_samples, generate_batch

    (encoded,) = encode_samples([sample], tokenizer)
    print(f"\n[1/3] One {len(encoded.prompt_ids)}-token prompt; the needle is {sample['answers'][0]!r}.")
    full_bytes = None
    for name, cache in (
        ("full cache (DynamicCache)", DynamicCache(config=model.config)),
        (f"EvolKVCache, uniform {budget}/layer", EvolKVCache(model, budget)),
    ):
        start = time.perf_counter()
        (tokens,) = generate_batch(model, tokenizer, [encoded], cache)
        answer = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        memory = kv_memory_bytes(cache)
        full_bytes = full_bytes or memory
        verdict = "correct" if sample["answers"][0] in answer else "wrong"
        print(
            f"  {name:34} answer {answer!r:24} {verdict:7}  K/V {_mib(memory):>9} "
            f"({memory / full_bytes:.1%} of full)  {time.perf_counter() - start:.1f} s"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo job; returns a process exit code."""
    args = _parse_args(argv)
    from ..allocation import BudgetAllocation
    from ..inference import encode_samples
    from ..metrics import bootstrap_ci, per_sample_scores
    from ..search import BudgetSearcher, CacheOptions, PrefillOnceEngine, SearchArguments
    from ..tasks import TaskDataUnavailableError, load_task

    if args.output_dir is not None:
        out = Path(args.output_dir)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            # Checked before the model loads: the search refuses to mix its files with another run's.
            print(
                f"error: --output-dir {out} exists and is not an empty directory; pass a new one (nothing there "
                "is overwritten).",
                file=sys.stderr,
            )
            return 2
    start = time.perf_counter()
    dtype = resolve_dtype(args.dtype)
    dtype_name = str(dtype).removeprefix("torch.") + (" (auto)" if args.dtype == "auto" else "")
    try:
        model, tokenizer = load_demo_model(dtype=dtype)
        search_set = load_task(TASK, tokenizer, args.context_length, args.search_samples, seed=args.seed)
        held_out = load_task(TASK, tokenizer, args.context_length, args.eval_samples, seed=args.seed + 10_000)
    except (DemoUnavailableError, TaskDataUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    layers = model.config.num_hidden_layers
    print(
        f"Model: {DEMO_MODEL_ID} ({layers} layers, {dtype_name}); task {TASK} at {args.context_length} tokens: "
        f"{len(search_set)} search samples, {len(held_out)} held-out samples."
    )

    _one_prompt(model, tokenizer, held_out[0], args.budget)

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="evolkv-demo-")
    search_args = SearchArguments(
        output_dir=output_dir,
        target_budget=args.budget,
        population_size=args.population,
        generations_per_group=args.generations,
        eval_batch_size=12,
        seed=args.seed,
        save_total_limit=1,
    )
    groups = math.ceil(layers / search_args.group_size)
    print(
        f"\n[2/3] EvolKV search at a mean budget of {args.budget}: {groups} groups of {search_args.group_size} layers x "
        f"{args.generations} generations x {args.population} candidates, fitness = edit similarity of the answer "
        f"x (1 + 0.3 CacheScore); output in {output_dir}"
    )
    searcher = BudgetSearcher(model, search_args, search_set, processing_class=tokenizer, metric="edit_sim")
    result = searcher.search()
    learned = result.allocation
    print(f"  best search fitness {result.best_fitness:.1f} (edit similarity {result.best_score:.1f})")
    print(f"  learned budgets per layer: {learned.budgets}")

    print(
        f"\n[3/3] Held-out comparison ({len(held_out)} samples) at the search budget {args.budget} and, rescaled "
        f"without a new search, at {2 * args.budget}"
    )
    samples = encode_samples(held_out, tokenizer)
    references = [list(answers) for answers in held_out["answers"]]
    engine = PrefillOnceEngine(model, tokenizer, samples, CacheOptions(), batch_size=12)
    longest = max(len(s.prompt_ids) for s in samples)
    methods: list[tuple[str, list[int]]] = [("full cache", [longest] * layers)]
    for budget in (args.budget, 2 * args.budget):
        methods += [
            (f"uniform (SnapKV) {budget}", BudgetAllocation.uniform(layers, budget).budgets),
            (f"pyramid (PyramidKV) {budget}", BudgetAllocation.pyramid(layers, budget).budgets),
            (f"EvolKV (learned) {budget}", learned.rescale(budget).budgets),
        ]
    print(f"  {'method':26} {'needle found (%)':>22} {'edit similarity':>16} {'K/V tokens/layer':>17}")
    for name, budgets in methods:
        answers = engine.answers(budgets)
        found = per_sample_scores("string_match_all", answers, references)
        similarity = per_sample_scores("edit_sim", answers, references)
        low, high = bootstrap_ci(found, seed=args.seed)
        mean_found = sum(found) / len(found)
        kept = sum(min(b, longest) for b in budgets) / layers
        print(
            f"  {name:26} {mean_found:6.1f} [{low:5.1f}, {high:5.1f}] {sum(similarity) / len(similarity):16.1f} "
            f"{kept:17.0f}"
        )
    print(
        f"\nDone in {time.perf_counter() - start:.0f} s. The allocation is in {Path(output_dir) / 'allocation'}; use it "
        "with EvolKVCache.from_pretrained(<dir>, model). A 30-sample search with more generations learns a "
        "better one (see docs/results.md)."
    )
    return 0
