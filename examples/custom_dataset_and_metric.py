"""Bring your own dataset and metric (mirrors docs/tutorials/custom-data.md).

What it shows: a synthetic task built as a ``datasets.Dataset`` with the task columns (a code hidden in
a log), validated with ``validate_task_dataset``, scored by a plain Python metric function, used for a
tiny search and a held-out comparison. Any ``evaluate`` module or ``evaluate.combine(...)`` works in
place of the function.

How long it takes (2 CPU cores): 23 s on an Intel Xeon with AMX in bfloat16, 90 s on an AVX2-only AMD EPYC in
float32.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 .venv/bin/python examples/custom_dataset_and_metric.py
"""

from __future__ import annotations

import random
import tempfile

from datasets import Dataset

from evolkv_hf import BudgetSearcher, SearchArguments
from evolkv_hf.demo import fast_dtype, load_demo_model
from evolkv_hf.tasks import validate_task_dataset

NAMES = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken"]


def make_row(seed: int) -> dict:
    rng = random.Random(seed)
    lines = [
        f"Entry {i}: {rng.choice(NAMES)} opened room {rng.randrange(100, 999)} at {rng.randrange(24):02d}:00."
        for i in range(60)
    ]
    code = f"{rng.randrange(10**6):06d}"
    lines.insert(rng.randrange(len(lines)), f"Note: the code of the safe is {code}.")
    return {
        "context": "\n".join(lines),
        "question": "What is the code of the safe? Answer with the code only.",
        "answer_prefix": "The code is",
        "answers": [code],
        "max_new_tokens": 8,
    }


def digits_found(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Share of the code's digits, in place, in the answer (partial credit, 0-100)."""
    scores = []
    for prediction, answers in zip(predictions, references, strict=True):
        code = answers[0]
        scores.append(sum(a == b for a, b in zip(prediction.strip(), code, strict=False)) / len(code))
    return {"digits_found": 100 * sum(scores) / len(scores)}


def main() -> None:
    model, tokenizer = load_demo_model(dtype=fast_dtype())
    dataset = Dataset.from_list([make_row(seed) for seed in range(10)])
    validate_task_dataset(dataset)
    args = SearchArguments(
        output_dir=tempfile.mkdtemp(prefix="evolkv-custom-"),
        target_budget=64,
        generations_per_group=1,
        population_size=4,
    )
    searcher = BudgetSearcher(
        model,
        args,
        dataset.select(range(5)),
        eval_dataset=dataset.select(range(5, 10)),
        processing_class=tokenizer,
        metric=digits_found,
    )
    result = searcher.search()
    print(result.allocation.budgets)
    print(result.allocation.scores)


if __name__ == "__main__":
    main()
