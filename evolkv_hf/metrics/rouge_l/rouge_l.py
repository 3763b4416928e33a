"""``rouge_l`` as an ``evaluate`` metric (loads offline: ``evaluate.load(<this folder>)``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import evaluate

from evolkv_hf.metrics.info import metric_info
from evolkv_hf.metrics.scoring import rouge_l as _score
from evolkv_hf.metrics.scoring import score_samples

_DESCRIPTION = """ROUGE-L F-measure (``rouge_score``, no stemming, ASCII letters and digits only) of the
prediction against each reference, the best over references, averaged over samples.
"""


class RougeL(evaluate.Metric):
    """ROUGE-L F-measure against the closest reference, in percent.

    Examples
    --------
    >>> from evolkv_hf.metrics import load_metric
    >>> result = load_metric("rouge_l").compute(predictions=["the cat sat"], references=[["cat sat on"]])
    >>> round(result["rouge_l"], 2)
    66.67
    """

    def _info(self) -> Any:
        return metric_info("rouge_l", _DESCRIPTION)

    def score_samples(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
        """Score of each sample, from 0 to 100."""
        return score_samples(_score, predictions, references)

    def _compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        scores = self.score_samples(predictions, references)
        if not scores:
            raise ValueError("rouge_l: no predictions to score")
        return {"rouge_l": sum(scores) / len(scores)}
