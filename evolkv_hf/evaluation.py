"""Side-by-side evaluation of KV-cache methods on the same samples, at several mean budgets.

:func:`evaluate_methods` answers every sample of a task dataset with the full cache (once) and with each
compressing method at each mean budget (tokens per layer, observation window included), scores the answers
with one metric, and reports the mean score with a bootstrap confidence interval. Results are written as
``<output_dir>/<task>__<model>__<method>__<budget>/{predictions.jsonl, metrics.json, config.json}``
(kvpress's layout); a rerun skips the runs already done with the same configuration.

Methods
-------
``"full"``
    The uncompressed ``transformers.DynamicCache``; run once, reported at every budget.
``"uniform"``
    SnapKV with the same budget in every layer.
``"pyramid"``
    SnapKV with PyramidKV's budgets (:meth:`BudgetAllocation.pyramid`), same mean.
``"streaming"``
    StreamingLLM (sink tokens + recent tokens), same budget in every layer.
a directory, a Hub repo id or a :class:`BudgetAllocation`
    A saved allocation, rescaled to each mean budget with :meth:`BudgetAllocation.rescale`.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._validation import POOLINGS, check_positive_int
from .allocation import BudgetAllocation
from .allocation.hub import atomic_write
from .inference import encode_samples, generate_answers, local_model_path
from .inference import model_name as _model_name
from .versions import package_versions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "BUILTIN_METHODS",
    "HEURISTIC_METHODS",
    "EvaluationReport",
    "EvaluationRow",
    "PairedDifference",
    "evaluate_methods",
    "run_dir_name",
]

BUILTIN_METHODS = ("full", "uniform", "pyramid", "streaming")
"""Method names understood by :func:`evaluate_methods` besides saved allocations."""

HEURISTIC_METHODS = ("uniform", "pyramid", "streaming")
"""The compressing baselines a learned allocation has to beat at equal mean budget."""

FULL_BUDGET = "full"
"""Budget label of the full-cache run (directory names, tables)."""

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
RUN_FILES = (PREDICTIONS_FILE, METRICS_FILE, CONFIG_FILE)
FORMAT_VERSION = 1
CONFIDENCE = 0.95

# config.json keys that do not make two runs different (a rerun after an upgrade still skips).
_VOLATILE_CONFIG_KEYS = ("package_versions", "created_at")


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationRow:
    """One run: a method at one mean budget (``budget is None`` for the full cache).

    Example
    -------
    >>> row = EvaluationRow("uniform", 128, score=41.7, ci_low=30.0, ci_high=53.3, n=24, run_dir=None)
    >>> row.budget_label, row.ci_low <= row.score <= row.ci_high
    ('128', True)
    """

    method: str
    budget: int | None
    score: float
    ci_low: float | None
    ci_high: float | None
    n: int
    run_dir: str | None
    kv_memory_bytes_mean: float | None = None
    elapsed_s: float | None = None
    reused: bool = False
    kind: str | None = None
    """What ran, whatever the label: ``"full"``, ``"uniform"``, ``"pyramid"``, ``"streaming"`` or
    ``"allocation"`` (``None``: as the label says)."""
    sample_scores: tuple[float, ...] | None = field(default=None, repr=False, compare=False)
    """The per-sample scores, in dataset order (what :meth:`EvaluationReport.compare` pairs); ``None`` for a
    row built without them."""

    @property
    def method_kind(self) -> str:
        """:attr:`kind`, or the label for rows built without one."""
        return self.kind or self.method

    @property
    def budget_label(self) -> str:
        """``"full"`` for the full cache, else the budget as a string."""
        return FULL_BUDGET if self.budget is None else str(self.budget)

    def format_score(self) -> str:
        """``"41.7 [30.0, 53.3]"`` (the CI omitted when there is none)."""
        if self.ci_low is None or self.ci_high is None:
            return f"{self.score:.1f}"
        return f"{self.score:.1f} [{self.ci_low:.1f}, {self.ci_high:.1f}]"


@dataclass(frozen=True)
class PairedDifference:
    """One method's mean score minus another's on the same samples, with a paired bootstrap interval.

    Example
    -------
    >>> PairedDifference("evolkv", "uniform", 128, 3.2, 0.9, 5.6, n=200).format()
    'evolkv - uniform at 128: +3.2 [+0.9, +5.6] over 200 paired samples'
    """

    method: str
    baseline: str
    budget: int | None
    difference: float
    ci_low: float
    ci_high: float
    n: int
    confidence: float = CONFIDENCE

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or below 0 (the two methods differ at this confidence)."""
        return self.ci_low > 0 or self.ci_high < 0

    def format(self) -> str:
        """``"a - b at 128: +3.2 [+0.9, +5.6] over 200 paired samples"``."""
        at = "" if self.budget is None else f" at {self.budget}"
        return (
            f"{self.method} - {self.baseline}{at}: {self.difference:+.1f} [{self.ci_low:+.1f}, "
            f"{self.ci_high:+.1f}] over {self.n} paired samples"
        )


@dataclass
class EvaluationReport:
    """Scores of every method at every budget, as returned by :func:`evaluate_methods`.

    Example
    -------
    >>> report = EvaluationReport(
    ...     rows=[
    ...         EvaluationRow("full", None, 90.0, 80.0, 100.0, 10, None),
    ...         EvaluationRow("uniform", 64, 40.0, 20.0, 60.0, 10, None),
    ...         EvaluationRow("pyramid", 64, 50.0, 30.0, 70.0, 10, None),
    ...     ],
    ...     task="needle",
    ...     model_name="tiny",
    ...     metric_name="string_match_all",
    ... )
    >>> report.best_heuristic(64).method
    'pyramid'
    >>> print(report.to_table().splitlines()[3])
    full    | 90.0 [80.0, 100.0]
    """

    rows: list[EvaluationRow]
    task: str
    model_name: str
    metric_name: str
    output_dir: str | None = None
    plot_path: str | None = None
    confidence: float = CONFIDENCE
    extra: dict[str, Any] = field(default_factory=dict)
    n_bootstrap: int = 1000
    """Bootstrap resamples of the rows' intervals (``0``: the rows have none); :meth:`compare` uses them too."""
    seed: int = 0
    """Seed of the rows' bootstrap intervals; :meth:`compare` uses it too."""

    @classmethod
    def from_sample_scores(
        cls,
        scores: Mapping[tuple[str, int | None], Sequence[float]] | Mapping[tuple[str, int], Sequence[float]],
        *,
        task: str = "",
        model_name: str = "",
        metric_name: str = "",
        confidence: float = CONFIDENCE,
        n_bootstrap: int = 1000,
        seed: int = 0,
    ) -> EvaluationReport:
        """A report from per-sample scores computed elsewhere (another tool, a saved run, a pooled set of runs).

        Each ``(method, budget)`` key (``budget`` ``None`` for the full cache) becomes a row with the mean, its
        bootstrap interval (as :func:`evaluate_methods` computes it) and the scores, so :meth:`compare`,
        :meth:`comparisons`, :meth:`to_table` and :meth:`plot` work as on an evaluated report. Every method
        must have scored the same samples, in the same order, for :meth:`compare` to pair them. A method that
        is not ``"full"`` or a heuristic is taken as a learned allocation.

        Example
        -------
        >>> report = EvaluationReport.from_sample_scores(
        ...     {("uniform", 128): [0.0, 100.0, 0.0, 0.0], ("learned", 128): [100.0, 100.0, 0.0, 100.0]}
        ... )
        >>> report.row("learned", 128).score, report.compare("learned", 128).difference
        (75.0, 50.0)

        Raises
        ------
        ValueError
            A method has no scores or a score that is not finite, the full cache has a budget, or another method
            has none.
        """
        rows = []
        for (method, budget), values in scores.items():
            label = "the full cache" if method == "full" else f"{method!r} at budget {budget}"
            if (method == "full") != (budget is None):
                # row() matches a row without a budget at every budget: only the full cache may have none.
                raise ValueError(
                    f"{label}: key the full cache as ('full', None) and every other method with its mean budget."
                )
            values = [float(value) for value in values]
            if not values:
                raise ValueError(f"{label} has no scores: pass at least one per method.")
            if not all(math.isfinite(value) for value in values):
                raise ValueError(
                    f"{label} has a score that is not finite (NaN or infinite): check the metric."
                )
            score, low, high = _mean_and_interval(values, n_bootstrap, confidence, seed)
            kind = method if method in ("full", *HEURISTIC_METHODS) else "allocation"
            rows.append(
                EvaluationRow(
                    method,
                    budget,
                    score,
                    low,
                    high,
                    len(values),
                    None,
                    kind=kind,
                    sample_scores=tuple(values),
                )
            )
        return cls(
            rows=rows,
            task=task,
            model_name=model_name,
            metric_name=metric_name,
            confidence=confidence,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )

    @property
    def methods(self) -> list[str]:
        """Method names in the order they were run."""
        return list(dict.fromkeys(row.method for row in self.rows))

    @property
    def budgets(self) -> list[int]:
        """Mean budgets evaluated, ascending (the full cache excluded)."""
        return sorted({row.budget for row in self.rows if row.budget is not None})

    def row(self, method: str, budget: int | None = None) -> EvaluationRow:
        """The row of ``method`` at ``budget`` (``None`` for ``"full"``); ``KeyError`` if it was not run."""
        for row in self.rows:
            if row.method == method and (row.budget == budget or row.budget is None):
                return row
        raise KeyError(f"No result for method {method!r} at budget {budget!r}.")

    def best_heuristic(self, budget: int) -> EvaluationRow:
        """The best of uniform SnapKV, PyramidKV and StreamingLLM at ``budget`` (the bar an allocation must clear).

        Raises
        ------
        ValueError
            No heuristic method was run at ``budget``.
        """
        candidates = [
            row for row in self.rows if row.method_kind in HEURISTIC_METHODS and row.budget == budget
        ]
        if not candidates:
            raise ValueError(
                f"No heuristic method ({', '.join(HEURISTIC_METHODS)}) was evaluated at budget {budget}; "
                f"budgets evaluated: {self.budgets}."
            )
        return max(candidates, key=lambda row: row.score)

    def compare(
        self,
        method: str,
        budget: int,
        baseline: str | None = None,
        *,
        n_resamples: int | None = None,
        seed: int | None = None,
    ) -> PairedDifference:
        """``method`` minus ``baseline`` at ``budget`` on the same samples, with a paired bootstrap interval.

        Every method answered the same samples, so the per-sample differences are resampled together: the
        interval then leaves out how easy the drawn samples happened to be, which the two separate intervals
        of the table each count. Two methods can differ clearly while their separate intervals overlap.

        Parameters
        ----------
        method:
            A method label in the report.
        budget:
            The mean budget of both rows (the full cache is compared at any budget).
        baseline:
            The method to subtract; default: the best heuristic at ``budget`` (:meth:`best_heuristic`).
        n_resamples, seed:
            Bootstrap resamples and their seed; default: those of the report's own intervals
            (:attr:`n_bootstrap`, or 1,000 when the report was built with ``n_bootstrap=0``, and :attr:`seed`).

        Raises
        ------
        KeyError
            A method was not evaluated at ``budget``.
        ValueError
            No heuristic was evaluated at ``budget`` (with ``baseline=None``), a row has no per-sample scores
            (built by hand, or reloaded from an incomplete run), or the two rows scored different numbers of
            samples.
        """
        from .metrics import bootstrap_ci

        row = self.row(method, budget)
        base = self.best_heuristic(budget) if baseline is None else self.row(baseline, budget)
        paired: list[tuple[float, ...]] = []
        for each in (row, base):
            if each.sample_scores is None:
                raise ValueError(
                    f"The row of {each.method!r} at {each.budget_label} has no per-sample scores, so it cannot be "
                    "paired: it was built by hand, or reloaded from a run whose predictions.jsonl is missing, "
                    "incomplete or edited (rerun that run with overwrite=True)."
                )
            paired.append(each.sample_scores)
        mine, theirs = paired
        if len(mine) != len(theirs):
            raise ValueError(
                f"{row.method!r} scored {len(mine)} samples and {base.method!r} {len(theirs)}: only runs on the "
                "same samples can be paired."
            )
        differences = [a - b for a, b in zip(mine, theirs, strict=True)]
        mean = _mean(differences)
        if n_resamples is None:
            n_resamples = self.n_bootstrap if self.n_bootstrap > 0 else 1000
        low, high = bootstrap_ci(
            differences,
            n_resamples=n_resamples,
            confidence=self.confidence,
            seed=self.seed if seed is None else seed,
        )
        return PairedDifference(
            method=row.method,
            baseline=base.method,
            budget=budget,
            difference=mean,
            ci_low=min(low, mean),
            ci_high=max(high, mean),
            n=len(differences),
            confidence=self.confidence,
        )

    def comparisons(self) -> list[PairedDifference]:
        """Every saved allocation against the best heuristic at each budget (budgets without a heuristic and rows
        without scores skipped: :meth:`compare` raises ``ValueError`` for both)."""
        found = []
        for budget in self.budgets:
            for row in self.rows:
                if row.method_kind == "allocation" and row.budget == budget:
                    try:
                        found.append(self.compare(row.method, budget))
                    except ValueError:
                        continue
        return found

    def to_table(self) -> str:
        """Plain-text table, one line per method and one column per budget: ``score [CI low, CI high]``.

        The full cache does not depend on the budget: its single score is shown once.
        """
        budgets = self.budgets
        header = ["method", *(str(b) for b in budgets)] if budgets else ["method", "score"]
        lines: list[list[str]] = []
        for method in self.methods:
            cells = [method]
            method_rows = [row for row in self.rows if row.method == method]
            if method_rows and method_rows[0].budget is None:
                cells.append(method_rows[0].format_score())
            else:
                by_budget = {row.budget: row for row in method_rows}
                cells.extend(by_budget[b].format_score() if b in by_budget else "-" for b in budgets)
            lines.append(cells)
        widths = [max(len(line[i]) for line in [header, *lines] if i < len(line)) for i in range(len(header))]

        def render(cells: list[str]) -> str:
            return " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells)).rstrip()

        n = max((row.n for row in self.rows), default=0)
        title = (
            f"{self.task} | {self.model_name} | {self.metric_name}: mean over {n} samples "
            f"[{self.confidence:.0%} bootstrap CI]; columns: mean KV budget per layer (tokens)"
        )
        rule = "-+-".join("-" * width for width in widths)
        table = [title, render(header), rule, *(render(line) for line in lines)]
        comparisons = self.comparisons()
        if comparisons:
            table += [
                "",
                f"vs the best heuristic, on the same samples [{self.confidence:.0%} paired bootstrap CI]:",
            ]
            table += [f"  {item.format()}" for item in comparisons]
        return "\n".join(table)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the report."""
        return {
            "task": self.task,
            "model_name": self.model_name,
            "metric_name": self.metric_name,
            "confidence": self.confidence,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "output_dir": self.output_dir,
            "plot_path": self.plot_path,
            "rows": [asdict(row) for row in self.rows],
            **({"extra": self.extra} if self.extra else {}),
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 2) -> str:
        """The report as JSON; also written (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"
        if path is not None:
            atomic_write(Path(path), text.encode("utf-8"))
        return text

    def plot(self, *, title: str | None = None) -> Figure:
        """Score versus mean budget, one line per method with its CI band; the full cache as a horizontal line.

        Uses ``matplotlib.figure.Figure`` directly (no pyplot state). Requires matplotlib.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as err:
            raise ImportError("EvaluationReport.plot() needs matplotlib: `pip install matplotlib`.") from err
        figure = Figure(figsize=(6.4, 4.0), layout="constrained")
        axes = figure.add_subplot()
        for method in self.methods:
            rows = sorted((r for r in self.rows if r.method == method), key=lambda r: r.budget or 0)
            if rows[0].budget is None:
                full = rows[0]
                line = axes.axhline(full.score, color="black", linestyle="--", linewidth=1.2, label=method)
                if full.ci_low is not None and full.ci_high is not None:
                    axes.axhspan(full.ci_low, full.ci_high, color=line.get_color(), alpha=0.08)
                continue
            xs = [float(r.budget or 0) for r in rows]
            (line,) = axes.plot(xs, [r.score for r in rows], marker="o", label=method)
            lows = [r.ci_low for r in rows if r.ci_low is not None]
            highs = [r.ci_high for r in rows if r.ci_high is not None]
            if len(lows) == len(highs) == len(rows):
                axes.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15, linewidth=0)
        values = [v for r in self.rows for v in (r.score, r.ci_low, r.ci_high) if v is not None]
        if values and min(values) >= 0 and max(values) <= 100:  # the built-in metrics' 0-100 scale
            axes.set_ylim(-3, 103)
        budgets = self.budgets
        if len(budgets) > 1 and budgets[-1] / budgets[0] >= 4:
            axes.set_xscale("log", base=2)
        if budgets:
            axes.set_xticks(budgets, [str(b) for b in budgets])
        axes.set_xlabel("mean KV budget per layer (tokens)")
        axes.set_ylabel(f"{self.metric_name} (mean, {self.confidence:.0%} CI)")
        axes.set_title(title or f"{self.task}: {self.model_name}")
        axes.legend(loc="best", frameon=False)
        return figure


# --------------------------------------------------------------------------------------------------
# Method, budget and metric resolution (all before any generation)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Method:
    label: str
    kind: str  # one of BUILTIN_METHODS or "allocation"
    allocation: BudgetAllocation | None = None
    source: str | None = None


@dataclass(frozen=True)
class _Run:
    method: _Method
    budget: int | None
    budgets: list[int] | None  # per layer
    policy: str | None

    @property
    def budget_label(self) -> str:
        return FULL_BUDGET if self.budget is None else str(self.budget)


def sanitize_name(name: str) -> str:
    """A file-name-safe version of ``name``: ``/`` becomes ``--``, other unsafe characters ``_``.

    Example
    -------
    >>> sanitize_name("HuggingFaceTB/SmolLM2-135M-Instruct")
    'HuggingFaceTB--SmolLM2-135M-Instruct'
    """
    name = name.replace("/", "--").replace("\\", "--")
    name = re.sub(r"[^A-Za-z0-9._+=@-]", "_", name).lstrip(".")
    return name or "_"


def run_dir_name(task: str, model_name: str, method: str, budget: int | str | None) -> str:
    """``<task>__<model>__<method>__<budget>`` with every part sanitised (``budget=None`` is ``"full"``).

    Example
    -------
    >>> run_dir_name("needle", "HuggingFaceTB/SmolLM2-135M-Instruct", "uniform", 128)
    'needle__HuggingFaceTB--SmolLM2-135M-Instruct__uniform__128'
    """
    label = FULL_BUDGET if budget is None else str(budget)
    return "__".join(sanitize_name(part) for part in (task, model_name, method, label))


def _valid_methods_text() -> str:
    return (
        f"valid methods: {', '.join(BUILTIN_METHODS)}, or the directory or Hub repo id of a saved "
        "allocation (or a BudgetAllocation object)"
    )


def _load_allocation(source: str) -> BudgetAllocation:
    try:
        return BudgetAllocation.from_pretrained(source)
    except Exception as err:
        raise ValueError(f"Could not load the allocation {source!r}: {err}") from err


_LABELLED_METHOD = re.compile(r"(?P<label>[\w.-]+)=(?P<spec>\S.*)")


def _allocation_label(source: str) -> str:
    path = Path(source)
    return path.resolve().name if path.is_dir() else source


def _resolve_one(spec: Any, label: str | None) -> _Method:
    if isinstance(spec, BudgetAllocation):
        return _Method(label or "allocation", "allocation", spec, None)
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise TypeError(f"A method must be a name, a path/repo id or a BudgetAllocation, got {spec!r}.")
    spec = spec.strip()
    if spec in BUILTIN_METHODS:
        return _Method(label or spec, spec)
    if os.path.isdir(spec) or ("/" in spec and not os.path.exists(spec)):
        return _Method(label or _allocation_label(spec), "allocation", _load_allocation(spec), spec)
    if os.path.exists(spec):
        raise ValueError(f"Method {spec!r} is a file; pass the directory that holds allocation.json.")
    raise ValueError(f"Unknown method {spec!r}; {_valid_methods_text()}.")


def _resolve_methods(methods: Any) -> list[_Method]:
    if isinstance(methods, str):  # "full,uniform,label=path": a label names an allocation, as a mapping does
        items: list[tuple[str | None, Any]] = []
        for part in methods.split(","):
            named = _LABELLED_METHOD.fullmatch(part.strip())
            if named and not os.path.exists(part.strip()):  # a folder may be called "lr=0.1"
                items.append((named["label"], named["spec"]))
            else:
                items.append((None, part))
    elif isinstance(methods, (os.PathLike, BudgetAllocation)):
        items = [(None, methods)]
    elif isinstance(methods, Mapping):
        items = [(str(label), spec) for label, spec in methods.items()]
    elif isinstance(methods, Sequence):
        items = [(None, spec) for spec in methods]
    else:
        raise TypeError(f"methods must be a sequence of method names, got {type(methods).__name__}.")
    items = [(label, spec) for label, spec in items if not (isinstance(spec, str) and not spec.strip())]
    if not items:
        raise ValueError(f"No method to evaluate; {_valid_methods_text()}.")
    resolved: list[_Method] = []
    unnamed_allocations = 0
    for label, spec in items:
        if label is None and isinstance(spec, BudgetAllocation):
            unnamed_allocations += 1
            label = "allocation" if unnamed_allocations == 1 else f"allocation-{unnamed_allocations}"
        resolved.append(_resolve_one(spec, label))
    names = [sanitize_name(method.label) for method in resolved]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"Methods {duplicates} are given more than once (or two allocations share a folder name); name them "
            "with a mapping {label: method}, or as label=path in a comma-separated string (on the command line: "
            "--methods uniform,a=runs/a/allocation,b=runs/b/allocation)."
        )
    return resolved


def _resolve_budgets(budgets: Any) -> list[int]:
    values = [budgets] if isinstance(budgets, numbers.Integral) else budgets
    if isinstance(values, str):
        values = [part for part in values.split(",") if part.strip()]
    if not isinstance(values, Iterable) or isinstance(values, Mapping):  # lists, tuples, numpy arrays, ranges
        raise TypeError(f"budgets must be an int or a sequence of ints, got {type(budgets).__name__}.")
    checked: list[int] = []
    for value in values:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"Budgets must be integers (tokens per layer), got {value!r}.")
        if value < 1:
            raise ValueError(f"Budgets must be at least 1 token per layer, got {value}.")
        if int(value) not in checked:
            checked.append(int(value))
    return checked


def _num_layers(model: Any) -> int:
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"evaluate_methods needs a transformers model, got {type(model).__name__}.")
    text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return int(text_config.num_hidden_layers)


def _as_dataset(dataset: Any) -> Any:
    if isinstance(dataset, (list, tuple)):
        if not dataset:
            raise ValueError("The dataset is empty: nothing to evaluate.")
        from datasets import Dataset

        return Dataset.from_list(list(dataset))
    return dataset


def _check_dataset(dataset: Any) -> None:
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: nothing to evaluate.")
    from .tasks import validate_task_dataset

    validate_task_dataset(dataset)


def _task_name(dataset: Any, task_name: str | None) -> str:
    if task_name:
        return task_name
    if "task" not in dataset.column_names:
        return "custom"
    tasks = sorted({str(t) for t in dataset["task"]})
    if len(tasks) != 1:
        raise ValueError(f"The dataset mixes tasks {tasks}; pass task_name= (and metric=) explicitly.")
    return tasks[0]


def resolve_metric(metric: Any, task: str) -> tuple[Any, str]:
    """The metric object and its name (see :func:`evolkv_hf.metrics.resolve_metric`); ``None`` picks the
    task's default metric (``TASKS[task].default_metric``).

    Example
    -------
    >>> metric, name = resolve_metric("string_match_all", "niah_single")  # doctest: +SKIP
    """
    from .metrics import resolve_metric as resolve

    if metric is None:
        from .tasks import TASKS

        spec = TASKS.get(task)
        if spec is None:
            raise ValueError(
                f"Task {task!r} is not a built-in task ({', '.join(sorted(TASKS))}), so it has no default "
                "metric; pass metric= (--metric: a metric name, an evaluate module or a callable)."
            )
        return resolve(spec.default_metric)
    return resolve(metric)


def _check_metric(metric: Any, name: str, key: str | None) -> str | None:
    """Score one dummy sample so a broken metric fails before any generation; returns the key to report."""
    from .metrics import compute_metric

    try:
        result = compute_metric(metric, ["0"], [["0"]])
    except Exception as err:
        raise ValueError(f"The metric {name!r} fails on a trial sample: {type(err).__name__}: {err}") from err
    if key is not None and key not in result:
        raise ValueError(f"metric_key {key!r} is not among the scores of {name!r}: {sorted(result)}.")
    if key is None and len(result) > 1:
        raise ValueError(
            f"The metric {name!r} returns several scores {sorted(result)}; pass metric_key= (`--metric-key` on the "
            "command line) to choose one."
        )
    return key


def _plan_runs(methods: list[_Method], budgets: list[int], num_layers: int, window_size: int) -> list[_Run]:
    runs: list[_Run] = []
    for method in methods:
        if method.kind == "full":
            runs.append(_Run(method, None, None, None))
            continue
        if method.allocation is not None:
            method.allocation.validate_for(num_layers)
        for budget in budgets:
            if method.kind in ("uniform", "streaming"):
                per_layer = BudgetAllocation.uniform(num_layers, budget).budgets
                policy = "snapkv" if method.kind == "uniform" else "streaming"
            elif method.kind == "pyramid":
                per_layer = BudgetAllocation.pyramid(num_layers, budget, window_size=window_size).budgets
                policy = "snapkv"
            elif method.allocation is not None:
                try:
                    per_layer = method.allocation.rescale(budget).budgets
                except ValueError as err:
                    raise ValueError(
                        f"Cannot rescale allocation {method.label!r} to a mean budget of {budget}: {err}"
                    ) from err
                policy = method.allocation.policy
            else:
                raise ValueError(f"Unknown method {method.label!r}; {_valid_methods_text()}.")
            runs.append(_Run(method, budget, per_layer, policy))
    return runs


# --------------------------------------------------------------------------------------------------
# Run directories
# --------------------------------------------------------------------------------------------------


def _dataset_fingerprint(dataset: Any) -> str:
    digest = hashlib.sha256()
    columns = [
        c for c in ("index", "context", "question", "answer_prefix", "answers", "max_new_tokens", "mode")
    ]
    for sample in dataset:
        row = {column: sample.get(column) for column in columns}
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
    return digest.hexdigest()[:16]


def _without_volatile(config: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key not in _VOLATILE_CONFIG_KEYS}


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    clean = _without_volatile(config)
    # rescale() stamps a new created_at on each call; the allocation's budgets are what counts.
    if isinstance(clean.get("allocation"), dict):
        clean["allocation"] = _without_volatile(clean["allocation"])
    return json.loads(json.dumps(clean, sort_keys=True, default=str))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _run_state(run_dir: Path, config: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """``("missing"|"done"|"conflict", metrics)`` for a run directory."""
    if not all((run_dir / name).is_file() for name in RUN_FILES):
        return "missing", None
    saved_config = _read_json(run_dir / CONFIG_FILE)
    metrics = _read_json(run_dir / METRICS_FILE)
    if not isinstance(saved_config, dict) or not isinstance(metrics, dict) or "score" not in metrics:
        return "missing", None  # unreadable leftovers are redone
    if "model_path" not in saved_config:  # written before local paths were recorded: judged as it was then
        config = {key: value for key, value in config.items() if key != "model_path"}
    if _comparable(saved_config) != _comparable(config):
        return "conflict", None
    return "done", metrics


def _config_diff(run_dir: Path, config: dict[str, Any]) -> str:
    saved = _comparable(_read_json(run_dir / CONFIG_FILE) or {})
    wanted = _comparable(config)
    keys = sorted(key for key in set(saved) | set(wanted) if saved.get(key) != wanted.get(key))
    return ", ".join(f"{key}: {saved.get(key)!r} -> {wanted.get(key)!r}" for key in keys[:4])


def _write_json(path: Path, data: Any) -> None:
    atomic_write(
        path, (json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")
    )


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def _cache_memory_bytes(cache: Any) -> int:
    memory = getattr(cache, "memory_bytes", None)
    if callable(memory):
        return int(memory())
    total = 0
    for layer in getattr(cache, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None and hasattr(tensor, "element_size"):
                total += tensor.numel() * tensor.element_size()
    return total


def _cache_factory(model: Any, run: _Run, options: dict[str, Any]) -> Callable[[], Any]:
    if run.budgets is None:
        from transformers import DynamicCache

        return lambda: DynamicCache(config=model.config)
    from .cache import EvolKVCache

    budgets, policy = run.budgets, run.policy
    return lambda: EvolKVCache(model, budgets, policy=policy, **options)


def _mean_and_interval(
    scores: Sequence[float], n_bootstrap: int, confidence: float, seed: int
) -> tuple[float, float | None, float | None]:
    """The mean of ``scores`` and its bootstrap interval (``None`` bounds when ``n_bootstrap`` is 0), widened to
    contain the mean: the resampled means are summed in another order than the mean, and without this, equal
    scores (e.g. 30 x 100/3) gave a mean one rounding step outside its own interval."""
    from .metrics import bootstrap_ci

    score = _mean(scores)
    if n_bootstrap <= 0:
        return score, None, None
    low, high = bootstrap_ci(scores, n_resamples=n_bootstrap, confidence=confidence, seed=seed)
    return score, min(low, score), max(high, score)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def _warn_allocation_settings(method: _Method, window_size: int, kernel_size: int, pooling: str) -> None:
    allocation = method.allocation
    if allocation is None:
        return
    differing = [
        f"{name} {getattr(allocation, name)} (evaluated with {value})"
        for name, value in (("window_size", window_size), ("kernel_size", kernel_size), ("pooling", pooling))
        if getattr(allocation, name) != value
    ]
    if differing:
        warnings.warn(
            f"Allocation {method.label!r} was made with {', '.join(differing)}; every method is evaluated with "
            "the same scoring settings, so pass window_size/kernel_size/pooling to match it if needed.",
            UserWarning,
            stacklevel=3,
        )


def evaluate_methods(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    methods: Sequence[str | BudgetAllocation] | Mapping[str, str | BudgetAllocation] | str,
    budgets: Sequence[int] | int,
    *,
    metric: Any = None,
    metric_key: str | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    task_name: str | None = None,
    model_name: str | None = None,
    model_revision: str | None = None,
    mode: str | None = None,
    batch_size: int = 1,
    window_size: int = 32,
    kernel_size: int = 7,
    pooling: str = "avg",
    seed: int = 0,
    n_bootstrap: int = 1000,
    progress: bool = True,
    overwrite: bool = False,
) -> EvaluationReport:
    """Evaluate KV-cache methods side by side on the same samples, at several mean budgets.

    Every method runs at every budget on the same encoded prompts; the full cache runs once. Scores are
    the mean of the per-sample metric scores (0-100), with a percentile bootstrap confidence interval.

    Parameters
    ----------
    model, tokenizer:
        A decoder-only transformers model and its tokenizer.
    dataset:
        A task dataset (:func:`evolkv_hf.tasks.load_task`, or any ``datasets.Dataset``/list of dicts with the
        same columns).
    methods:
        Names from :data:`BUILTIN_METHODS` (``"full"``, ``"uniform"``, ``"pyramid"``, ``"streaming"``), saved
        allocations (a directory or Hub repo id) or :class:`BudgetAllocation` objects; a comma-separated
        string; or a mapping ``{label: method}`` to name them.
    budgets:
        Mean KV budgets per layer (tokens, observation window included), each ``>= 1``.
    metric:
        A metric name (:func:`evolkv_hf.metrics.load_metric`), a local ``evaluate`` script, an evaluate module
        or a callable ``(predictions, references) -> {name: score}``; default: the task's default metric.
    metric_key:
        Which score to report when the metric returns several (e.g. ``evaluate.combine``).
    output_dir:
        Where run directories ``<task>__<model>__<method>__<budget>/`` and the plot go; ``None`` writes nothing.
    task_name, model_name, model_revision:
        Names recorded and used in directory names (default: the dataset's ``task`` column, the model's
        ``name_or_path`` and the commit hash in its config).
    mode:
        ``"query_aware"`` or ``"query_agnostic"`` to override the dataset's ``mode`` column.
    batch_size:
        Samples generated together (left-padded).
    window_size, kernel_size, pooling:
        Scoring settings of every compressing method (saved allocations included).
    seed:
        Seed of the bootstrap resampling.
    n_bootstrap:
        Bootstrap resamples for the confidence interval (0: no interval).
    progress:
        Show progress bars (runs and samples, with ETA) and print the results table.
    overwrite:
        Redo runs already in ``output_dir``. Without it, finished runs with the same configuration are
        skipped (their metrics are reloaded) and finished runs with a *different* configuration are an error.

    Returns
    -------
    EvaluationReport

    Raises
    ------
    ValueError
        Unknown method, empty dataset or missing columns, budget < 1, an allocation for another number of
        layers, a task without default metric and no ``metric``, or runs in ``output_dir`` made with another
        configuration (without ``overwrite``). All checked before any generation.

    Example
    -------
    >>> from evolkv_hf.demo import load_demo_model
    >>> from evolkv_hf.evaluation import evaluate_methods
    >>> from evolkv_hf.tasks import load_task
    >>> model, tokenizer = load_demo_model()  # doctest: +SKIP
    >>> dataset = load_task("niah_single", tokenizer, context_length=2048, num_samples=12)  # doctest: +SKIP
    >>> report = evaluate_methods(
    ...     model,
    ...     tokenizer,
    ...     dataset,
    ...     ["full", "uniform", "pyramid", "user/smollm2-evolkv"],
    ...     [64, 128],
    ...     output_dir="results",
    ... )  # doctest: +SKIP
    >>> report.best_heuristic(128).method  # doctest: +SKIP
    'pyramid'
    """
    # ---- validate everything before any generation
    resolved_methods = _resolve_methods(methods)
    budget_list = _resolve_budgets(budgets)
    needs_budgets = any(method.kind != "full" for method in resolved_methods)
    if needs_budgets and not budget_list:
        raise ValueError("No budget given: pass one or more mean budgets (tokens per layer), e.g. [64, 128].")
    batch_size = check_positive_int("batch_size", batch_size, minimum=1)
    window_size = check_positive_int("window_size", window_size, minimum=1)
    kernel_size = check_positive_int("kernel_size", kernel_size, minimum=1)
    n_bootstrap = check_positive_int("n_bootstrap", n_bootstrap, minimum=0)
    seed = check_positive_int("seed", seed, minimum=0)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    if mode is not None and mode not in ("query_aware", "query_agnostic"):
        raise ValueError(f"mode must be 'query_aware' or 'query_agnostic', got {mode!r}.")
    dataset = _as_dataset(dataset)
    _check_dataset(dataset)
    task = _task_name(dataset, task_name)
    metric_obj, metric_name = resolve_metric(metric, task)
    metric_key = _check_metric(metric_obj, metric_name, metric_key)
    num_layers = _num_layers(model)
    runs = _plan_runs(resolved_methods, budget_list, num_layers, window_size)
    for method in resolved_methods:
        _warn_allocation_settings(method, window_size, kernel_size, pooling)
    name = model_name or _model_name(model)
    revision = model_revision or getattr(model.config, "_commit_hash", None)

    scorer = _Scorer(metric_obj, metric_name, metric_key, n_bootstrap, seed)
    samples = list(dataset)
    references = [list(sample["answers"]) for sample in samples]
    modes = sorted({str(mode or sample.get("mode") or "query_aware") for sample in samples})
    base_config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "model_name": name,
        "model_revision": revision,
        "model_dtype": str(getattr(model, "dtype", "")).removeprefix("torch."),
        "prompt_mode": modes[0] if len(modes) == 1 else modes,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "metric": metric_name,
        "metric_key": metric_key,
        "num_samples": len(samples),
        "dataset_fingerprint": _dataset_fingerprint(samples),
        "batch_size": batch_size,
        "seed": seed,
        "n_bootstrap": n_bootstrap,
        "confidence": CONFIDENCE,
    }
    path = local_model_path(model)
    if path is not None:  # two local checkpoints may share a folder name: their runs must not be mixed up
        base_config["model_path"] = path
    cache_options = {"window_size": window_size, "kernel_size": kernel_size, "pooling": pooling}

    def run_config(run: _Run) -> dict[str, Any]:
        config = {
            **base_config,
            "method": run.method.label,
            "method_kind": run.method.kind,
            "budget": run.budget_label,
            "budgets": run.budgets,
            "window_size": window_size if run.budgets is not None else None,
            "kernel_size": kernel_size if run.budgets is not None else None,
            "pooling": pooling if run.budgets is not None else None,
            "policy": run.policy,
        }
        allocation = run.method.allocation
        if allocation is not None:
            config["allocation"] = {
                "source": run.method.source,
                "base_model": allocation.base_model,
                "task": allocation.task,
                "target_mean_budget": allocation.target_mean_budget,
                "budgets": allocation.budgets,
                "created_at": allocation.created_at,
            }
        config["package_versions"] = package_versions()
        return config

    out = Path(output_dir) if output_dir is not None else None
    plan: list[tuple[_Run, dict[str, Any], Path | None, dict[str, Any] | None]] = []
    conflicts: list[str] = []
    for run in runs:
        config = run_config(run)
        run_dir = out / run_dir_name(task, name, run.method.label, run.budget) if out is not None else None
        metrics = None
        if run_dir is not None and not overwrite:
            state, metrics = _run_state(run_dir, config)
            if state == "conflict":
                conflicts.append(f"{run_dir.name} ({_config_diff(run_dir, config)})")
        plan.append((run, config, run_dir, metrics))
    if conflicts:
        raise ValueError(
            f"{len(conflicts)} finished run(s) in {out} were made with another configuration: "
            f"{'; '.join(conflicts[:3])}{' ...' if len(conflicts) > 3 else ''}. Pass overwrite=True (--overwrite) to "
            "redo them, give a method another label ({label: method}, or label=path in --methods), or choose "
            "another output_dir (--output-dir)."
        )

    # ---- run
    from tqdm.auto import tqdm

    to_do = [item for item in plan if item[3] is None]
    encoded = encode_samples(samples, tokenizer, mode=mode) if to_do else []
    prompt_tokens_mean = _mean([len(sample.prompt_ids) for sample in encoded]) if encoded else None
    rows: list[EvaluationRow] = []
    runs_bar = tqdm(total=len(plan), desc="evolkv evaluate", unit="run", disable=not progress)
    try:
        for run, config, run_dir, metrics in plan:
            runs_bar.set_postfix_str(f"{run.method.label} @ {run.budget_label}")
            if metrics is not None:
                rows.append(
                    _row_from_metrics(
                        run, metrics, run_dir, reused=True, scores=_saved_scores(run_dir, len(samples))
                    )
                )
                runs_bar.update(1)
                continue
            label = f"{run.method.label} @ {run.budget_label}"

            def keep_answers(
                predictions: list[str], run_dir: Path | None = run_dir, label: str = label
            ) -> None:
                if run_dir is None:
                    return
                # Without config.json the run stays unfinished (redone next time); the answers stay inspectable.
                _write_predictions(run_dir, samples, predictions, references, None)
                warnings.warn(
                    f"Scoring run {label} failed; its answers are saved in {run_dir / PREDICTIONS_FILE}.",
                    stacklevel=4,
                )

            predictions, scores, metrics = _execute_run(
                model,
                tokenizer,
                encoded,
                references,
                _cache_factory(model, run, cache_options),
                label=label,
                batch_size=batch_size,
                scorer=scorer,
                progress=progress,
                on_scoring_error=keep_answers,
            )
            metrics["prompt_tokens_mean"] = prompt_tokens_mean
            if run_dir is not None:
                _write_run(run_dir, samples, predictions, references, scores, metrics, config)
            rows.append(_row_from_metrics(run, metrics, run_dir, reused=False, scores=scores))
            runs_bar.update(1)
    finally:
        runs_bar.close()

    report = EvaluationReport(
        rows=rows,
        task=task,
        model_name=name,
        # The score reported is metric_key's alone when the metric returns several.
        metric_name=metric_name if metric_key in (None, metric_name) else f"{metric_name}: {metric_key}",
        output_dir=str(out) if out is not None else None,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report.plot_path = _save_plot(
            report, out / f"{sanitize_name(task)}__{sanitize_name(name)}__scores.png"
        )
        report.to_json(out / f"{sanitize_name(task)}__{sanitize_name(name)}__report.json")
    if progress:
        print(report.to_table())
        if report.plot_path:
            print(f"plot: {report.plot_path}")
    return report


@dataclass(frozen=True)
class _Scorer:
    """Scores predictions: per-sample scores, the metric dict, the mean and its bootstrap interval."""

    metric: Any
    name: str
    key: str | None
    n_bootstrap: int
    seed: int

    def __call__(
        self, predictions: list[str], references: list[list[str]]
    ) -> tuple[list[float], dict[str, Any]]:
        from .metrics import compute_metric, per_sample_scores

        scores = [float(s) for s in per_sample_scores(self.metric, predictions, references, key=self.key)]
        bad = [position for position, score in enumerate(scores) if not math.isfinite(score)]
        if bad:
            first = bad[0]
            raise ValueError(
                f"the metric {self.name!r} gave {len(bad)} non-finite per-sample score(s) (NaN or inf) at sample "
                f"position(s) {bad[:10]}{' ...' if len(bad) > 10 else ''}, e.g. {scores[first]} for prediction "
                f"{predictions[first]!r} against {references[first]!r}; the mean and its bootstrap interval need "
                "finite scores. Fix the metric (or the references) for such answers."
            )
        score, low, high = _mean_and_interval(scores, self.n_bootstrap, CONFIDENCE, self.seed)
        metrics = {
            "metric_name": self.name,
            "metric": _jsonable(compute_metric(self.metric, predictions, references)),
            "score": score,
            "ci_low": low,
            "ci_high": high,
            "confidence": CONFIDENCE,
            "n_bootstrap": self.n_bootstrap,
            "n": len(scores),
        }
        return scores, metrics


def _execute_run(
    model: Any,
    tokenizer: Any,
    encoded: Sequence[Any],
    references: list[list[str]],
    factory: Callable[[], Any],
    *,
    label: str,
    batch_size: int,
    scorer: _Scorer,
    progress: bool,
    on_scoring_error: Callable[[list[str]], None] | None = None,
) -> tuple[list[str], list[float], dict[str, Any]]:
    """Generate and score one run; measures time and the K/V memory each batch's cache ends with.

    ``on_scoring_error`` receives the answers when scoring them raises (before the error propagates)."""
    from tqdm.auto import tqdm

    memory: list[tuple[int, int]] = []  # (bytes held by a batch's cache, rows in the batch)
    latest: list[Any] = []

    def make_cache() -> Any:
        latest[:] = [factory()]
        return latest[0]

    bar = tqdm(total=len(encoded), desc=label, unit="sample", leave=False, disable=not progress)

    def on_batch(count: int) -> None:
        if latest:
            memory.append((_cache_memory_bytes(latest[0]), count))
            latest.clear()  # release the batch's cache
        bar.update(count)

    start = time.perf_counter()
    try:
        predictions = generate_answers(
            model, tokenizer, encoded, make_cache, batch_size=batch_size, progress=on_batch
        )
    finally:
        bar.close()
    try:
        scores, metrics = scorer(predictions, references)
    except Exception:
        if on_scoring_error is not None:
            on_scoring_error(predictions)
        raise
    rows = sum(count for _, count in memory)
    metrics["elapsed_s"] = round(time.perf_counter() - start, 3)
    metrics["kv_memory_bytes_mean"] = sum(size for size, _ in memory) / rows if rows else None
    return predictions, scores, metrics


def _write_run(
    run_dir: Path,
    samples: Sequence[Mapping[str, Any]],
    predictions: Sequence[str],
    references: Sequence[list[str]],
    scores: Sequence[float],
    metrics: Mapping[str, Any],
    config: Mapping[str, Any],
) -> None:
    """Write the three files of a run atomically, ``config.json`` last (its presence marks a finished run)."""
    _write_predictions(run_dir, samples, predictions, references, scores)
    _write_json(run_dir / METRICS_FILE, metrics)
    _write_json(run_dir / CONFIG_FILE, config)


def _write_predictions(
    run_dir: Path,
    samples: Sequence[Mapping[str, Any]],
    predictions: Sequence[str],
    references: Sequence[list[str]],
    scores: Sequence[float] | None,
) -> None:
    """Write ``predictions.jsonl`` (``score`` is null when the answers could not be scored), after removing
    ``config.json`` so that the run directory reads as unfinished until the run is complete."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).unlink(missing_ok=True)
    per_sample = list(scores) if scores is not None else [None] * len(predictions)
    lines = [
        json.dumps(
            {
                "index": sample.get("index", position),
                "prediction": prediction,
                "answers": answers,
                "score": score,
            },
            ensure_ascii=False,
            default=str,
        )
        for position, (sample, prediction, answers, score) in enumerate(
            zip(samples, predictions, references, per_sample, strict=True)
        )
    ]
    atomic_write(run_dir / PREDICTIONS_FILE, ("\n".join(lines) + "\n").encode("utf-8"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _saved_scores(run_dir: Path | None, count: int) -> list[float] | None:
    """The per-sample scores of a finished run's ``predictions.jsonl`` (``None`` if unreadable or incomplete)."""
    if run_dir is None:
        return None
    scores: list[float] = []
    try:
        for line in (run_dir / PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines():
            if line.strip():
                score = json.loads(line).get("score")
                if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                    return None
                scores.append(float(score))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return scores if len(scores) == count else None


def _row_from_metrics(
    run: _Run,
    metrics: Mapping[str, Any],
    run_dir: Path | None,
    *,
    reused: bool,
    scores: Sequence[float] | None = None,
) -> EvaluationRow:
    def optional(key: str) -> float | None:
        value = metrics.get(key)
        return None if value is None else float(value)

    return EvaluationRow(
        method=run.method.label,
        budget=run.budget,
        score=float(metrics["score"]),
        ci_low=optional("ci_low"),
        ci_high=optional("ci_high"),
        n=int(metrics.get("n", 0)),
        run_dir=str(run_dir) if run_dir is not None else None,
        kv_memory_bytes_mean=optional("kv_memory_bytes_mean"),
        elapsed_s=optional("elapsed_s"),
        reused=reused,
        kind=run.method.kind,
        sample_scores=None if scores is None else tuple(float(score) for score in scores),
    )


def _save_plot(report: EvaluationReport, path: Path) -> str | None:
    try:
        figure = report.plot()
    except ImportError:
        warnings.warn(
            "matplotlib is not installed: skipping the score-vs-budget plot.", UserWarning, stacklevel=3
        )
        return None
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    atomic_write(path, buffer.getvalue())
    return str(path)
