"""``string_match_part`` as an ``evaluate`` metric (loads offline: ``evaluate.load(<this folder>)``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import evaluate

from evolkv_hf.metrics.info import RULER_CITATION, metric_info
from evolkv_hf.metrics.scoring import score_samples
from evolkv_hf.metrics.scoring import string_match_part as _score

_DESCRIPTION = """RULER's string_match_part: 100 for a sample if any of its references is in the prediction
(case-insensitive substring), else 0; averaged over samples. RULER's QA metric.
"""


class StringMatchPart(evaluate.Metric):
    """RULER's ``string_match_part``: percentage of samples whose prediction contains any reference.

    Examples
    --------
    >>> from evolkv_hf.metrics import load_metric
    >>> result = load_metric("string_match_part").compute(
    ...     predictions=["Paris, France", "Lyon"], references=[["France"], ["Marseille"]]
    ... )
    >>> round(result["string_match_part"], 2)
    50.0
    """

    def _info(self) -> Any:
        return metric_info("string_match_part", _DESCRIPTION, RULER_CITATION)

    def score_samples(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
        """Score of each sample, from 0 to 100."""
        return score_samples(_score, predictions, references)

    def _compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        scores = self.score_samples(predictions, references)
        if not scores:
            raise ValueError("string_match_part: no predictions to score")
        return {"string_match_part": sum(scores) / len(scores)}
