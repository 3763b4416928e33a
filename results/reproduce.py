"""Reproduce the published results: learned allocations vs the heuristics on held-out samples.

For one task on the demo model (SmolLM2-135M-Instruct):

1. generates ``--search-samples + --eval-samples`` samples; the first ones are the search set, the rest
   the held-out set (disjoint by construction);
2. for each seed, searches an allocation at ``--target-budget`` (EvolKV: group-wise CMA-ES, the task's
   partial-credit metric as f(S), or with ``--fitness exact+partial`` the task's metric plus 0.1 x
   the partial-credit metric) unless ``results/allocations/<name>/`` already holds it, and saves it
   there with its model card (each layer's budget at most ``--max-budget``, default 4 x the target); a search
   stopped part-way continues from its latest checkpoint in
   ``results/runs/<name>/`` when the command is run again; with ``--sweeps N`` each seed's search is
   followed by ``N - 1`` more sweeps over the layer groups, each started from the previous allocation
   (``--sweep-generations``, ``--first-sweep-dtype``, ``--first-sweep-fitness``, ``--earlier-sweep-samples``,
   ``--earlier-sweep-max-budget``),
   and every sweep's allocation is evaluated (with ``--evaluate-earlier-sweeps previous`` only the last two);
3. expands each allocation to the other ``--budgets`` by rescaling (no new search) and evaluates, on the
   held-out samples, the full cache, uniform SnapKV, PyramidKV, StreamingLLM and every EvolKV allocation
   at each budget, with the task's default metric and a 95% bootstrap interval (and, to compare with the
   search-set score, the mean held-out score under the task's partial-credit metric);
4. merges the rows into ``results/summary.json`` and writes a score-vs-budget plot.

The held-out evaluation uses the prefill-once engine (identical answers to ``generate`` with an
``EvolKVCache``; tested), in chunks of ``--chunk`` samples to bound memory, with one prefill of each sample for
every method (StreamingLLM ranks from the SnapKV prefill: ``PrefillOnceEngine.with_policy``).

Usage::

    HF_HUB_OFFLINE=1 python results/reproduce.py --task niah_single --context-length 2048 \\
        --search-samples 30 --eval-samples 200 --target-budget 128 --seeds 0,1 --generations 15
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from tables import plot_scores  # results/tables.py, beside this script

from evolkv_hf import BudgetAllocation
from evolkv_hf.demo import DEMO_MODEL_ID, load_demo_model
from evolkv_hf.evaluation import EvaluationReport
from evolkv_hf.inference import encode_samples
from evolkv_hf.metrics import bootstrap_ci, load_metric, per_sample_scores
from evolkv_hf.search import BudgetSearcher, CacheOptions, PrefillOnceEngine, SearchArguments
from evolkv_hf.search.checkpoint import CheckpointError, latest_checkpoint
from evolkv_hf.tasks import TASKS, load_task, load_task_splits

ROOT = Path(__file__).parent
HEURISTICS = ("uniform", "pyramid", "streaming")
FITNESSES = ("partial", "exact+partial")
PARTIAL_WEIGHT = 0.1
"""The weight of the partial-credit term in ``--fitness exact+partial``: at 0.1 one more exact answer in 30 search
samples adds 3.3 points, as much as a 33-point rise of the mean partial credit (the second edit-similarity sweep
of the needle task raised it by 8), so the partial credit mostly orders schemes that answer the same samples
exactly, and still gives a gradient where the exact metric gives none."""


class ExactPlusPartial:
    """The search metric of ``--fitness exact+partial``: per sample, the task's metric plus ``PARTIAL_WEIGHT`` x
    its partial-credit metric, averaged (a callable ``BudgetSearcher`` metric named after both).

    >>> ExactPlusPartial("niah_single")(["8056020", "8056"], [["8056020"], ["8056020"]])
    {'string_match_all+0.1*edit_sim': 58.63636363636364}
    """

    def __init__(self, task: str) -> None:
        exact, partial = TASKS[task].default_metric, TASKS[task].partial_credit_metric
        self.name = f"{exact}+{PARTIAL_WEIGHT:g}*{partial}"
        # Loaded once: the searcher calls the metric for every candidate.
        self.exact, self.partial = load_metric(exact), load_metric(partial)

    def __call__(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        exact = per_sample_scores(self.exact, predictions, references)
        partial = per_sample_scores(self.partial, predictions, references)
        total = sum(e + PARTIAL_WEIGHT * p for e, p in zip(exact, partial, strict=True))
        return {self.name: total / len(exact)}


def add_protocol_arguments(parser: argparse.ArgumentParser, *, task: str = "niah_single") -> None:
    """The settings that name a search and define its samples (shared with ``penalty_drift.py``)."""
    parser.add_argument("--task", default=task)
    parser.add_argument("--context-length", type=int, default=2048)
    parser.add_argument("--search-samples", type=int, default=30)
    parser.add_argument("--eval-samples", type=int, default=200)
    parser.add_argument("--target-budget", type=int, default=128)
    parser.add_argument(
        "--max-budget",
        type=positive_int,
        default=None,
        help="the largest budget a search may give one layer (SearchArguments.max_budget; default 4 x "
        "--target-budget, every published search before this option): a layer the searches keep at the cap may "
        "need more. The expansion to the other --budgets rescales without a cap",
    )
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument(
        "--generations", type=int, default=15, help="CMA-ES generations per group (the paper: 15)"
    )
    parser.add_argument(
        "--depth-split",
        default="ordered",
        choices=["ordered", "stratified"],
        help="ordered (every published run before the stratified ones): the first --search-samples of one "
        "generation whose needle depths rise with the index, so for the needle tasks and squad the search set "
        "holds only depths 0-0.13 and the held-out set the deeper ones; stratified: load_task_splits, both "
        "sets spread over depths 0-1 (vt has no depth: both give the same samples)",
    )
    parser.add_argument(
        "--fitness",
        default="partial",
        choices=FITNESSES,
        help="the search metric f(S): partial (every published search before the exact+partial ones): the task's "
        "partial-credit metric (niah_single: edit_sim); exact+partial: the task's metric plus "
        f"{PARTIAL_WEIGHT:g} x its partial-credit metric, per sample (names carry __exactfit)",
    )


def search_name(args: argparse.Namespace, seed: int, sweep: int | None = None) -> str:
    """The directory name of one seed's search under ``allocations/`` and ``runs/``.

    The search-set size appears (``__s60``; ``__s30+60`` for a sweep on 60 samples after sweeps on 30, see
    :func:`samples_label`) only when it is not the paper's 30, so the published names stay;
    so do the sweeps (``__g15x2``: a second sweep over the groups, started from the first's allocation;
    ``__g15+8``: one of 8 generations per group, see :func:`sweeps_label`) only after the first, the sweep's
    fitness (``__exactfit``) only when it is not ``partial``, the sweeps' largest per-layer budgets
    (``__cap2048``, ``__cap512+2048``; :func:`cap_label`) only when one is not the default ``4 x --target-budget``
    and the sweep's dtype (``__float32``, before
    ``__seed<n>``) only when it is not bfloat16. The name of a later sweep does not say which dtype or fitness
    the earlier ones ran with: their allocations' provenance does (a reused sweep whose ``initial_allocation``
    differs is refused). ``sweep`` defaults to the run's last, ``--sweeps``.
    """
    sweep = getattr(args, "sweeps", 1) if sweep is None else sweep
    samples = samples_label(args, sweep)
    samples = "" if samples == "30" else f"__s{samples}"
    split = "__stratified" if args.depth_split == "stratified" else ""
    fitness = fitness_label(sweep_fitness(args, sweep))
    dtype = "" if sweep_dtype(args, sweep) == "bfloat16" else f"__{sweep_dtype(args, sweep)}"
    return (
        f"{args.task}__c{args.target_budget}__{args.constraint}__g{sweeps_label(args, sweep)}{samples}{split}"
        f"{fitness}{cap_label(args, sweep)}{dtype}__seed{seed}"
    )


def sweeps_label(args: argparse.Namespace, sweep: int) -> str:
    """Generations per group and sweeps in a name: ``15`` (one sweep), ``15x2`` (two of 15), ``15+8`` (15, then
    8 per group: ``--sweep-generations``) or ``15+8x2`` (15, then two sweeps of 8)."""
    later = sweep_generations(args)
    if sweep == 1:
        return f"{args.generations}"
    if later == args.generations:
        return f"{args.generations}x{sweep}"
    return f"{args.generations}+{later}" + ("" if sweep == 2 else f"x{sweep - 1}")


def sweep_generations(args: argparse.Namespace) -> int:
    """CMA-ES generations per group of the sweeps after the first (default: ``--generations``)."""
    return getattr(args, "sweep_generations", None) or args.generations


def sweep_sizes(text: str) -> int | str:
    """An argparse type for ``--earlier-sweep-samples``: one size (an ``int``, as every published run recorded it)
    or one per sweep before the last, comma-separated (kept as the normalised text, e.g. ``"30,30,60"``)."""
    sizes = [positive_int(part) for part in str(text).split(",")]
    return sizes[0] if len(sizes) == 1 else ",".join(map(str, sizes))


def earlier_sweep_sizes(args: argparse.Namespace) -> list[int] | None:
    """``--earlier-sweep-samples`` as a list: one size for every sweep before the last, or one per such sweep."""
    earlier = getattr(args, "earlier_sweep_samples", None)
    return None if earlier is None else [int(part) for part in str(earlier).split(",")]


def sweep_samples(args: argparse.Namespace, sweep: int) -> int:
    """The search-set size of sweep ``sweep``: ``--earlier-sweep-samples`` for the sweeps before the last (one
    size for all, or one per sweep; default ``--search-samples``), else ``--search-samples``.

    The smaller set holds the same rows as the start of the larger one (a sample depends only on its row and
    its depth: the same needles and haystacks, which tasks with depths place at other depths in a set of
    another size), so the held-out rows, from ``--search-samples`` on, are in neither."""
    sizes = earlier_sweep_sizes(args)
    if sizes is None or sweep >= getattr(args, "sweeps", 1):
        return args.search_samples
    return sizes[0] if len(sizes) == 1 else sizes[sweep - 1]


def samples_label(args: argparse.Namespace, sweep: int) -> str:
    """The search-set sizes of sweeps ``1 .. sweep`` in names and run keys: ``60`` when every one searched 60
    samples, ``30+60`` for a sweep on 60 after sweeps on 30 (``--earlier-sweep-samples``), so that such a run
    is not named as one that searched 60 samples in every sweep, and every size (``30+30+60+60``) when the
    sweeps before this one differ among themselves. A label names one sequence of sizes only."""
    return sweeps_values_label([sweep_samples(args, k) for k in range(1, sweep + 1)])


def sweeps_values_label(values: list[int]) -> str:
    """One setting of sweeps ``1 .. n`` in a name (shared by the search-set sizes and the caps): ``60`` when every
    sweep had 60, ``30+60`` when the last had 60 after sweeps that all had 30, else every value (``30+30+60+60``).
    Each label names one sequence of values only.

    >>> sweeps_values_label([30, 30, 60]), sweeps_values_label([30, 60, 60])
    ('30+60', '30+60+60')
    """
    if len(set(values)) == 1:
        return f"{values[-1]}"
    if len(set(values[:-1])) == 1:
        return f"{values[0]}+{values[-1]}"
    return "+".join(map(str, values))


def sweep_dtype(args: argparse.Namespace, sweep: int) -> str:
    """The dtype sweep ``sweep`` searches in: ``--first-sweep-dtype`` for the first (default ``--dtype``), else
    ``--dtype``. Names of searches in float32 carry ``__float32`` (every published search before was bfloat16)."""
    first = getattr(args, "first_sweep_dtype", None)
    return first if sweep == 1 and first else getattr(args, "dtype", "bfloat16")


def sweep_fitness(args: argparse.Namespace, sweep: int) -> str:
    """The fitness sweep ``sweep`` maximises: ``--first-sweep-fitness`` for the first (default ``--fitness``),
    else ``--fitness``. Names of searches with ``exact+partial`` carry ``__exactfit``."""
    first = getattr(args, "first_sweep_fitness", None)
    return first if sweep == 1 and first else getattr(args, "fitness", "partial")


def default_max_budget(args: argparse.Namespace) -> int:
    """``SearchArguments``' default largest per-layer budget, ``4 x --target-budget`` (every published search
    before ``--max-budget``)."""
    return math.ceil(4 * args.target_budget)


def sweep_max_budget(args: argparse.Namespace, sweep: int) -> int:
    """The largest per-layer budget sweep ``sweep`` may give a layer: ``--earlier-sweep-max-budget`` for every
    sweep before the last (default ``--max-budget``), else ``--max-budget`` (default ``4 x --target-budget``)."""
    last = getattr(args, "max_budget", None) or default_max_budget(args)
    earlier = getattr(args, "earlier_sweep_max_budget", None)
    return earlier if earlier is not None and sweep < getattr(args, "sweeps", 1) else last


def cap_label(args: argparse.Namespace, sweep: int) -> str:
    """The largest per-layer budgets of sweeps ``1 .. sweep`` in names and run keys, like :func:`samples_label`:
    nothing when every one had the default ``4 x --target-budget`` (every published name stays), ``__cap2048``
    when every one had 2048, ``__cap512+2048`` for a sweep capped at 2048 after sweeps at 512
    (``--earlier-sweep-max-budget``), and every cap (``__cap512+1024+2048``) when the earlier ones differ among
    themselves. A label names one sequence of caps only."""
    caps = [sweep_max_budget(args, k) for k in range(1, sweep + 1)]
    return "" if set(caps) == {default_max_budget(args)} else f"__cap{sweeps_values_label(caps)}"


def fitness_label(fitness: str) -> str:
    """A fitness in names and run keys: nothing for ``partial`` (every published name stays), else ``__exactfit``."""
    return "" if fitness == "partial" else "__exactfit"


def search_metric(args: argparse.Namespace, sweep: int) -> Any:
    """The metric sweep ``sweep`` maximises (a name, or an :class:`ExactPlusPartial`)."""
    if sweep_fitness(args, sweep) == "exact+partial":
        return ExactPlusPartial(args.task)
    return TASKS[args.task].partial_credit_metric


def metric_key(metric: Any) -> str:
    """The name a search with ``metric`` records as its allocation's ``metric_name``."""
    return metric if isinstance(metric, str) else metric.name


def read_search_log(log: Path) -> list[dict[str, Any]]:
    """The records of a search log (``results/runs/<name>/search_log.jsonl``); a missing log is an error that
    says how to make it (shared with ``penalty_drift.py`` and ``fitness_proxy.py``)."""
    if not log.is_file():
        raise SystemExit(f"{log} does not exist: run results/reproduce.py with the same settings first.")
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def best_distinct(rows: list[dict[str, Any]], top: int, key: str) -> list[dict[str, Any]]:
    """The ``top`` rows of a search log with distinct ``budgets``, highest ``key`` first (shared with
    ``penalty_drift.py`` and ``fitness_proxy.py``)."""
    ordered = sorted(rows, key=lambda row: -row[key])
    picked: list[dict[str, Any]] = []
    seen: set[tuple[int, ...]] = set()
    for row in ordered:
        budgets = tuple(row["budgets"])
        if budgets not in seen:
            seen.add(budgets)
            picked.append(row)
        if len(picked) == top:
            break
    return picked


def split_samples(args: argparse.Namespace, tokenizer: Any) -> tuple[Any, Any]:
    """The search set (the first ``--search-samples``) and the held-out set (the next ``--eval-samples``)."""
    if args.depth_split == "stratified":
        splits = load_task_splits(
            args.task, tokenizer, args.context_length, args.search_samples, args.eval_samples
        )
        return splits["search"], splits["held_out"]
    total = args.search_samples + args.eval_samples
    data = load_task(args.task, tokenizer, args.context_length, total, seed=0)
    return data.select(range(args.search_samples)), data.select(range(args.search_samples, total))


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_protocol_arguments(parser)
    parser.add_argument("--population", type=int, default=10)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--constraint", default="penalty", choices=["penalty", "project"])
    add_sweep_arguments(parser)
    parser.add_argument("--budgets", default="128,256,512")
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument(
        "--evaluate-earlier-sweeps",
        default="all",
        choices=["all", "previous"],
        help="with --sweeps 3 or more, which earlier sweeps' allocations are evaluated beside the last one: all "
        "(every published run), or previous, only the one the last sweep started from (each sweep left out saves "
        "the evaluation of every seed at every budget)",
    )
    parser.add_argument(
        "--search-only",
        action="store_true",
        help="search (or finish) each seed's allocation, then stop before the held-out evaluation; a later run "
        "without it reuses the saved allocations. To search the seeds in parallel, one process per seed "
        "(--seeds 0, --seeds 1) with OMP_NUM_THREADS=1",
    )
    args = parser.parse_args(argv)
    check_sweep_arguments(parser, args)
    if args.evaluate_earlier_sweeps == "previous" and args.sweeps < 3:
        parser.error(
            "--evaluate-earlier-sweeps previous leaves out sweeps before the previous one: give --sweeps 3 or more"
        )
    return args


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sweeps``, ``--sweep-generations``, ``--first-sweep-dtype``, ``--earlier-sweep-samples``,
    ``--earlier-sweep-max-budget`` and ``--first-sweep-fitness``, which name a run's sweeps (shared with ``fitness_proxy.py``); check them with
    :func:`check_sweep_arguments` after parsing."""
    parser.add_argument(
        "--sweeps",
        type=positive_int,
        default=1,
        help="sweeps over the layer groups: each sweep after the first is a new search of --sweep-generations "
        "(default --generations) per group started from the previous sweep's allocation "
        "(SearchArguments.initial_allocation); reproduce.py evaluates every sweep's allocation (see "
        "--evaluate-earlier-sweeps)",
    )
    parser.add_argument(
        "--sweep-generations",
        type=positive_int,
        default=None,
        help="CMA-ES generations per group of the sweeps after the first (default: --generations); needs "
        "--sweeps 2 or more",
    )
    parser.add_argument(
        "--first-sweep-dtype",
        default=None,
        choices=["bfloat16", "float32"],
        help="the dtype of the first sweep, which must then already be in allocations/ (default: --dtype): to "
        "continue a published bfloat16 search with a second sweep in float32, on a CPU without native bfloat16",
    )
    parser.add_argument(
        "--earlier-sweep-samples",
        type=sweep_sizes,
        default=None,
        help="the search-set size of every sweep before the last, which must then already be in allocations/ "
        "(default: --search-samples): to continue a published 30-sample search with a last sweep on more "
        "samples; or one size per sweep before the last, comma-separated (30,30,60: a fourth sweep after the "
        "published 60-sample third one); at most --search-samples, so that no earlier sweep's sample is held out",
    )
    parser.add_argument(
        "--earlier-sweep-max-budget",
        type=positive_int,
        default=None,
        help="the largest per-layer budget of every sweep before the last (default: --max-budget): to continue "
        "a published search with a last sweep that may give a layer more",
    )
    parser.add_argument(
        "--first-sweep-fitness",
        default=None,
        choices=FITNESSES,
        help="the fitness of the first sweep (default: --fitness): to continue a published search with later "
        "sweeps of another fitness",
    )


def check_sweep_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse sweep options that would be ignored or mislead (a cap below the target, earlier search sets larger than
    ``--search-samples`` or not one per earlier sweep), and an ``exact+partial`` fitness that would add a metric to
    itself. A list of equal ``--earlier-sweep-samples`` sizes becomes the one size (the same run, one command)."""
    if args.sweep_generations is not None and args.sweeps == 1:
        parser.error("--sweep-generations sets the sweeps after the first: give --sweeps 2 or more")
    if args.earlier_sweep_samples is not None and args.sweeps == 1:
        parser.error("--earlier-sweep-samples sets the sweeps before the last: give --sweeps 2 or more")
    sizes = earlier_sweep_sizes(args) or []
    if len(sizes) > 1 and len(sizes) != args.sweeps - 1:
        parser.error(
            f"--earlier-sweep-samples {args.earlier_sweep_samples} gives {len(sizes)} sizes, but --sweeps "
            f"{args.sweeps} has {args.sweeps - 1} before the last: give one size for all of them, or one per sweep"
        )
    if len(set(sizes)) == 1:
        args.earlier_sweep_samples = sizes[0]
    for size in sizes:
        if size > args.search_samples:
            # The held-out samples are the rows after --search-samples: rows an earlier sweep searched on would be
            # among them.
            parser.error(
                f"--earlier-sweep-samples: {size} is more than --search-samples {args.search_samples}: the "
                "earlier sweeps' extra samples would be held out"
            )
    if args.earlier_sweep_max_budget is not None and args.sweeps == 1:
        parser.error("--earlier-sweep-max-budget sets the sweeps before the last: give --sweeps 2 or more")
    for option, cap in (
        ("--max-budget", args.max_budget),
        ("--earlier-sweep-max-budget", args.earlier_sweep_max_budget),
    ):
        if cap is not None and cap < args.target_budget:
            parser.error(
                f"{option} {cap} is below --target-budget {args.target_budget}: no allocation could reach the "
                "target mean"
            )
    if args.first_sweep_fitness is not None and args.sweeps == 1:
        parser.error(
            "--first-sweep-fitness differs from --fitness only with later sweeps: give --sweeps 2 or more"
        )
    if args.first_sweep_fitness == "exact+partial" and args.fitness == "partial":
        # The run key and the later sweeps' names carry the last sweep's fitness only: such a run would be
        # published under the key of an all-partial run.
        parser.error(
            "--first-sweep-fitness exact+partial with --fitness partial is not supported: the run would be named "
            "as an all-partial one"
        )
    task = TASKS.get(args.task)
    for option, fitness in (("--fitness", args.fitness), ("--first-sweep-fitness", args.first_sweep_fitness)):
        if (
            fitness == "exact+partial"
            and task is not None
            and task.default_metric == task.partial_credit_metric
        ):
            parser.error(
                f"{option} exact+partial: {args.task}'s metric {task.default_metric} is its partial-credit "
                f"metric too, so the sum would only double it; use {option} partial"
            )


def search(
    args: argparse.Namespace, model: Any, tokenizer: Any, train: Any, seed: int
) -> tuple[BudgetAllocation, float]:
    """One seed's allocation after ``--sweeps`` sweeps, and the summed search time of all of them."""
    total = 0.0
    previous: str | None = None
    for sweep in range(1, args.sweeps + 1):
        allocation, seconds = search_sweep(args, model, tokenizer, train, seed, sweep, previous)
        total += seconds
        previous = search_name(args, seed, sweep)
    return allocation, total


def search_sweep(
    args: argparse.Namespace,
    model: Any,
    tokenizer: Any,
    train: Any,
    seed: int,
    sweep: int,
    initial: str | None,
) -> tuple[BudgetAllocation, float]:
    """One sweep of one seed's search (reused when ``allocations/`` holds it), started from the allocation
    ``allocations/<initial>`` (recorded as ``results/allocations/<initial>``, not as this machine's path)."""
    name = search_name(args, seed, sweep)
    directory = ROOT / "allocations" / name
    origin = {"initial_allocation": f"results/allocations/{initial}"} if initial is not None else {}
    if (directory / "allocation.json").is_file():
        allocation = BudgetAllocation.from_pretrained(directory)
        # The directory name does not carry every setting: reuse it only when its provenance matches.
        wanted = {
            "search_num_samples": sweep_samples(args, sweep),
            "search_population_size": args.population,
            "search_group_size": args.group_size,
            "context_length": args.context_length,
            "depth_split": args.depth_split,
            **held_out_size(args),
            **origin,
            "dtype": sweep_dtype(args, sweep),
            "metric": metric_key(search_metric(args, sweep)),
            "max_budget": sweep_max_budget(args, sweep),
        }
        saved = {
            "search_num_samples": allocation.search_num_samples,
            "search_population_size": allocation.search_population_size,
            "search_group_size": allocation.search_group_size,
            "context_length": allocation.extra.get("context_length"),
            "depth_split": allocation.extra.get("depth_split", "ordered"),
            **({"eval_samples": allocation.extra.get("eval_samples", 200)} if held_out_size(args) else {}),
            **(
                {"initial_allocation": allocation.extra.get("initial_allocation")}
                if initial is not None
                else {}
            ),
            # Every published search before the dtype was recorded ran in bfloat16.
            "dtype": allocation.extra.get("dtype", "bfloat16"),
            "metric": allocation.metric_name,
            # Every published search before the largest budget was recorded had the default one.
            "max_budget": allocation.extra.get("max_budget", default_max_budget(args)),
        }
        if saved != wanted:
            raise SystemExit(
                f"{directory} holds an allocation searched with {saved}, not {wanted}; move it aside to search "
                "again with these settings."
            )
        return allocation, float(allocation.extra.get("search_seconds", float("nan")))
    if sweep_samples(args, sweep) != args.search_samples:
        raise SystemExit(
            f"{directory} holds no allocation: sweep {sweep} would be searched on {sweep_samples(args, sweep)} "
            f"samples (--earlier-sweep-samples) but this run's search set has {args.search_samples} "
            f"(--search-samples). Search it first with --search-samples {sweep_samples(args, sweep)} --sweeps {sweep} "
            "(and --earlier-sweep-samples for the sweeps before it, if they searched fewer), or leave out "
            "--earlier-sweep-samples."
        )
    if sweep_dtype(args, sweep) != args.dtype:
        raise SystemExit(
            f"{directory} holds no allocation: sweep {sweep} would be searched in {sweep_dtype(args, sweep)} "
            f"(--first-sweep-dtype) with a model loaded in {args.dtype} (--dtype). Search it first with "
            f"--dtype {sweep_dtype(args, sweep)}, or leave out --first-sweep-dtype."
        )
    output_dir = ROOT / "runs" / name
    # A search stopped part-way (killed, out of time) continues from its latest checkpoint: its progress is
    # never thrown away. The searcher refuses the resume if the checkpoint was written with other search
    # arguments, samples, model, dtype or metric.
    resume = latest_checkpoint(output_dir) is not None
    search_args = SearchArguments(
        output_dir=str(output_dir),
        target_budget=args.target_budget,
        group_size=args.group_size,
        population_size=args.population,
        generations_per_group=args.generations if sweep == 1 else sweep_generations(args),
        constraint=args.constraint,
        max_budget=sweep_max_budget(args, sweep),
        seed=seed,
        eval_batch_size=args.batch_size,
        save_total_limit=1,
        overwrite_output_dir=not resume,
        initial_allocation=str(ROOT / "allocations" / initial) if initial is not None else None,
    )
    metric = search_metric(args, sweep)
    start = time.perf_counter()
    searcher = BudgetSearcher(model, search_args, train, processing_class=tokenizer, metric=metric)
    if resume:
        print(
            f"Resuming the search in {output_dir} from its latest checkpoint (move the directory aside to restart)."
        )
    try:
        result = searcher.search(resume_from_checkpoint=True if resume else None)
    except (ValueError, CheckpointError) as error:
        # Only the searcher's refusals of the checkpoint: any other error keeps its traceback.
        if not resume or not (isinstance(error, CheckpointError) or str(error).startswith("Cannot resume")):
            raise
        raise SystemExit(
            f"{error}\nTo search again from scratch with these settings, move {output_dir} aside."
        ) from error
    seconds = time.perf_counter() - start
    if resume:
        # The wall time before the interruption is not recorded: report the time spent scoring schemes over the
        # whole search (every evaluation logs its own duration), which is what the search time is made of.
        seconds = evaluation_seconds(output_dir / "search_log.jsonl", default=seconds)
    allocation = dataclasses.replace(
        result.allocation,
        base_model=DEMO_MODEL_ID,
        extra={
            **result.allocation.extra,
            **origin,
            "dtype": sweep_dtype(args, sweep),
            "max_budget": sweep_max_budget(args, sweep),
            "search_seconds": round(seconds, 1),
            "context_length": args.context_length,
            "depth_split": args.depth_split,
            **held_out_size(args),
            **({"search_resumed": True} if resume else {}),
        },
    )
    allocation.save_pretrained(directory, overwrite=True)
    return allocation, seconds


def evaluated_earlier_sweeps(args: argparse.Namespace) -> list[int]:
    """The earlier sweeps whose allocations the held-out evaluation scores beside the last one's: every one, or
    with ``--evaluate-earlier-sweeps previous`` only the one the last sweep started from."""
    if getattr(args, "evaluate_earlier_sweeps", "all") == "previous":
        return [args.sweeps - 1] if args.sweeps > 1 else []
    return list(range(1, args.sweeps))


def published_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments that define a published run (its ``settings`` and ``command``): all but ``--search-only``,
    which only decides whether this invocation stops before the evaluation, and options left unset (``None``:
    ``--sweep-generations None`` would not parse)."""
    return {name: value for name, value in vars(args).items() if name != "search_only" and value is not None}


def published_run(run: str) -> dict[str, Any]:
    """Run ``run`` of ``results/summary.json``; an unknown key is refused with the published ones (shared with
    ``heldout_draws.py`` and ``cap_probe.py``)."""
    runs = json.loads((ROOT / "summary.json").read_text())["runs"]
    if run not in runs:
        raise SystemExit(f"{run} is not a run of results/summary.json; runs: {sorted(runs)}")
    return runs[run]


def published_arguments(published: dict[str, Any]) -> argparse.Namespace:
    """The arguments of a run published in ``summary.json``: the defaults updated with its ``settings`` (a run
    published before the depth split was recorded used ``--depth-split ordered``)."""
    args = parse_args([])
    vars(args).update({"depth_split": "ordered", **published["settings"]})
    return args


def held_out_size(args: argparse.Namespace) -> dict[str, int]:
    """``{"eval_samples": n}`` when the held-out size changes the search set, else ``{}``.

    With ``--depth-split ordered`` the needle depths of a task with depths are spread over all
    ``--search-samples + --eval-samples`` samples, so another held-out size gives the search other samples.
    """
    if args.depth_split == "ordered" and "depths" in TASKS[args.task].options:
        return {"eval_samples": args.eval_samples}
    return {}


def evaluation_seconds(log: Path, default: float) -> float:
    """The summed duration of the scheme evaluations in a search log (cached re-scores took no time).

    ``default`` when the log is missing."""
    if not log.is_file():
        return default
    total = 0.0
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") in ("baseline", "candidate") and not record.get("cached"):
            total += float(record.get("seconds", 0.0))
    return total


def evaluate(
    args: argparse.Namespace,
    model: Any,
    tokenizer: Any,
    held_out: Any,
    methods: dict[str, dict[int, list[int]]],
) -> tuple[dict[tuple[str, int], list[float]], dict[tuple[str, int], list[float]]]:
    """Per-sample scores of every method at every budget (full cache under budget 0): with the task's metric,
    and with its partial-credit metric (to compare with the search-set score of a ``--fitness partial`` search)."""
    metric = TASKS[args.task].default_metric
    partial_metric = TASKS[args.task].partial_credit_metric
    scores: dict[tuple[str, int], list[float]] = {}
    partial: dict[tuple[str, int], list[float]] = {}
    if not methods:
        return scores, partial
    samples = encode_samples(held_out, tokenizer)
    references = [list(a) for a in held_out["answers"]]
    layers = model.config.num_hidden_layers
    # One prefill per sample serves every policy: StreamingLLM's ranking is recomputed from a SnapKV prefill.
    policy_of = {method: "streaming" if method == "streaming" else "snapkv" for method in methods}
    prefill_policy = "snapkv" if "snapkv" in policy_of.values() else "streaming"
    for start in range(0, len(samples), args.chunk):
        chunk, refs = samples[start : start + args.chunk], references[start : start + args.chunk]
        longest = max(len(s.prompt_ids) for s in chunk)
        prefilled = PrefillOnceEngine(
            model, tokenizer, chunk, CacheOptions(policy=prefill_policy), batch_size=args.batch_size
        )
        engines = {policy: prefilled.with_policy(policy) for policy in sorted(set(policy_of.values()))}
        for method, per_budget in methods.items():
            for budget, budgets in per_budget.items():
                if method == "full":
                    budgets = [longest] * layers
                answers = engines[policy_of[method]].answers(budgets)
                scores.setdefault((method, budget), []).extend(per_sample_scores(metric, answers, refs))
                partial.setdefault((method, budget), []).extend(
                    per_sample_scores(partial_metric, answers, refs)
                )
        del prefilled, engines  # no other reference: the chunk's prefills are freed before the next one
        print(
            f"  evaluated {min(start + args.chunk, len(samples))}/{len(samples)} held-out samples", flush=True
        )
    return scores, partial


def sample_key(method: str, budget: int) -> str:
    """A method at a budget as in ``summary.json``'s ``per_sample`` (``full@full`` for the full cache, budget 0)."""
    return f"{method}@{budget or 'full'}"


def baseline_methods(
    layers: int, budgets: list[int], names: tuple[str, ...] = ("full", *HEURISTICS)
) -> dict[str, dict[int, list[int]]]:
    """The per-layer budgets of the full cache (under budget 0, resolved by :func:`evaluate`) and of the heuristics
    ``names`` at each budget: :func:`evaluate`'s ``methods`` before the learned allocations are added."""
    methods: dict[str, dict[int, list[int]]] = {"full": {0: []}} if "full" in names else {}
    for budget in budgets:
        for name in names:
            if name in ("uniform", "streaming"):  # StreamingLLM: the same budgets under another policy
                methods.setdefault(name, {})[budget] = BudgetAllocation.uniform(layers, budget).budgets
            elif name == "pyramid":
                methods.setdefault(name, {})[budget] = BudgetAllocation.pyramid(layers, budget).budgets
            elif name != "full":
                raise ValueError(f"unknown method {name!r}: expected full or one of {', '.join(HEURISTICS)}")
    return methods


def check_published_run(args: argparse.Namespace, summary_path: Path) -> None:
    """Refuse to rerun a published run with another ``--evaluate-earlier-sweeps``: the run key does not carry it,
    so the new entry would replace the published one and drop (or add) its earlier sweeps' rows."""
    if not summary_path.is_file():
        return
    published = json.loads(summary_path.read_text())["runs"].get(run_key(args))
    if published is None:
        return
    before = published["settings"].get("evaluate_earlier_sweeps", "all")
    if before != args.evaluate_earlier_sweeps:
        raise SystemExit(
            f"{summary_path} holds run {run_key(args)} evaluated with --evaluate-earlier-sweeps {before}; this "
            f"rerun with {args.evaluate_earlier_sweeps} would replace it with other rows. Rerun with "
            f"--evaluate-earlier-sweeps {before}."
        )


def main() -> None:
    args = parse_args()
    check_published_run(args, ROOT / "summary.json")
    model, tokenizer = load_demo_model(dtype=getattr(torch, args.dtype))
    layers = model.config.num_hidden_layers
    train, held_out = split_samples(args, tokenizer)
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    methods = baseline_methods(layers, budgets)
    search_info: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        print(f"search seed {seed}", flush=True)
        allocation, seconds = search(args, model, tokenizer, train, seed)
        name = f"evolkv_seed{seed}"
        search_info[name] = {
            "budgets": allocation.budgets,
            "search_seconds": round(seconds, 1),
            "search_score": allocation.metric_value,
            "search_metric": allocation.metric_name,
            **({"search_resumed": True} if allocation.extra.get("search_resumed") else {}),
        }
        for budget in budgets:
            methods.setdefault(name, {})[budget] = allocation.rescale(budget).budgets
        if args.sweeps > 1:
            # The earlier sweeps (the last one is ``allocation``), each saved by search_sweep.
            earlier = [
                BudgetAllocation.from_pretrained(ROOT / "allocations" / search_name(args, seed, sweep))
                for sweep in range(1, args.sweeps)
            ]
            # The sweeps may have run on different machines and dtypes: each one's time.
            search_info[name]["sweeps"] = [
                {
                    "search_seconds": swept.extra.get("search_seconds"),
                    "dtype": swept.extra.get("dtype", "bfloat16"),
                    "search_score": swept.metric_value,
                    "search_metric": swept.metric_name,
                    # Sweeps on other search sets (--earlier-sweep-samples) have search-set scores on other samples.
                    "search_samples": swept.search_num_samples,
                    "max_budget": swept.extra.get("max_budget", default_max_budget(args)),
                    **({"search_resumed": True} if swept.extra.get("search_resumed") else {}),
                }
                for swept in [*earlier, allocation]
            ]
            # Each earlier sweep's allocation is scored beside the last one, so the table shows what the later
            # sweeps added (in this run's dtype, on the same held-out samples); with --evaluate-earlier-sweeps
            # previous only the one the last sweep started from.
            for sweep in evaluated_earlier_sweeps(args):
                for budget in budgets:
                    methods.setdefault(f"{name}_sweep{sweep}", {})[budget] = (
                        earlier[sweep - 1].rescale(budget).budgets
                    )

    if args.search_only:
        for name, info in search_info.items():
            print(
                f"{name}: searched in {info['search_seconds']} s, search-set score {info['search_score']:.2f}"
            )
        print("--search-only: no held-out evaluation; run again without it to evaluate and publish.")
        return
    start = time.perf_counter()
    scores, partial = evaluate(args, model, tokenizer, held_out, methods)
    eval_seconds = time.perf_counter() - start
    metric = TASKS[args.task].default_metric
    rows = []
    for (method, budget), values in sorted(scores.items()):
        low, high = bootstrap_ci(values, seed=0)
        rows.append(
            {
                "task": args.task,
                "context_length": args.context_length,
                "method": method,
                "budget": budget if budget else "full",
                "metric": metric,
                "score": round(sum(values) / len(values), 2),
                "ci_low": round(low, 2),
                "ci_high": round(high, 2),
                "n": len(values),
            }
        )
        print(f"{method:16} {budget or 'full':>5}: {rows[-1]['score']:6.1f} [{low:5.1f}, {high:5.1f}]")
    learned = [method for method in methods if method.startswith("evolkv_")]
    comparisons = paired_comparisons(scores, budgets, learned)
    for item in comparisons:
        print(
            f"{item['method']} - {item['baseline']} at {item['budget']}: {item['difference']:+.1f} "
            f"[{item['ci_low']:+.1f}, {item['ci_high']:+.1f}] (paired, same samples)"
        )

    summary_path = ROOT / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"runs": {}}
    run_name = run_key(args)
    settings = published_settings(args)
    summary["runs"][run_name] = {
        "rows": rows,
        "paired": comparisons,
        # Per-sample scores, in held-out order, so that other comparisons can be computed later.
        "per_sample": {
            sample_key(method, budget): values for (method, budget), values in sorted(scores.items())
        },
        # The mean held-out score under the task's partial-credit metric (the search-set score of a search that
        # maximised it is in "searches"): how much of the search-set gain carries to unseen samples.
        "partial_credit": {
            "metric": TASKS[args.task].partial_credit_metric,
            "scores": {
                sample_key(method, budget): round(sum(values) / len(values), 2)
                for (method, budget), values in sorted(partial.items())
            },
        },
        "searches": search_info,
        "settings": settings,
        "eval_seconds": round(eval_seconds, 1),
        "model": DEMO_MODEL_ID,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "evolkv_hf_commit": git_commit(),
        "machine": platform.platform(),
        "command": "python results/reproduce.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items()),
    }
    summary_path.write_text(summary_text(summary))
    plot_scores(run_name, summary["runs"][run_name], ROOT / f"{run_name}__scores.png")
    print(f"wrote {summary_path}")


def summary_text(summary: dict[str, Any]) -> str:
    """``summary.json``'s text: indented, with each list of numbers on one line (budgets, per-sample scores)."""
    text = json.dumps(summary, indent=2)
    return (
        re.sub(
            r"\[\s+([-+0-9.eE,\s]+?)\s+\]", lambda match: "[" + " ".join(match.group(1).split()) + "]", text
        )
        + "\n"
    )


def paired_comparisons(
    scores: dict[tuple[str, int], list[float]], budgets: list[int], learned: list[str]
) -> list[dict[str, Any]]:
    """Each learned allocation minus the better of uniform SnapKV and PyramidKV at each budget.

    The project's goal compares with these two (StreamingLLM, a different policy, is not counted).

    The difference of the means with a 95% bootstrap interval of the per-sample differences: both methods
    answered the same held-out samples, so resampling the samples together (a paired bootstrap) removes the
    spread that comes from which samples were drawn, which the two separate intervals of the table count
    twice.
    """
    # The full cache (budget 0) is never a baseline here; the rows' own intervals are not needed.
    report = EvaluationReport.from_sample_scores(
        {key: values for key, values in scores.items() if key[1]}, n_bootstrap=0
    )
    comparisons = []
    for budget in budgets:
        heuristics = [
            report.row(method, budget) for method in ("uniform", "pyramid") if (method, budget) in scores
        ]
        if not heuristics:
            continue
        baseline = max(heuristics, key=lambda row: row.score).method
        for method in learned:
            if (method, budget) not in scores:
                continue
            item = report.compare(method, budget, baseline)
            comparisons.append(
                {
                    "method": method,
                    "baseline": baseline,
                    "budget": budget,
                    "difference": round(item.difference, 2),
                    "ci_low": round(item.ci_low, 2),
                    "ci_high": round(item.ci_high, 2),
                }
            )
    return comparisons


def run_key(args: argparse.Namespace) -> str:
    """The run's key in ``summary.json``: task, context length, target, constraint, generations (and sweeps),
    search-set size (``__s30+60`` when the earlier sweeps searched fewer samples, :func:`samples_label`), split,
    held-out size and dtype (population, group size and seeds are in the run's settings).

    The held-out size appears (``__e400``) only when it is not 200, the sweeps (``__g15x2``, ``__g15+8``) only when
    more than one, the fitness of the last sweep (``__exactfit``) only when it is not ``partial``, the sweeps'
    largest per-layer budgets (``__cap2048``, ``__cap512+2048``) only when one is not ``4 x --target-budget`` and
    the dtype
    (``__float32``) only when it is not bfloat16, so the published keys stay.
    """
    return (
        f"{args.task}__{args.context_length}__c{args.target_budget}__{args.constraint}"
        f"__g{sweeps_label(args, getattr(args, 'sweeps', 1))}"
        + f"__s{samples_label(args, getattr(args, 'sweeps', 1))}"
        + ("__stratified" if args.depth_split == "stratified" else "")
        + fitness_label(getattr(args, "fitness", "partial"))
        + cap_label(args, getattr(args, "sweeps", 1))
        + ("" if args.eval_samples == 200 else f"__e{args.eval_samples}")
        + ("" if getattr(args, "dtype", "bfloat16") == "bfloat16" else f"__{args.dtype}")
    )


def git_commit() -> str | None:
    """The commit these results were measured at (``None`` outside a git checkout).

    ``-dirty`` is appended when the package's code differs from that commit.
    """
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "../evolkv_hf"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    commit = head.stdout.strip()
    if not commit:
        return None
    return commit + "-dirty" if changed.stdout.strip() else commit


if __name__ == "__main__":
    main()
