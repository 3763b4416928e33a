"""Does a penalty search's best candidate stay best once rescaled to the target mean budget?

With the paper's fitness ``F = f * (1 + lambda * CacheScore)`` a candidate may spend more than the target
mean budget; the searcher rescales its best candidate to the target at the end. This diagnostic reads the
search log that ``results/reproduce.py`` writes for each seed (``results/runs/<name>/search_log.jsonl``),
takes the ``--top`` distinct candidates by fitness, rescales each to the target and scores it again on the
same search samples with the same partial-credit metric (the search's f; no held-out sample is used). It
prints, per candidate, its fitness, its score and mean budget as found, and its score at the target, and
writes the table to ``results/penalty_drift__<run>.json``.

Usage::

    HF_HUB_OFFLINE=1 python results/penalty_drift.py --task vt --generations 15 --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from reproduce import (  # results/reproduce.py, beside this script
    add_protocol_arguments,
    best_distinct,
    read_search_log,
    search_name,
    split_samples,
)

from evolkv_hf import BudgetAllocation
from evolkv_hf.demo import load_demo_model
from evolkv_hf.inference import encode_samples
from evolkv_hf.metrics import per_sample_scores
from evolkv_hf.search import CacheOptions, PrefillOnceEngine
from evolkv_hf.tasks import TASKS

ROOT = Path(__file__).parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_protocol_arguments(parser, task="vt")  # as given to reproduce.py: the same searches and samples
    parser.add_argument("--top", type=int, default=10, help="distinct best candidates to rescore per seed")
    parser.add_argument("--batch-size", type=int, default=25)
    args = parser.parse_args()
    if args.fitness != "partial":
        parser.error("penalty_drift.py rescores the partial-credit searches only: leave out --fitness")
    args.constraint = "penalty"  # the drift this script measures is the penalty's
    return args


def top_candidates(log: Path, top: int) -> list[dict[str, Any]]:
    """The ``top`` distinct candidates of a search log, best fitness first."""
    candidates = [r for r in read_search_log(log) if r.get("event") == "candidate" and r.get("error") is None]
    return best_distinct(candidates, top, "fitness")


def main() -> None:
    args = parse_args()
    model, tokenizer = load_demo_model(dtype=torch.bfloat16)
    layers = model.config.num_hidden_layers
    data, _ = split_samples(args, tokenizer)  # the samples reproduce.py searched on
    references = [list(a) for a in data["answers"]]
    metric = TASKS[args.task].partial_credit_metric
    engine = PrefillOnceEngine(
        model, tokenizer, encode_samples(data, tokenizer), CacheOptions(), batch_size=args.batch_size
    )

    def score(budgets: list[int]) -> float:
        return statistics.mean(per_sample_scores(metric, engine.answers(budgets), references))

    result: dict[str, Any] = {"uniform_at_target": score([args.target_budget] * layers), "seeds": {}}
    print(f"uniform at {args.target_budget}: {result['uniform_at_target']:.2f}")
    print("seed rank fitness score_as_found mean_as_found score_at_target")
    for seed in args.seeds.split(","):
        rows = []
        for rank, row in enumerate(
            top_candidates(ROOT / "runs" / search_name(args, int(seed)) / "search_log.jsonl", args.top)
        ):
            at_target = BudgetAllocation(budgets=list(row["budgets"]), num_layers=layers).rescale(
                args.target_budget
            )
            rows.append(
                {
                    "rank": rank,
                    "fitness": round(row["fitness"], 2),
                    "score_as_found": round(row["score"], 2),
                    "mean_as_found": round(row["mean_budget"], 1),
                    "score_at_target": round(score(at_target.budgets), 2),
                    "budgets_at_target": at_target.budgets,
                }
            )
            r = rows[-1]
            print(
                f"{seed:>4} {rank:>4} {r['fitness']:7.2f} {r['score_as_found']:14.2f} {r['mean_as_found']:13.1f} "
                f"{r['score_at_target']:15.2f}",
                flush=True,
            )
        result["seeds"][seed] = rows
    output = (
        ROOT
        / f"penalty_drift__{args.task}__{args.context_length}__c{args.target_budget}__g{args.generations}.json"
    )
    output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
