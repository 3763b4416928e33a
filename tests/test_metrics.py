"""Tests of evolkv_hf.metrics: metric values, evaluate integration, compute helpers, bootstrap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import evaluate
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evolkv_hf.metrics import (
    METRICS,
    bootstrap_ci,
    compute_metric,
    load_metric,
    metric_path,
    normalize_answer,
    per_sample_scores,
    scoring,
)


def score(name: str, predictions: list[str], references: list[list[str]], **kwargs: Any) -> float:
    return load_metric(name).compute(predictions=predictions, references=references, **kwargs)[name]


# --------------------------------------------------------------------------------------------------
# Hand-computed values
# --------------------------------------------------------------------------------------------------


def test_normalize_answer() -> None:
    assert normalize_answer("  The   Normans. ") == "normans"
    assert normalize_answer("An apple, a day!") == "apple day"
    assert normalize_answer("Theory") == "theory"  # articles only as whole words
    assert normalize_answer("") == ""


def test_string_match_all_and_part() -> None:
    refs = [["12", "34", "56", "78"], ["Paris"]]
    assert score("string_match_all", ["the values are 12 and 34", "PARIS, france"], refs) == pytest.approx(
        75.0
    )
    assert score("string_match_part", ["the values are 12 and 34", "Lyon"], refs) == pytest.approx(50.0)
    assert score("string_match_all", [""], [["x"]]) == 0.0
    assert score("string_match_part", ["abc"], [["B"]]) == 100.0  # case-insensitive substring


@pytest.mark.parametrize("name", ["string_match_all", "string_match_part"])
@pytest.mark.parametrize("blank", ["", "  "])
def test_substring_metrics_refuse_blank_references(name: str, blank: str) -> None:
    # Regression: a blank reference is a substring of every prediction, so direct calls scored 100 for any
    # answer ("" in "whatever" is True); only the task pipeline's dataset validation stood in the way.
    with pytest.raises(ValueError, match=rf"{name}: reference '{blank}' is blank"):
        compute_metric(name, ["whatever the model said"], [["Paris", blank]])
    with pytest.raises(ValueError, match="is blank"):
        per_sample_scores(name, ["a", "b"], [["a"], [blank]])


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("  The   Normans. ", ["Normans"], 100.0),
        ("an apple", ["Apple"], 100.0),
        ("Normandy", ["Normans"], 0.0),
        ("", ["Normans"], 0.0),
        ("the", ["a"], 100.0),  # both normalise to the empty string
        ("France", ["Paris", "france!"], 100.0),  # any reference
    ],
)
def test_exact_match(prediction: str, references: list[str], expected: float) -> None:
    assert score("exact_match", [prediction], [references]) == expected


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("Paris France Europe", ["Paris, France"], 80.0),  # P = 2/3, R = 1
        ("in the 10th century", ["10th and 11th centuries", "10th century"], 80.0),  # best reference
        ("The NORMANS!", ["normans"], 100.0),
        ("", ["Normans"], 0.0),
        ("the", ["an"], 100.0),  # SQuAD v2: both empty after normalisation
        ("Normans", ["the"], 0.0),  # reference empty after normalisation
        ("cat cat dog", ["cat dog dog"], 200 / 3),  # multiset overlap 2, P = R = 2/3
    ],
)
def test_qa_f1(prediction: str, references: list[str], expected: float) -> None:
    assert score("qa_f1", [prediction], [references]) == pytest.approx(expected)


def test_qa_f1_mean_over_samples() -> None:
    assert score("qa_f1", ["Paris", "Lyon"], [["Paris"], ["Paris"]]) == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("8056020", ["8056020"], 100.0),
        ("8052", ["8056020"], 800 / 11),  # Indel: 1 - 3/11
        (" 8056020.\nThe special magic number is 8056020.", ["8056020"], 100.0),  # first line only
        ("\n\n  ABC-def. ", ["abc-def"], 100.0),  # case, whitespace and edge punctuation
        ("", ["8056020"], 0.0),
        ("8056021", ["1234567", "8056020"], 600 / 7),  # closest reference: 12/14
    ],
)
def test_edit_sim(prediction: str, references: list[str], expected: float) -> None:
    assert score("edit_sim", [prediction], [references]) == pytest.approx(expected)


def test_edit_sim_whole_text_option() -> None:
    prediction = "8056020\nmore"
    assert score("edit_sim", [prediction], [["8056020"]]) == 100.0
    whole = score("edit_sim", [prediction], [["8056020"]], use_first_line=False)
    assert (
        whole == pytest.approx(scoring.edit_sim(prediction, ["8056020"], use_first_line=False))
        and whole < 100
    )


def test_rouge_l() -> None:
    assert score("rouge_l", ["the cat sat"], [["cat sat on"]]) == pytest.approx(200 / 3)
    assert score("rouge_l", ["the cat sat"], [["dog", "The cat sat."]]) == pytest.approx(100.0)
    assert score("rouge_l", [""], [["cat"]]) == 0.0


def test_metrics_reject_bad_references() -> None:
    with pytest.raises(ValueError, match="non-empty list"):
        load_metric("qa_f1").compute(predictions=["a"], references=[[]])


@settings(max_examples=40, deadline=None)
@given(
    prediction=st.text(max_size=30),
    references=st.lists(st.text(max_size=20).filter(str.strip), min_size=1, max_size=3),
)
def test_scores_are_bounded_and_consistent(prediction: str, references: list[str]) -> None:
    values = {name: fn(prediction, references) for name, fn in scoring.SCORERS.items() if name != "rouge_l"}
    assert all(0.0 <= v <= 100.0 for v in values.values())
    if values["exact_match"] == 100.0:
        assert values["qa_f1"] == 100.0
    assert values["string_match_part"] >= values["string_match_all"] > 0 or values["string_match_all"] == 0


# --------------------------------------------------------------------------------------------------
# evaluate integration
# --------------------------------------------------------------------------------------------------


def _package_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_evaluate_load_local_folder(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    package = metric_path("qa_f1").parent
    before = _package_files(package)
    module = evaluate.load(str(metric_path(name)), keep_in_memory=True)
    assert module.name == name
    predictions, references = ["The Normans", "x"], [["Normans"], ["y", "x z"]]
    assert module.compute(predictions=predictions, references=references) == pytest.approx(
        load_metric(name).compute(predictions=predictions, references=references)
    )
    assert _package_files(package) == before  # evaluate copies the script elsewhere


def test_evaluate_combine() -> None:
    combined = evaluate.combine([load_metric("qa_f1"), load_metric("exact_match")])
    result = combined.compute(predictions=["the Normans", "in 1066 AD"], references=[["Normans"], ["1066"]])
    assert result == pytest.approx({"qa_f1": 75.0, "exact_match": 50.0})  # F1("in 1066 ad", "1066") = 0.5
    assert compute_metric(combined, ["Paris"], [["Paris"]]) == {"qa_f1": 100.0, "exact_match": 100.0}


def test_load_metric_unknown_and_in_memory() -> None:
    with pytest.raises(ValueError, match=r"valid metrics: .*qa_f1"):
        load_metric("f1")
    with pytest.raises(ValueError, match="valid metrics"):
        metric_path("bleu")
    assert load_metric("qa_f1").keep_in_memory


# --------------------------------------------------------------------------------------------------
# compute_metric / per_sample_scores
# --------------------------------------------------------------------------------------------------


def test_compute_metric_accepts_names_modules_and_callables() -> None:
    assert compute_metric("exact_match", ["Normans"], ["normans"]) == {"exact_match": 100.0}
    assert compute_metric(load_metric("qa_f1"), ["Normans"], [["normans"]]) == {"qa_f1": 100.0}

    def length_ratio(predictions: list[str], references: list[list[str]]) -> dict[str, Any]:
        return {"ratio": np.float32(len(predictions[0]) / len(references[0][0])), "count": len(predictions)}

    assert compute_metric(length_ratio, ["abcd"], [["ab"]]) == {"ratio": 2.0, "count": 1.0}


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (lambda p, r: [1.0], "must return a mapping"),
        (lambda p, r: {"score": "high"}, "scores must be real numbers"),
        (lambda p, r: {"score": [1.0, 2.0]}, "scores must be real numbers"),
        (lambda p, r: {"ok": True}, "scores must be real numbers"),
        (lambda p, r: None, "returned None"),
        (lambda p, r: {}, "empty dict"),
        (42, "metric must be a metric name"),
    ],
)
def test_compute_metric_rejects_bad_metrics(metric: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        compute_metric(metric, ["a"], [["a"]])


def test_compute_metric_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1"):
        compute_metric("qa_f1", ["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="No predictions"):
        compute_metric("qa_f1", [], [])
    with pytest.raises(ValueError, match="non-empty list"):
        compute_metric("qa_f1", ["a"], [[]])
    with pytest.raises(ValueError, match="not a string"):
        compute_metric("qa_f1", "a", ["a"])
    with pytest.raises(ValueError, match="Unknown metric"):
        compute_metric("accuracy", ["a"], ["a"])


def test_per_sample_scores() -> None:
    predictions = ["8056020", "8052", "nothing"]
    references = [["8056020"], ["8056020"], ["8056020"]]
    fast = per_sample_scores("edit_sim", predictions, references)
    assert fast == pytest.approx([100.0, 800 / 11, 0.0])
    mean = compute_metric("edit_sim", predictions, references)["edit_sim"]
    assert np.mean(fast) == pytest.approx(mean)
    generic = per_sample_scores(lambda p, r: {"em": scoring.exact_match(p[0], r[0])}, ["a", "b"], ["a", "c"])
    assert generic == [100.0, 0.0]
    combined = evaluate.combine([load_metric("qa_f1"), load_metric("exact_match")])
    assert per_sample_scores(combined, ["x b c", "d"], [["b c"], ["d"]], key="exact_match") == [0.0, 100.0]
    with pytest.raises(ValueError, match="pass key="):
        per_sample_scores(combined, ["a"], [["a"]])
    with pytest.raises(ValueError, match="not among"):
        per_sample_scores(combined, ["a"], [["a"]], key="rouge")


# --------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------


def test_bootstrap_ci() -> None:
    rng = np.random.default_rng(123)
    scores = rng.choice([0.0, 100.0], size=50, p=[0.4, 0.6])
    low, high = bootstrap_ci(scores, seed=0)
    assert low <= scores.mean() <= high and low < high
    assert bootstrap_ci(scores, seed=0) == (low, high)
    continuous = rng.uniform(0, 100, size=40)
    assert bootstrap_ci(list(continuous), seed=1) != bootstrap_ci(continuous, seed=2)
    narrow = bootstrap_ci(scores, confidence=0.5, seed=0)
    assert low <= narrow[0] <= narrow[1] <= high
    assert bootstrap_ci([42.0]) == (42.0, 42.0)
    assert bootstrap_ci([7.0] * 10, n_resamples=10) == (7.0, 7.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": []}, "at least one"),
        ({"scores": [1.0, float("nan")]}, "finite"),
        ({"scores": [1.0], "n_resamples": 0}, "n_resamples"),
        ({"scores": [1.0], "confidence": 1.0}, "confidence"),
    ],
)
def test_bootstrap_ci_rejects(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(**kwargs)


def _one_reference_metric():
    """An evaluate metric declaring one reference string per sample, like the Hub's ``exact_match``."""
    import datasets
    import evaluate

    class OneReference(evaluate.Metric):
        def _info(self):
            features = datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            )
            return evaluate.MetricInfo(description="", citation="", inputs_description="", features=features)

        def _compute(self, predictions, references):
            return {
                "same": 100.0
                * sum(p == r for p, r in zip(predictions, references, strict=True))
                / len(predictions)
            }

    return OneReference()


def test_evaluate_metrics_with_one_reference_string_per_sample():
    """Regression: references were always passed as lists, which such metrics refuse."""
    from evolkv_hf.metrics import compute_metric, per_sample_scores

    metric = _one_reference_metric()
    assert compute_metric(metric, ["a", "b"], [["a"], "c"]) == {"same": 50.0}
    assert per_sample_scores(metric, ["a", "b"], [["a"], "c"]) == [100.0, 0.0]
    with pytest.raises(ValueError, match=r"one reference string per sample, but sample\(s\) \[1\] have 2"):
        compute_metric(metric, ["a", "b"], [["a"], ["b", "c"]])
    # Regression: per_sample_scores scored one sample at a time, so this error always named sample [0].
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\] have 2"):
        per_sample_scores(metric, ["a", "b"], [["a"], ["b", "c"]])


def test_per_sample_scores_names_the_failing_sample():
    """Regression: an error while scoring one sample did not say which sample it was."""
    from evolkv_hf.metrics import per_sample_scores

    def picky(predictions, references):
        if predictions == ["bad"]:
            raise ValueError("cannot parse the answer")
        return {"score": 1.0}

    with pytest.raises(ValueError, match="Scoring sample 2: cannot parse the answer"):
        per_sample_scores(picky, ["ok", "ok", "bad"], [["x"]] * 3)
    with pytest.raises(TypeError, match=r"Scoring sample 1: .*empty dict"):
        per_sample_scores(lambda p, r: {} if p == ["none"] else {"a": 1.0}, ["x", "none"], [["x"]] * 2)
