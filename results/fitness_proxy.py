"""Does the search's partial-credit fitness track the task's own metric on the search samples?

A search maximises a partial-credit metric (edit similarity of the answer for the needle tasks; with
``--fitness exact+partial`` the task's metric plus 0.1 x that, whose logged score is shown as found), while the
goal is scored with the task's metric (``string_match_all``: the whole needle or nothing). This diagnostic
reads the search log that ``results/reproduce.py`` wrote for each seed (``results/runs/<name>/``), takes the
``--top`` distinct schemes by score at the target budget and the search's starting point, and scores
each again on the same search samples with both metrics (no held-out sample is used). It prints one line per
scheme and, per seed, the correlation of the two metrics over the schemes, and writes the table to
``results/fitness_proxy__<run>.json``.

Usage (the second-sweep needle run of ``docs/results.md``)::

    HF_HUB_OFFLINE=1 python results/fitness_proxy.py --generations 15 --sweeps 2 --sweep-generations 8 \\
        --first-sweep-dtype bfloat16 --dtype float32 --depth-split stratified --constraint project
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
    add_sweep_arguments,
    best_distinct,
    check_sweep_arguments,
    metric_key,
    positive_int,
    read_search_log,
    run_key,
    search_metric,
    search_name,
    split_samples,
)

from evolkv_hf.demo import load_demo_model
from evolkv_hf.inference import encode_samples
from evolkv_hf.metrics import per_sample_scores
from evolkv_hf.search import CacheOptions, PrefillOnceEngine
from evolkv_hf.tasks import TASKS

ROOT = Path(__file__).parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_protocol_arguments(parser)  # as given to reproduce.py: the same searches and samples
    parser.add_argument("--constraint", default="project", choices=["penalty", "project"])
    add_sweep_arguments(parser)  # the log read is that of the last sweep, --sweeps
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument(
        "--top", type=positive_int, default=20, help="distinct best schemes to rescore per seed"
    )
    parser.add_argument("--batch-size", type=positive_int, default=30)
    args = parser.parse_args(argv)
    check_sweep_arguments(parser, args)
    return args


def top_schemes(log: Path, top: int, target: int) -> list[dict[str, Any]]:
    """The ``top`` distinct schemes of a search log at mean budget ``target``, best score first, and the
    search's starting point (its ``baseline``) last when it is not among them."""
    schemes = [
        r
        for r in read_search_log(log)
        if r.get("event") in ("baseline", "candidate")
        and r.get("error") is None
        and abs(r["mean_budget"] - target) < 0.5
    ]
    picked = best_distinct(schemes, top, "score")
    seen = {tuple(row["budgets"]) for row in picked}
    start = [r for r in schemes if r["event"] == "baseline"]
    if start and tuple(start[0]["budgets"]) not in seen:
        picked.append(start[0])
    return picked


def correlation(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's r, or ``None`` when either list is constant (or shorter than 2)."""
    if len(xs) < 2 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return statistics.correlation(xs, ys)


def main() -> None:
    args = parse_args()
    model, tokenizer = load_demo_model(dtype=getattr(torch, args.dtype))
    data, _ = split_samples(args, tokenizer)  # the samples reproduce.py searched on
    references = [list(a) for a in data["answers"]]
    spec = TASKS[args.task]
    engine = PrefillOnceEngine(
        model, tokenizer, encode_samples(data, tokenizer), CacheOptions(), batch_size=args.batch_size
    )

    logged = metric_key(search_metric(args, args.sweeps))  # what the rescored sweep maximised
    result: dict[str, Any] = {
        "search_metric": logged,
        "partial_credit_metric": spec.partial_credit_metric,
        "metric": spec.default_metric,
        "seeds": {},
    }
    print(f"seed rank {logged}(logged) {spec.partial_credit_metric} {spec.default_metric}")
    for seed in args.seeds.split(","):
        rows = []
        log = ROOT / "runs" / search_name(args, int(seed)) / "search_log.jsonl"
        for rank, row in enumerate(top_schemes(log, args.top, args.target_budget)):
            answers = engine.answers(list(row["budgets"]))
            partial = statistics.mean(per_sample_scores(spec.partial_credit_metric, answers, references))
            exact = statistics.mean(per_sample_scores(spec.default_metric, answers, references))
            rows.append(
                {
                    "rank": rank,
                    "event": row["event"],
                    "logged_score": round(row["score"], 2),
                    "partial_credit": round(partial, 2),
                    "metric": round(exact, 2),
                    "budgets": row["budgets"],
                }
            )
            print(
                f"{seed:>4} {rank:>4} {row['score']:8.2f} {partial:8.2f} {exact:8.2f}  {row['event']}",
                flush=True,
            )
        r = correlation([x["partial_credit"] for x in rows], [x["metric"] for x in rows])
        result["seeds"][seed] = {"correlation": None if r is None else round(r, 3), "schemes": rows}
        print(f"seed {seed}: correlation of the two metrics over {len(rows)} schemes: {r}")
    out = ROOT / f"fitness_proxy__{run_key(args)}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
