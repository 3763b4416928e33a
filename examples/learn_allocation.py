"""Learn a per-layer allocation with ``BudgetSearcher`` (mirrors docs/tutorials/learn-allocation.md).

What it shows: a search on the demo model for ``niah_single`` needles at a mean budget of 128 tokens per
layer, checkpointed every generation (rerun with ``--resume`` after an interruption), then the learned
allocation against uniform and pyramid budgets on held-out samples, and the saved allocation directory.

How long it takes (2 CPU cores, defaults): about 2 minutes on an Intel Xeon with AMX in bfloat16. It uses the
search settings of ``python -m evolkv_hf.demo``, whose whole run (model load, one prompt twice, this search and
a held-out comparison) took 1 min 55 s to 2 min 24 s there, and 6 min 27 s to 7 min 53 s on an AVX2-only AMD
EPYC in float32.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 .venv/bin/python examples/learn_allocation.py
"""

from __future__ import annotations

import argparse

from evolkv_hf import BudgetSearcher, EvolKVCache, SearchArguments
from evolkv_hf.demo import fast_dtype, load_demo_model
from evolkv_hf.tasks import load_task_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/niah-c128")
    parser.add_argument("--target-budget", type=int, default=128)
    parser.add_argument("--context-length", type=int, default=2048)
    parser.add_argument("--search-samples", type=int, default=12)
    parser.add_argument("--eval-samples", type=int, default=24)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    args = parser.parse_args()

    model, tokenizer = load_demo_model(dtype=fast_dtype())
    samples = load_task_splits(
        "niah_single", tokenizer, args.context_length, args.search_samples, args.eval_samples, seed=0
    )
    search_args = SearchArguments(
        output_dir=args.output_dir,
        target_budget=args.target_budget,
        generations_per_group=args.generations,
        population_size=6,
        eval_batch_size=12,
    )
    searcher = BudgetSearcher(
        model,
        search_args,
        samples["search"],
        eval_dataset=samples["held_out"],
        processing_class=tokenizer,
        metric="edit_sim",
    )
    result = searcher.search(resume_from_checkpoint=True if args.resume else None)
    print("learned budgets:", result.allocation.budgets)
    print("held-out edit similarity:", result.allocation.scores)
    print(f"saved in {args.output_dir}/allocation; use it with EvolKVCache.from_pretrained(dir, model)")
    EvolKVCache(model, result.allocation)  # ready to pass to model.generate(..., cache=cache)


if __name__ == "__main__":
    main()
