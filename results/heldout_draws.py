"""Score a published run on more held-out draws: how much do its held-out figures depend on the samples drawn?

A run of ``results/reproduce.py`` with ``--depth-split stratified`` scores its methods on one held-out draw:
rows ``S .. S+E-1`` of the task's generation (``S`` = ``--search-samples``, ``E`` = ``--eval-samples``), needle
depths spread evenly over 0-1. A sample depends only on its task, row and depth, so draw ``k`` here is rows
``S+kE .. S+(k+1)E-1`` with the depths spread the same way: disjoint from the search set, from the published
draw (draw 0) and from each other. For each requested draw this script scores, with the run's dtype and
engine, the full cache, the heuristics and every learned allocation the run scored (loaded from
``results/allocations/``) at ``--budgets``, and saves the per-sample scores to
``results/heldout_draws__<run>.json`` after each draw (atomically, merged with what the file holds: a stopped
command keeps the draws it finished and a rerun scores only what is missing; scores in the file are never
replaced). Draw 0's scores are read from ``summary.json``, not recomputed. The file records the run's published
commit and each method's per-layer budgets, and adding to draws of a run published again, or of a changed
allocation, is refused.

With each save the file gets, and the script prints, every method's score with a 95% bootstrap interval and
each learned allocation minus the better of uniform SnapKV and PyramidKV, paired over the same samples (as in
``summary.json``'s ``paired``): per draw, pooled over all draws, and pooled over the new draws alone (the
samples no published figure was read from). The statistics and the recorded command cover everything the file
holds, whatever this invocation scored.

Usage (two more draws of the 60-sample third sweep, at the goal's budgets)::

    HF_HUB_OFFLINE=1 python results/heldout_draws.py \\
        niah_single__2048__c128__project__g15+8x2__s30+60__stratified__exactfit__float32 --draws 1,2
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path
from typing import Any

import reproduce
import torch
import transformers
from reproduce import (  # results/reproduce.py, beside this script
    HEURISTICS,
    baseline_methods,
    evaluate,
    git_commit,
    paired_comparisons,
    positive_int,
    sample_key,
    search_name,
    summary_text,
)

from evolkv_hf import BudgetAllocation
from evolkv_hf.allocation.hub import atomic_write
from evolkv_hf.demo import load_demo_model
from evolkv_hf.evaluation import EvaluationReport
from evolkv_hf.tasks import TASKS, load_task_splits

ROOT = Path(__file__).parent
LEARNED = re.compile(r"evolkv_seed(\d+)(?:_sweep(\d+))?")
"""A learned allocation's method name in ``summary.json``: the last sweep's, or an earlier sweep's."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "run", help="a run key of results/summary.json (scored with --depth-split stratified)"
    )
    parser.add_argument(
        "--draws",
        default="1,2",
        help="the held-out draws to score, comma-separated: draw k is the k-th block of --eval-samples rows after "
        "the published held-out set (draw 0, read from summary.json)",
    )
    parser.add_argument(
        "--budgets", default="128,256", help="mean budgets to score at (each must be one the run scored)"
    )
    parser.add_argument(
        "--methods",
        default="full,uniform,pyramid,evolkv",
        help="comma-separated: full, uniform, pyramid, streaming, and evolkv (every learned allocation the run "
        "scored); StreamingLLM, not one of the baselines the project's goal compares with, is left out by default "
        "(it adds decoding time only: it ranks from the same prefill)",
    )
    parser.add_argument("--chunk", type=positive_int, help="samples prefilled at once (default: the run's)")
    parser.add_argument(
        "--batch-size", type=positive_int, help="samples decoded together (default: the run's)"
    )
    return parser.parse_args(argv)


def parse_draws(text: str) -> list[int]:
    """``--draws`` as sorted distinct draws >= 1, with an error that says what is wrong."""
    try:
        draws = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise SystemExit(f"--draws must be comma-separated integers, got {text!r}") from None
    if not draws or draws[0] < 1:
        raise SystemExit(
            f"--draws must be >= 1, got {text!r}: draw 0 is the published held-out set, read from summary.json"
        )
    return draws


def run_arguments(run: str, published: dict[str, Any]) -> argparse.Namespace:
    """The ``reproduce.py`` arguments of a published run: its defaults updated with the run's settings.

    Refuses a run whose held-out draws cannot be formed: one scored with ``--depth-split ordered`` on a task with
    needle depths (its held-out depths are the tail of one ramp over search and held-out samples)."""
    args = reproduce.published_arguments(published)
    if args.depth_split == "ordered" and "depths" in TASKS[args.task].options:
        raise SystemExit(
            f"{run} was scored with --depth-split ordered: its held-out needles sit at the deep end of one depth "
            "ramp, so further draws would not be drawn like it. Score a run with --depth-split stratified."
        )
    return args


def draw_rows(args: argparse.Namespace, draw: int) -> tuple[int, int]:
    """The first and last row of held-out draw ``draw`` in the task's generation (draw 0: the published set)."""
    first = args.search_samples + draw * args.eval_samples
    return first, first + args.eval_samples - 1


def draw_samples(args: argparse.Namespace, tokenizer: Any, draw: int) -> Any:
    """Held-out draw ``draw``: the rows of :func:`draw_rows`, depths spread over 0-1 as in the published set
    (``load_task_splits`` with the rows before the draw as its search split, which is not used)."""
    first, _ = draw_rows(args, draw)
    return load_task_splits(args.task, tokenizer, args.context_length, first, args.eval_samples)["held_out"]


def learned_methods(
    run: str, published: dict[str, Any], args: argparse.Namespace
) -> dict[str, BudgetAllocation]:
    """Every learned allocation the run scored, by method name, loaded from ``results/allocations/``.

    A last sweep's allocation must still have the budgets the run recorded: a directory changed since the run
    was published would be scored under the published name."""
    learned = {}
    for key in published["per_sample"]:
        method = key.rpartition("@")[0]
        match = LEARNED.fullmatch(method)
        if match is None or method in learned:
            continue
        seed, sweep = int(match[1]), int(match[2]) if match[2] else None
        directory = ROOT / "allocations" / search_name(args, seed, sweep)
        if not directory.is_dir():
            raise SystemExit(f"{run} scored {method}, but its allocation {directory} is missing")
        allocation = BudgetAllocation.from_pretrained(directory)
        recorded = published["searches"].get(method, {}).get("budgets")
        if recorded is not None and list(recorded) != allocation.budgets:
            raise SystemExit(
                f"{directory} no longer holds the allocation {run} published as {method}: restore it from git"
            )
        learned[method] = allocation
    return learned


def parse_methods(text: str) -> list[str]:
    """``--methods`` as a list of names, with an error that names the unknown ones."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - {"full", "evolkv", *HEURISTICS})
    if unknown or not names:
        raise SystemExit(
            f"--methods: unknown {unknown or text!r}; choose from full, {', '.join(HEURISTICS)}, evolkv"
        )
    return names


def requested_methods(
    names: list[str], budgets: list[int], layers: int, learned: dict[str, BudgetAllocation]
) -> dict[str, dict[int, list[int]]]:
    """The names of :func:`parse_methods` as ``evaluate``'s ``{method: {budget: per-layer budgets}}`` (the full
    cache under 0; ``evolkv``: every allocation of ``learned``)."""
    methods = baseline_methods(layers, budgets, tuple(name for name in names if name != "evolkv"))
    if "evolkv" in names:
        for method, allocation in learned.items():
            methods[method] = {budget: allocation.rescale(budget).budgets for budget in budgets}
    return methods


def parse_key(key: str) -> tuple[str, int]:
    """The inverse of :func:`sample_key`."""
    method, _, budget = key.rpartition("@")
    return method, 0 if budget == "full" else int(budget)


def missing_methods(
    methods: dict[str, dict[int, list[int]]], scored: dict[str, list[float]]
) -> dict[str, dict[int, list[int]]]:
    """The part of ``methods`` that a draw has no per-sample scores for yet."""
    missing: dict[str, dict[int, list[int]]] = {}
    for method, per_budget in methods.items():
        for budget, budgets in per_budget.items():
            if sample_key(method, budget) not in scored:
                missing.setdefault(method, {})[budget] = budgets
    return missing


def statistics(per_draw: dict[int, dict[str, list[float]]]) -> dict[str, Any]:
    """Scores with 95% bootstrap intervals and paired differences over the better heuristic: per draw, pooled
    over all draws and pooled over the new draws (1 and later: samples no published figure was read from).

    ``per_draw`` maps each draw to its per-sample scores (``summary.json``'s ``per_sample`` form). A pool
    concatenates, in draw order, the scores of the methods every pooled draw scored (so the pairs of a paired
    difference stay pairs); each draw picks its own better heuristic, a pool the better one pooled.
    """

    def summarise(scores: dict[str, list[float]]) -> dict[str, Any]:
        pairs = {parse_key(key): values for key, values in scores.items()}
        report = EvaluationReport.from_sample_scores({(m, b or None): v for (m, b), v in pairs.items()})
        rows = {}
        for key in sorted(scores):
            method, budget = parse_key(key)
            row = report.row(method, budget or None)
            low, high = (None if bound is None else round(bound, 2) for bound in (row.ci_low, row.ci_high))
            rows[key] = {"score": round(row.score, 2), "ci_low": low, "ci_high": high, "n": row.n}
        learned = sorted({method for method, _ in pairs if LEARNED.fullmatch(method)})
        budgets = sorted({budget for _, budget in pairs if budget})
        return {"scores": rows, "paired": paired_comparisons(pairs, budgets, learned)}

    def pool(draws: list[int]) -> dict[str, Any]:
        common = set.intersection(*(set(per_draw[draw]) for draw in draws))
        pooled = {key: [value for draw in draws for value in per_draw[draw][key]] for key in sorted(common)}
        return {"draws": draws, **summarise(pooled)}

    draws = sorted(per_draw)
    stats: dict[str, Any] = {"draws": {str(draw): summarise(per_draw[draw]) for draw in draws}}
    if draws:
        stats["pooled"] = pool(draws)
    if [draw for draw in draws if draw]:
        stats["pooled_new"] = pool([draw for draw in draws if draw])
    return stats


def report_text(stats: dict[str, Any]) -> str:
    """Markdown tables of :func:`statistics`: each method's score per draw and pooled, then the paired
    differences over the better heuristic (the draw's or the pool's, named after each figure)."""
    draws = stats["pooled"]["draws"]
    new = stats.get("pooled_new", {"draws": [], "scores": {}, "paired": []})
    new_label = f"draws {new['draws'][0]}-{new['draws'][-1]}" if len(new["draws"]) > 1 else "new draw"
    header = (
        "| | "
        + " | ".join(f"draw {draw}" for draw in draws)
        + f" | pooled, all draws [95% CI] | pooled, {new_label} [95% CI] |"
    )
    lines = [header, "|---" * (len(draws) + 3) + "|"]

    def interval(item: dict[str, Any] | None, sign: str = "") -> str:
        if item is None:
            return ""
        value = item.get("score", item.get("difference"))
        text = f"{value:{sign}.1f} [{item['ci_low']:{sign}.1f}, {item['ci_high']:{sign}.1f}]"
        return text + (f" (n={item['n']})" if "n" in item else f" ({item['baseline']})")

    for key, pooled in stats["pooled"]["scores"].items():
        cells = [f"{stats['draws'][str(draw)]['scores'][key]['score']:.1f}" for draw in draws]
        cells += [interval(pooled), interval(new["scores"].get(key))]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")

    def paired(items: list[dict[str, Any]], method: str, budget: int) -> dict[str, Any] | None:
        return next((i for i in items if (i["method"], i["budget"]) == (method, budget)), None)

    lines += ["", header.replace(" [95% CI]", ", paired [95% CI]"), lines[1]]
    for item in stats["pooled"]["paired"]:
        method, budget = item["method"], item["budget"]
        cells = []
        for draw in draws:
            found = paired(stats["draws"][str(draw)]["paired"], method, budget)
            cells.append(f"{found['difference']:+.1f} ({found['baseline']})" if found else "")
        cells += [interval(item, "+"), interval(paired(new["paired"], method, budget), "+")]
        lines.append(f"| {method}@{budget} - best heuristic | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_saved(path: Path, run: str, published: dict[str, Any]) -> dict[str, Any]:
    """The draws saved for ``run`` (an empty record when there are none), after checking that they belong to
    the run as published now: a run published again under the same key would pool other scores."""
    commit = published.get("evolkv_hf_commit")
    if not path.is_file():
        return {"run": run, "published_commit": commit, "budgets": {}, "draws": {}}
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SystemExit(
            f"{path} is not valid JSON ({error}): restore it from git or move it away (nothing was changed)"
        ) from None
    if saved.get("run") != run or saved.get("published_commit") != commit:
        raise SystemExit(
            f"{path} holds draws of {saved.get('run')} as published at {saved.get('published_commit')}, but "
            f"summary.json has {run} from {commit}: the run was published again. Move the file away to score it."
        )
    return saved


def check_saved(
    saved: dict[str, Any], args: argparse.Namespace, methods: dict[str, dict[int, list[int]]]
) -> None:
    """Refuse to add to saved draws that another split or another allocation produced."""
    for draw, entry in saved["draws"].items():
        if entry["rows"] != list(draw_rows(args, int(draw))):
            raise SystemExit(
                f"draw {draw} was saved with rows {entry['rows']}, not {list(draw_rows(args, int(draw)))}"
            )
    for method, per_budget in methods.items():
        for budget, budgets in per_budget.items():
            before = saved["budgets"].get(sample_key(method, budget))
            if before is not None and before != budgets:
                raise SystemExit(
                    f"{sample_key(method, budget)} was scored with the per-layer budgets {before}, now {budgets}: "
                    "its allocation changed since; restore it, or move the draws file away to score it anew"
                )


def command_text(saved: dict[str, Any]) -> str:
    """The command that scores everything the file holds (budgets and method groups of every draw)."""
    keys = [parse_key(key) for entry in saved["draws"].values() for key in entry["per_sample"]]
    budgets = sorted({budget for _, budget in keys if budget})
    groups = {"evolkv" if LEARNED.fullmatch(method) else method for method, _ in keys}
    methods = [name for name in ("full", *HEURISTICS, "evolkv") if name in groups]
    return (
        f"python results/heldout_draws.py {saved['run']} --draws {','.join(sorted(saved['draws'], key=int))} "
        f"--budgets {','.join(map(str, budgets))} --methods {','.join(methods)}"
    )


def save(path: Path, saved: dict[str, Any], published: dict[str, Any]) -> dict[str, Any]:
    """Merge ``saved`` into the file as it is now (another process may have added draws), recompute the
    statistics over everything it holds (draw 0 from ``published``) and write it atomically."""
    current = load_saved(path, saved["run"], published) if path.is_file() else saved
    if current is not saved:
        current["budgets"] = {**saved["budgets"], **current["budgets"]}
        for draw, entry in saved["draws"].items():
            mine = current["draws"].setdefault(draw, {"rows": entry["rows"], "per_sample": {}})
            # Scores already in the file are kept: scoring is deterministic, so a difference means another
            # machine or code, which the file's own records describe.
            differing = sorted(
                key
                for key, values in entry["per_sample"].items()
                if mine["per_sample"].get(key, values) != values
            )
            if differing:
                print(f"draw {draw}: {path.name} already holds other scores for {differing}; kept those")
            mine["per_sample"] = {**entry["per_sample"], **mine["per_sample"]}
            runs = mine.setdefault("runs", [])
            runs += [record for record in entry.get("runs", []) if record not in runs]
    keys = {key for entry in current["draws"].values() for key in entry["per_sample"]}
    per_draw = {0: {key: values for key, values in published["per_sample"].items() if key in keys}}
    per_draw.update({int(draw): entry["per_sample"] for draw, entry in current["draws"].items()})
    current["statistics"] = statistics(per_draw)
    current["command"] = command_text(current)
    atomic_write(path, summary_text(current).encode("utf-8"))
    return current


def main() -> None:
    options = parse_args()
    published = reproduce.published_run(options.run)
    if "per_sample" not in published:
        raise SystemExit(
            f"{options.run} was published before per-sample scores were recorded: score it again"
        )
    args = run_arguments(options.run, published)
    draws = parse_draws(options.draws)
    budgets = [int(b) for b in options.budgets.split(",")]
    scored_budgets = {int(b) for b in str(args.budgets).split(",")}
    if not set(budgets) <= scored_budgets:
        raise SystemExit(f"--budgets {options.budgets}: {options.run} scored only {sorted(scored_budgets)}")
    args.chunk = options.chunk or args.chunk
    args.batch_size = options.batch_size or args.batch_size
    path = ROOT / f"heldout_draws__{options.run}.json"
    saved = load_saved(path, options.run, published)

    model, tokenizer = load_demo_model(dtype=getattr(torch, args.dtype))
    layers = model.config.num_hidden_layers
    names = parse_methods(options.methods)
    learned = learned_methods(options.run, published, args) if "evolkv" in names else {}
    methods = requested_methods(names, budgets, layers, learned)
    check_saved(saved, args, methods)
    for draw in draws:
        first, last = draw_rows(args, draw)
        entry = saved["draws"].setdefault(str(draw), {"rows": [first, last], "per_sample": {}})
        missing = missing_methods(methods, entry["per_sample"])
        if not missing:
            print(f"draw {draw}: already scored in {path.name}")
            continue
        print(f"draw {draw} (rows {first}-{last}): scoring {sorted(missing)}", flush=True)
        start = time.perf_counter()
        scores, _ = evaluate(args, model, tokenizer, draw_samples(args, tokenizer, draw), missing)
        entry["per_sample"].update(
            {sample_key(method, budget): values for (method, budget), values in scores.items()}
        )
        saved["budgets"].update(
            {
                sample_key(method, budget): budgets
                for method, per in missing.items()
                for budget, budgets in per.items()
            }
        )
        entry.setdefault("runs", []).append(
            {
                "scored": sorted(sample_key(method, budget) for method, budget in scores),
                "eval_seconds": round(time.perf_counter() - start, 1),
                "dtype": args.dtype,
                "evolkv_hf_commit": git_commit(),
                "machine": platform.platform(),
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            }
        )
        saved = save(path, saved, published)  # each finished draw is kept, whatever happens to the next
        print(
            f"draw {draw}: scored in {entry['runs'][-1]['eval_seconds']} s, saved to {path.name}", flush=True
        )
    if saved["draws"]:  # in the file, with their statistics: save() wrote them, now or before
        print(report_text(saved["statistics"]))
        print(f"{path} holds draws {', '.join(sorted(saved['draws'], key=int))}")


if __name__ == "__main__":
    main()
