"""The paired difference of two methods from two published runs that scored the same held-out samples.

Each run of ``results/reproduce.py`` compares its learned allocations with the heuristics on the same samples
(a paired bootstrap). Two runs whose held-out samples are the same (same task, context length, search and
held-out sizes and depth split) can be compared the same way from the per-sample scores in
``results/summary.json``, e.g. two searches with different fitnesses from the same start. Every method both
runs scored (the heuristics, the full cache) must have the same per-sample scores in both, so the samples and
their scoring are checked to be the same, not assumed.

Usage (the exact-match fitness sweep against the edit-similarity one, at 128)::

    python results/compare_runs.py \\
        niah_single__2048__c128__project__g15+8__s30__stratified__exactfit__float32:evolkv_seed0 \\
        niah_single__2048__c128__project__g15+8__s30__stratified__float32:evolkv_seed0 --budgets 128,256,512
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from evolkv_hf.evaluation import EvaluationReport

ROOT = Path(__file__).parent
SAME_SAMPLES = ("task", "context_length", "search_samples", "eval_samples", "depth_split")
"""The settings that decide the held-out samples of a run (with the task generator's fixed seed)."""


def parse_method(text: str) -> tuple[str, str]:
    """``RUN:METHOD`` as a pair, with an error that says the expected form."""
    run, sep, method = text.rpartition(":")
    if not sep or not run or not method:
        raise argparse.ArgumentTypeError(
            f"expected RUN:METHOD (a run key of summary.json and a method), got {text!r}"
        )
    return run, method


def check_same_samples(summary: dict[str, Any], first: str, second: str) -> list[str]:
    """The methods both runs scored, after checking that the runs scored the same held-out samples the same way.

    Raises ``SystemExit`` naming the setting or the method that differs.
    """
    runs = summary["runs"]
    for run in (first, second):
        if run not in runs:
            raise SystemExit(f"{run} is not a run of summary.json; runs: {sorted(runs)}")
        if "per_sample" not in runs[run]:
            raise SystemExit(
                f"{run} was published before per-sample scores were recorded: it cannot be paired"
            )
    # Runs published before --depth-split existed used the ordered split.
    settings = [{"depth_split": "ordered", **runs[run]["settings"]} for run in (first, second)]
    for key in SAME_SAMPLES:
        if settings[0].get(key) != settings[1].get(key):
            raise SystemExit(
                f"the runs scored different held-out samples: {key} is {settings[0].get(key)!r} in {first} and "
                f"{settings[1].get(key)!r} in {second}"
            )
    samples = [runs[run]["per_sample"] for run in (first, second)]
    shared = sorted(set(samples[0]) & set(samples[1]))
    unlearned = [key for key in shared if not key.startswith("evolkv_")]
    if not unlearned:
        raise SystemExit("the runs share no heuristic or full-cache scores to check that their samples agree")
    for key in unlearned:
        if samples[0][key] != samples[1][key]:
            raise SystemExit(
                f"{key} scored differently in the two runs (another dtype, machine or code?): they cannot be "
                "paired sample by sample"
            )
    return unlearned


def compare(
    summary: dict[str, Any], first: tuple[str, str], second: tuple[str, str], budget: int
) -> dict[str, Any]:
    """``first`` minus ``second`` (each ``(run, method)``) at ``budget``: the difference of the means with the
    same paired bootstrap as the runs' own comparisons, and on how many samples each scored higher than the other."""
    values = []
    for run, method in (first, second):
        key = f"{method}@{budget}"
        per_sample = summary["runs"][run]["per_sample"]
        if key not in per_sample:
            raise SystemExit(f"{run} has no scores for {key}; it has {sorted(per_sample)}")
        values.append(per_sample[key])
    report = EvaluationReport.from_sample_scores(
        {("first", budget): values[0], ("second", budget): values[1]}, n_bootstrap=0
    )
    rows = [report.row("first", budget), report.row("second", budget)]
    item = report.compare("first", budget, "second")
    return {
        "budget": budget,
        "first": round(rows[0].score, 2),
        "second": round(rows[1].score, 2),
        "difference": round(item.difference, 2),
        "ci_low": round(item.ci_low, 2),
        "ci_high": round(item.ci_high, 2),
        "first_only": sum(a > b for a, b in zip(*values, strict=True)),
        "second_only": sum(b > a for a, b in zip(*values, strict=True)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("first", type=parse_method, help="RUN:METHOD, e.g. <run key>:evolkv_seed0")
    parser.add_argument("second", type=parse_method, help="RUN:METHOD subtracted from the first")
    parser.add_argument("--budgets", default="128,256,512")
    parser.add_argument("--summary", type=Path, default=ROOT / "summary.json")
    args = parser.parse_args(argv)
    summary = json.loads(args.summary.read_text())
    checked = check_same_samples(summary, args.first[0], args.second[0])
    print(f"same held-out samples: {len(checked)} shared heuristic and full-cache score lists are identical")
    for budget in (int(b) for b in args.budgets.split(",")):
        item = compare(summary, args.first, args.second, budget)
        print(
            f"{args.first[1]} ({args.first[0]}) minus {args.second[1]} ({args.second[0]}) at {budget}: "
            f"{item['first']:.1f} - {item['second']:.1f} = {item['difference']:+.1f} "
            f"[{item['ci_low']:+.1f}, {item['ci_high']:+.1f}] (paired); samples where the first scored higher: "
            f"{item['first_only']}, the second: {item['second_only']}"
        )


if __name__ == "__main__":
    main()
