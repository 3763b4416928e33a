"""Print the markdown tables of ``docs/results.md`` from ``results/summary.json``.

Usage::

    python results/tables.py [--run niah_single__2048__c128__penalty] [--plots docs/img]

One block per run: held-out scores with 95% bootstrap intervals at every budget, each learned allocation's
difference to the best heuristic with a paired interval (runs measured since those were recorded), each
search's time and budgets, the evaluation time and the exact command. With ``--plots DIR``, also one figure per run of the
learned per-layer budgets (``allocations_<run>.png``) and its score-vs-budget plot (``scores_<run>.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent


def run_block(name: str, run: dict[str, Any]) -> str:
    rows = run["rows"]
    budgets = sorted({r["budget"] for r in rows if isinstance(r["budget"], int)})
    methods: list[str] = []
    for r in rows:
        label = "full cache" if r["method"] == "full" else r["method"]
        if label not in methods:
            methods.append(label)
    first = rows[0]
    lines = [
        f"### `{first['task']}` at {first['context_length']} tokens (run `{name}`)",
        "",
        f"Held-out samples: {first['n']}; metric: `{first['metric']}` (0-100); 95% bootstrap intervals in brackets.",
        "",
        "| method | " + " | ".join(f"budget {b}" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for method in methods:
        cells = []
        for budget in budgets:
            match = [
                r
                for r in rows
                if (r["method"] == method or (method == "full cache" and r["method"] == "full"))
                and (r["budget"] == budget or not isinstance(r["budget"], int))
            ]
            cells.append(
                f"{match[0]['score']:.1f} [{match[0]['ci_low']:.1f}, {match[0]['ci_high']:.1f}]"
                if match
                else "-"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    for item in run.get("paired", []):
        lines.append(
            f"- `{item['method']}` minus `{item['baseline']}` (the better of uniform and pyramid) at {item['budget']}, "
            f"on the same samples: {item['difference']:+.1f} [{item['ci_low']:+.1f}, {item['ci_high']:+.1f}] "
            "(paired bootstrap)"
        )
    for label, search in run.get("searches", {}).items():
        seconds = search.get("search_seconds")
        took = f"search took {seconds:.0f} s here" if isinstance(seconds, (int, float)) else "search reused"
        sweeps = search.get("sweeps", [])
        if sweeps:
            took = f"its {len(sweeps)} sweeps" + (
                f" took {seconds:.0f} s in all" if isinstance(seconds, (int, float)) else ""
            )
            took += " (each below, with its dtype)"
        elif search.get("search_resumed"):
            took += " (stopped and resumed from its checkpoint: the summed time of its scheme evaluations)"
        best = search.get("search_score")
        best_text = (
            f"; best search-set {score_label(search)} {best:.1f}" if isinstance(best, (int, float)) else ""
        )
        lines.append(f"- `{label}`: {took}{best_text}; budgets {search.get('budgets')}")
        for number, sweep in enumerate(sweeps, start=1):
            sweep_seconds = sweep.get("search_seconds")
            sweep_took = (
                f"{sweep_seconds:.0f} s" if isinstance(sweep_seconds, (int, float)) else "time not recorded"
            )
            if sweep.get("search_resumed"):
                sweep_took += " (resumed: the summed time of its scheme evaluations)"
            # Recorded since sweeps can search different sets (--earlier-sweep-samples): their scores differ in samples.
            samples = (
                f" on {sweep['search_samples']} samples" if sweep.get("search_samples") is not None else ""
            )
            # Recorded since --max-budget: each sweep's largest per-layer budget.
            cap = f", each layer at most {sweep['max_budget']}" if sweep.get("max_budget") is not None else ""
            lines.append(
                f"  - sweep {number} ({sweep['dtype']}): {sweep_took}, search-set {score_label(sweep)} "
                f"{sweep['search_score']:.1f}{samples}{cap}"
            )
    partial = run.get("partial_credit")
    if partial:
        target = run["settings"]["target_budget"]
        at_target = ", ".join(
            f"{key.split('@')[0]} {value:.1f}"
            for key, value in partial["scores"].items()
            if key.endswith(f"@{target}")
        )
        # The metric each search and sweep maximised (None: published before it was recorded, when every search
        # maximised the task's partial credit).
        searched = [
            item.get("search_metric")
            for search in run.get("searches", {}).values()
            for item in [search, *search.get("sweeps", [])]
        ]
        if all(metric in (None, partial["metric"]) for metric in searched):
            about = "the search's partial credit, comparable with its search-set score"
        elif partial["metric"] in searched:
            about = (
                f"the task's partial credit, comparable with the search-set scores in `{partial['metric']}`"
            )
        else:
            about = "the task's partial credit; no search-set score is in this metric"
        lines.append(f"- held-out `{partial['metric']}` ({about}) at {target}: {at_target}")
    lines.append(f"- held-out evaluation of all methods took {run['eval_seconds']:.0f} s")
    if run.get("evolkv_hf_commit"):
        lines.append(f"- measured at commit `{run['evolkv_hf_commit'][:10]}`")
    lines.append(f"- command: `{run['command']}`")
    return "\n".join(lines) + "\n"


def score_label(search: dict[str, Any]) -> str:
    """``score``, or ``score (metric)`` when a search or sweep records the metric it maximised."""
    metric = search.get("search_metric")
    return f"score (`{metric}`)" if metric else "score"


def plot_scores(name: str, run: dict[str, Any], path: Path) -> Path | None:
    """Held-out score against mean budget, one line per method, the full cache dashed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    rows = run["rows"]
    settings = run["settings"]
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for method in sorted({r["method"] for r in rows if isinstance(r["budget"], int)}):
        points = sorted((r["budget"], r["score"]) for r in rows if r["method"] == method)
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    full = [r["score"] for r in rows if not isinstance(r["budget"], int)]
    if full:
        axes.axhline(full[0], color="black", linestyle="--", label="full cache")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("mean KV budget per layer (tokens)")
    axes.set_ylabel(rows[0]["metric"])
    axes.set_title(
        f"{settings['task']}, {settings['context_length']} tokens, searched at {settings['target_budget']}"
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def plot_allocations(name: str, run: dict[str, Any], directory: Path) -> Path | None:
    """Learned budgets per layer for every seed of a run, against the uniform budget."""
    searches = run.get("searches", {})
    if not searches:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.2))
    axes = figure.subplots()
    for label, search in searches.items():
        budgets = search["budgets"]
        axes.plot(range(len(budgets)), budgets, marker="o", markersize=3, label=label)
    target = run["settings"]["target_budget"]
    axes.axhline(target, color="black", linestyle="--", linewidth=1, label=f"uniform {target}")
    axes.set_xlabel("decoder layer")
    axes.set_ylabel("budget (tokens)")
    # The run key on a line of its own, smaller: the long keys of later runs were clipped on one line.
    axes.set_title(f"learned allocations,\n{name}", fontsize=8)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = directory / f"allocations_{name}.png"
    figure.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default=None, help="only this run (a key of summary.json's runs)")
    parser.add_argument("--summary", type=Path, default=ROOT / "summary.json")
    parser.add_argument(
        "--plots", type=Path, default=None, help="write allocation plots (and score plots) here"
    )
    args = parser.parse_args()
    runs = json.loads(args.summary.read_text())["runs"]
    for name, run in runs.items():
        if args.run not in (None, name):
            continue
        print(run_block(name, run))
        if args.plots is not None:
            args.plots.mkdir(parents=True, exist_ok=True)
            plot_allocations(name, run, args.plots)
            plot_scores(name, run, args.plots / f"scores_{name}.png")


if __name__ == "__main__":
    main()
