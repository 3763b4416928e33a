"""Does one layer want more tokens than a published run's searches could give it?

A search clips every layer's budget to ``--max-budget`` (default ``4 x --target-budget``). When a layer sits at
that cap in every seed's allocation, the cap, not the search, may be what limits the score. This script scores,
on the run's own search set (the samples its last sweep searched on; no held-out sample is read), each seed's
last-sweep allocation as published and with layer ``--layer`` given each of ``--budgets``, the other layers
rescaled to the same total with their proportions kept (``distribute``, floor: the window). It prints the task's
metric, its partial-credit metric and the last sweep's fitness for each (and, beside each allocation as published,
the search-set score its search recorded: the probe scores as the search did), and writes them with the command to
``results/cap_probe__<run>__layer<L>.json``.

Usage (the 60-sample third needle sweep, whose layer 18 sits at the cap of 512 for seed 0 and at 511 for seed 1)::

    HF_HUB_OFFLINE=1 python results/cap_probe.py \\
        niah_single__2048__c128__project__g15+8x2__s30+60__stratified__exactfit__float32 \\
        --layer 18 --budgets 768,1024,1536,2048
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from reproduce import (  # results/reproduce.py, beside this script
    PARTIAL_WEIGHT,
    git_commit,
    positive_int,
    published_arguments,
    published_run,
    search_name,
    split_samples,
    sweep_fitness,
)

from evolkv_hf import BudgetAllocation
from evolkv_hf.allocation.arithmetic import distribute
from evolkv_hf.allocation.hub import atomic_write
from evolkv_hf.demo import load_demo_model
from evolkv_hf.inference import encode_samples
from evolkv_hf.metrics import load_metric, per_sample_scores
from evolkv_hf.search import CacheOptions, PrefillOnceEngine
from evolkv_hf.tasks import TASKS

ROOT = Path(__file__).parent


def with_layer_budget(budgets: list[int], layer: int, budget: int, floor: int) -> list[int]:
    """``budgets`` with ``layer`` at ``budget`` and the other layers rescaled to the same total, in proportion
    (largest remainder, each at least ``floor``).

    >>> with_layer_budget([100, 200, 300], 2, 400, 32)
    [67, 133, 400]
    """
    if not 0 <= layer < len(budgets):
        raise SystemExit(f"--layer {layer} is not a layer of this model: give 0 to {len(budgets) - 1}")
    total, others = sum(budgets), len(budgets) - 1
    if budget > total - floor * others:
        raise SystemExit(
            f"--budgets {budget}: the other {others} layers would get less than the floor of {floor} tokens each "
            f"(the allocation's total is {total}); give at most {total - floor * others}"
        )
    if budget < floor:
        raise SystemExit(f"--budgets {budget} is below the floor of {floor} tokens (the observation window)")
    rest = distribute([b for i, b in enumerate(budgets) if i != layer], total - budget, floor=floor)
    return [*rest[:layer], budget, *rest[layer:]]


def check_not_replacing(out: Path, command: str) -> None:
    """Refuse to replace a probe of other schemes (a rerun of the same command may rewrite its figures)."""
    if out.is_file():
        try:
            saved = json.loads(out.read_text()).get("command")
        except (json.JSONDecodeError, AttributeError):
            saved = None
        if saved != command:
            raise SystemExit(f"{out} holds the probe {saved!r}, not {command!r}: move it aside to keep both")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a run key of results/summary.json")
    parser.add_argument("--layer", type=int, required=True, help="the layer whose budget is raised")
    parser.add_argument(
        "--budgets",
        type=budget_list,
        required=True,
        help="comma-separated budgets for --layer (e.g. 768,1024,1536,2048)",
    )
    return parser.parse_args(argv)


def budget_list(text: str) -> list[int]:
    """An argparse type: comma-separated integers >= 1."""
    try:
        return [positive_int(part) for part in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers >= 1"
        ) from error


def scheme_scores(
    engine: Any, budgets: list[int], references: list[list[str]], metrics: dict[str, Any], fitness: str
) -> dict[str, Any]:
    """The mean of each metric (and of the sweep's fitness) for one scheme on the engine's samples."""
    answers = engine.answers(budgets)
    scores = {
        name: sum(values) / len(values)
        for name, values in ((name, per_sample_scores(m, answers, references)) for name, m in metrics.items())
    }
    exact, partial = scores["exact"], scores["partial"]
    scores["fitness"] = exact + PARTIAL_WEIGHT * partial if fitness == "exact+partial" else partial
    return {"budgets": budgets, **{name: round(value, 2) for name, value in scores.items()}}


def main() -> None:
    options = parse_args()
    published = published_run(options.run)
    args = published_arguments(published)
    command = f"python results/cap_probe.py {options.run} --layer {options.layer} --budgets " + ",".join(
        map(str, options.budgets)
    )
    out = ROOT / f"cap_probe__{options.run}__layer{options.layer}.json"
    check_not_replacing(out, command)  # before the work, not after
    model, tokenizer = load_demo_model(dtype=getattr(torch, args.dtype))
    search_set, _ = split_samples(args, tokenizer)
    references = [list(a) for a in search_set["answers"]]
    task = TASKS[args.task]
    metrics = {"exact": load_metric(task.default_metric), "partial": load_metric(task.partial_credit_metric)}
    fitness = sweep_fitness(args, args.sweeps)
    layers = model.config.num_hidden_layers
    # Every scheme first, so that a --budgets value out of range is refused before the prefill.
    schemes = {"uniform": [args.target_budget] * layers}
    recorded = {}
    for seed in (int(s) for s in str(args.seeds).split(",")):
        allocation = BudgetAllocation.from_pretrained(ROOT / "allocations" / search_name(args, seed))
        schemes[f"evolkv_seed{seed}"] = allocation.budgets
        recorded[f"evolkv_seed{seed}"] = allocation.metric_value
        for budget in options.budgets:
            schemes[f"evolkv_seed{seed} layer{options.layer}={budget}"] = with_layer_budget(
                allocation.budgets, options.layer, budget, allocation.window_size
            )
    start = time.perf_counter()
    engine = PrefillOnceEngine(
        model, tokenizer, encode_samples(search_set, tokenizer), CacheOptions(), batch_size=args.batch_size
    )
    rows = {
        name: scheme_scores(engine, budgets, references, metrics, fitness)
        for name, budgets in schemes.items()
    }
    for name, value in recorded.items():
        rows[name]["search_recorded"] = value
    seconds = time.perf_counter() - start
    print(f"{'scheme':28} {task.default_metric:>16} {task.partial_credit_metric:>16} {'fitness':>8}")
    for name, row in rows.items():
        print(f"{name:28} {row['exact']:16.2f} {row['partial']:16.2f} {row['fitness']:8.2f}")
    payload = {
        "run": options.run,
        "search_samples": len(search_set),
        "metrics": {"exact": task.default_metric, "partial": task.partial_credit_metric, "fitness": fitness},
        "rows": rows,
        "seconds": round(seconds, 1),
        "evolkv_hf_commit": git_commit(),
        "command": command,
    }
    atomic_write(out, (json.dumps(payload, indent=1) + "\n").encode("utf-8"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
