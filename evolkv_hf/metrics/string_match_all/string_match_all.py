"""``string_match_all`` as an ``evaluate`` metric (loads offline: ``evaluate.load(<this folder>)``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import evaluate

from evolkv_hf.metrics.info import RULER_CITATION, metric_info
from evolkv_hf.metrics.scoring import score_samples
from evolkv_hf.metrics.scoring import string_match_all as _score

_DESCRIPTION = """RULER's string_match_all: the percentage of a sample's references found in its prediction
(case-insensitive substring), averaged over samples. Partial credit when several answers are expected.
"""


class StringMatchAll(evaluate.Metric):
    """RULER's ``string_match_all``: mean percentage of each sample's references found in its prediction.

    Examples
    --------
    >>> from evolkv_hf.metrics import load_metric
    >>> result = load_metric("string_match_all").compute(
    ...     predictions=["The values are 12 and 34."], references=[["12", "34"]]
    ... )
    >>> round(result["string_match_all"], 2)
    100.0
    """

    def _info(self) -> Any:
        return metric_info("string_match_all", _DESCRIPTION, RULER_CITATION)

    def score_samples(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
        """Score of each sample, from 0 to 100."""
        return score_samples(_score, predictions, references)

    def _compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        scores = self.score_samples(predictions, references)
        if not scores:
            raise ValueError("string_match_all: no predictions to score")
        return {"string_match_all": sum(scores) / len(scores)}
