"""The metric registry: :data:`METRICS`, :func:`load_metric` and :func:`metric_path`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import evaluate

from .edit_sim.edit_sim import EditSim
from .exact_match.exact_match import ExactMatch
from .qa_f1.qa_f1 import QaF1
from .rouge_l.rouge_l import RougeL
from .string_match_all.string_match_all import StringMatchAll
from .string_match_part.string_match_part import StringMatchPart

METRICS: dict[str, type[evaluate.Metric]] = {
    "string_match_all": StringMatchAll,
    "string_match_part": StringMatchPart,
    "exact_match": ExactMatch,
    "qa_f1": QaF1,
    "edit_sim": EditSim,
    "rouge_l": RougeL,
}
"""The built-in metrics, by name (each returns ``{name: mean score in [0, 100]}``)."""


def _check_name(name: str) -> None:
    if not isinstance(name, str) or name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; valid metrics: {sorted(METRICS)}")


def metric_path(name: str) -> Path:
    """Folder of a built-in metric, for ``evaluate.load(str(metric_path(name)))`` (works offline).

    Examples
    --------
    >>> metric_path("qa_f1").name
    'qa_f1'
    """
    _check_name(name)
    return Path(__file__).resolve().parent / name


def load_metric(name: str, **init_kwargs: Any) -> evaluate.EvaluationModule:
    """Instantiate a built-in metric directly (no Hub, no script copy).

    Parameters
    ----------
    name
        A key of :data:`METRICS`.
    **init_kwargs
        Passed to :class:`evaluate.EvaluationModule` (``keep_in_memory`` defaults to ``True`` for a
        single process, so no cache files are written).

    Returns
    -------
    evaluate.EvaluationModule

    Examples
    --------
    >>> load_metric("exact_match").compute(predictions=["The Normans"], references=[["normans"]])
    {'exact_match': 100.0}
    """
    _check_name(name)
    if init_kwargs.get("num_process", 1) == 1:
        init_kwargs.setdefault("keep_in_memory", True)
    return METRICS[name](**init_kwargs)
