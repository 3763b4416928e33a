"""Search with several processes (mirrors docs/tutorials/distributed.md).

What it shows: the unchanged search script run under ``accelerate launch``; each generation's candidates
are split across the processes and gathered; only the main process writes files; the result equals the
single-process one.

How long it takes with 2 CPU processes and the defaults below (including model loading in each process): 27 s
on a 2-core Intel Xeon with AMX in bfloat16, 101 s on a 2-core AVX2-only AMD EPYC in float32.

    # 2 CPU processes over gloo on a machine without GPUs; --num_processes 8 on an 8-GPU machine
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 \\
        .venv/bin/accelerate launch --multi_gpu --num_processes 2 examples/distributed_search.py
"""

from __future__ import annotations

import torch
from accelerate import PartialState

from evolkv_hf import BudgetSearcher, SearchArguments
from evolkv_hf.demo import fast_dtype, load_demo_model
from evolkv_hf.tasks import load_task


def main() -> None:
    state = PartialState(cpu=not torch.cuda.is_available())
    model, tokenizer = load_demo_model(dtype=fast_dtype(state.device))
    model.to(state.device)
    samples = load_task("niah_single", tokenizer, context_length=1024, num_samples=6, seed=0)
    args = SearchArguments(
        output_dir="runs/niah-c64-multi",
        target_budget=64,
        generations_per_group=1,
        population_size=4,
        overwrite_output_dir=True,
    )
    searcher = BudgetSearcher(model, args, samples, processing_class=tokenizer, metric="edit_sim")
    result = searcher.search()
    if state.is_main_process:
        print(f"{searcher.num_processes} process(es): {result.allocation.budgets}")


if __name__ == "__main__":
    main()
