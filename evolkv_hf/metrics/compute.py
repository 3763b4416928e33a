"""Computing any metric: ``evaluate`` modules, combined modules, names or plain callables."""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import evaluate

from .registry import load_metric

MetricLike: TypeAlias = (
    str
    | evaluate.EvaluationModule
    | evaluate.CombinedEvaluations
    | Callable[[list[str], list[list[str]]], Mapping[str, float]]
)
"""A metric name of :data:`~evolkv_hf.metrics.METRICS`, an ``evaluate`` module, the result of
``evaluate.combine``, or a callable ``(predictions, references) -> {name: score}``."""


def _normalize_inputs(
    predictions: Sequence[str], references: Sequence[Sequence[str] | str]
) -> tuple[list[str], list[list[str]]]:
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError("predictions and references must be sequences (one item per sample), not a string")
    predictions = list(predictions)
    references = list(references)
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("No predictions to score")
    normalized: list[list[str]] = []
    for i, (prediction, refs) in enumerate(zip(predictions, references, strict=True)):
        if not isinstance(prediction, str):
            raise ValueError(f"prediction {i} must be a string, got {type(prediction).__name__}")
        refs_list = [refs] if isinstance(refs, str) else list(refs)
        if not refs_list or not all(isinstance(r, str) for r in refs_list):
            raise ValueError(
                f"references {i} must be a string or a non-empty list of strings, got {refs!r:.80}"
            )
        normalized.append(refs_list)
    return predictions, normalized


def _check_result(result: Any, metric: Any) -> dict[str, float]:
    label = getattr(metric, "name", None) or getattr(metric, "__name__", None) or type(metric).__name__
    if result is None:
        raise TypeError(
            f"Metric {label!r} returned None (an evaluate module returns None on processes other than "
            "process_id 0); expected a dict of scores."
        )
    if not isinstance(result, Mapping):
        raise TypeError(
            f"Metric {label!r} must return a mapping {{name: score}}, got {type(result).__name__}"
        )
    scores: dict[str, float] = {}
    for key, value in result.items():
        if not isinstance(key, str):
            raise TypeError(f"Metric {label!r} returned a non-string key {key!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"Metric {label!r} returned {type(value).__name__} for {key!r}; scores must be real numbers"
            )
        scores[key] = float(value)
    if not scores:
        raise TypeError(f"Metric {label!r} returned an empty dict")
    return scores


def _resolve(metric: MetricLike) -> Any:
    if isinstance(metric, str):
        return load_metric(metric)
    if isinstance(metric, (evaluate.EvaluationModule, evaluate.CombinedEvaluations)) or callable(metric):
        return metric
    raise TypeError(
        "metric must be a metric name, an evaluate.EvaluationModule, an evaluate.CombinedEvaluations or a "
        f"callable (predictions, references) -> dict, got {type(metric).__name__}"
    )


def _takes_one_reference(module: Any) -> bool:
    """Whether an ``evaluate`` module declares one reference string per sample (like the Hub's ``exact_match``)
    rather than a list; a module accepting either format, or declaring none, gets lists."""
    import datasets

    modules = module.evaluation_modules if isinstance(module, evaluate.CombinedEvaluations) else [module]
    single = []
    for part in modules:
        declared = getattr(part, "features", None)
        formats = declared if isinstance(declared, list) else [declared]
        single.append(
            all(
                features is not None
                and "references" in features
                and isinstance(features["references"], datasets.Value)
                for features in formats
            )
        )
    if any(single) and not all(single):
        raise ValueError(
            "The combined metric mixes modules that take one reference string per sample with modules that take "
            "a list of references; compute them separately."
        )
    return all(single)


def _single_references(module: Any, refs: list[list[str]]) -> list[str]:
    several = [i for i, sample_refs in enumerate(refs) if len(sample_refs) > 1]
    if several:
        label = getattr(module, "name", None) or type(module).__name__
        raise ValueError(
            f"Metric {label!r} takes one reference string per sample, but sample(s) {several[:5]} have "
            f"{len(refs[several[0]])} accepted answers; use a metric that takes a list of references (e.g. "
            "'exact_match' or 'qa_f1' from evolkv_hf.metrics) or a callable that picks one."
        )
    return [sample_refs[0] for sample_refs in refs]


def compute_metric(
    metric: MetricLike,
    predictions: Sequence[str],
    references: Sequence[Sequence[str] | str],
    **kwargs: Any,
) -> dict[str, float]:
    """Score predictions with any kind of metric and return ``{name: float}``.

    Parameters
    ----------
    metric
        See :data:`MetricLike`.
    predictions
        One string per sample.
    references
        Accepted answers per sample: a list of strings (or a single string).
    **kwargs
        Passed to ``compute`` (or to the callable).

    Returns
    -------
    dict of str to float

    Raises
    ------
    ValueError
        For mismatched or empty inputs.
    TypeError
        If the metric is of an unsupported kind or does not return a mapping of real numbers.

    Examples
    --------
    >>> import evaluate
    >>> combined = evaluate.combine([load_metric("qa_f1"), load_metric("exact_match")])
    >>> compute_metric(combined, ["the Normans"], [["Normans"]])
    {'qa_f1': 100.0, 'exact_match': 100.0}
    >>> compute_metric(lambda p, r: {"chars": sum(map(len, p))}, ["abc"], ["x"])
    {'chars': 3.0}
    """
    module = _resolve(metric)
    predictions, refs = _normalize_inputs(predictions, references)
    if isinstance(module, (evaluate.EvaluationModule, evaluate.CombinedEvaluations)):
        # evaluate checks the declared format: one string per sample, or a list of accepted answers.
        passed: list[str] | list[list[str]] = (
            _single_references(module, refs) if _takes_one_reference(module) else refs
        )
        result = module.compute(predictions=predictions, references=passed, **kwargs)
    else:
        result = module(predictions, refs, **kwargs)
    return _check_result(result, module)


def per_sample_scores(
    metric: MetricLike,
    predictions: Sequence[str],
    references: Sequence[Sequence[str] | str],
    *,
    key: str | None = None,
    **kwargs: Any,
) -> list[float]:
    """Score of each sample (for bootstrap intervals), by scoring each sample alone.

    Built-in metrics score all samples in one pass (``score_samples``), with the same values.

    Parameters
    ----------
    metric
        See :data:`MetricLike`.
    predictions, references
        As in :func:`compute_metric`.
    key
        Which score to keep when the metric returns several (required then).
    **kwargs
        Passed to the metric.

    Returns
    -------
    list of float

    Examples
    --------
    >>> per_sample_scores("string_match_all", ["12 34", "12"], [["12", "34"], ["12", "34"]])
    [100.0, 50.0]
    """
    module = _resolve(metric)
    predictions, refs = _normalize_inputs(predictions, references)
    score_samples = getattr(module, "score_samples", None)
    if callable(score_samples) and key in (None, getattr(module, "name", None)):
        return [float(s) for s in score_samples(predictions, refs, **kwargs)]
    is_module = isinstance(module, (evaluate.EvaluationModule, evaluate.CombinedEvaluations))
    if is_module and _takes_one_reference(module):
        # Checked on all samples first, so the error names their indices, not position 0 of a one-sample call.
        _single_references(module, refs)
    scores = []
    for i, (prediction, sample_refs) in enumerate(zip(predictions, refs, strict=True)):
        try:
            result = compute_metric(module, [prediction], [sample_refs], **kwargs)
        except Exception as err:
            if type(err) in (TypeError, ValueError):  # ours and the usual metric errors: say which sample
                raise type(err)(f"Scoring sample {i}: {err}") from err
            if hasattr(err, "add_note"):  # Python 3.11+
                err.add_note(f"(while scoring sample {i})")
            raise
        if key is None:
            if len(result) != 1:
                raise ValueError(
                    f"The metric returns several scores {sorted(result)}; pass key= to choose one"
                )
            scores.append(next(iter(result.values())))
        elif key in result:
            scores.append(result[key])
        else:
            raise ValueError(f"key {key!r} is not among the metric's scores {sorted(result)}")
    return scores


def metric_label(metric: Any) -> str:
    """A readable name for a metric object (``a+b`` for ``evaluate.combine`` results)."""
    modules = getattr(metric, "evaluation_modules", None)
    if modules:  # evaluate.CombinedEvaluations
        return "+".join(str(getattr(module, "name", type(module).__name__)) for module in modules)
    name = getattr(metric, "name", None)
    if isinstance(name, str) and name:
        return name
    return str(getattr(metric, "__name__", type(metric).__name__))


def resolve_metric(metric: Any, default: str | None = None) -> tuple[Any, str]:
    """The metric object and its name, from a registered name, a local ``evaluate`` script or folder, an
    evaluate module (or ``evaluate.combine`` result) or a callable; ``None`` takes ``default``.

    Example
    -------
    >>> metric, name = resolve_metric("qa_f1")
    >>> name
    'qa_f1'
    """
    if metric is None:
        if default is None:
            raise ValueError(
                "No metric given and no default: pass a metric name, an evaluate module or a callable."
            )
        metric = default
    if isinstance(metric, os.PathLike):
        metric = os.fspath(metric)
    if isinstance(metric, str):
        from .registry import METRICS, load_metric

        if metric not in METRICS and os.path.exists(metric):
            import evaluate

            module = evaluate.load(metric)
            return module, metric_label(module)
        return load_metric(metric), metric
    if hasattr(metric, "compute") or callable(metric):
        return metric, metric_label(metric)
    raise TypeError(
        f"metric must be a name, an evaluate module or a callable(predictions, references), got {metric!r}."
    )
