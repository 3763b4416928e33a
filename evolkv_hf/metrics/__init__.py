"""Metrics for long-context tasks as ``evaluate`` modules that work offline, and helpers.

Each metric is an :class:`evaluate.Metric` subclass in ``evolkv_hf/metrics/<name>/<name>.py``:
:func:`load_metric` instantiates it directly, and ``evaluate.load(str(metric_path(name)))`` loads
the folder without the Hub. Every metric takes ``predictions`` (str per sample) and
``references`` (list of accepted str per sample) and returns ``{name: mean score in [0, 100]}``.

Examples
--------
>>> import evaluate
>>> from evolkv_hf.metrics import bootstrap_ci, compute_metric, load_metric, per_sample_scores
>>> qa = evaluate.combine([load_metric("qa_f1"), load_metric("exact_match")])
>>> compute_metric(qa, ["Paris"], [["Paris", "Paris, France"]])
{'qa_f1': 100.0, 'exact_match': 100.0}
>>> scores = per_sample_scores("edit_sim", ["8056020", "8052"], [["8056020"], ["8056020"]])
>>> [round(s, 1) for s in scores]
[100.0, 72.7]
"""

from .compute import MetricLike, compute_metric, metric_label, per_sample_scores, resolve_metric
from .registry import METRICS, load_metric, metric_path
from .scoring import normalize_answer
from .stats import bootstrap_ci

__all__ = [
    "METRICS",
    "MetricLike",
    "bootstrap_ci",
    "compute_metric",
    "load_metric",
    "metric_label",
    "metric_path",
    "normalize_answer",
    "per_sample_scores",
    "resolve_metric",
]
