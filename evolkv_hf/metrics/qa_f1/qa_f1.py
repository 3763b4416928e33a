"""``qa_f1`` as an ``evaluate`` metric (loads offline: ``evaluate.load(<this folder>)``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import evaluate

from evolkv_hf.metrics.info import SQUAD_CITATION, metric_info
from evolkv_hf.metrics.scoring import qa_f1 as _score
from evolkv_hf.metrics.scoring import score_samples

_DESCRIPTION = """SQuAD token F1: the F1 of the bag of normalised tokens of the prediction against each reference
(lower case, no punctuation, no articles a/an/the), the best over references, averaged over samples.
"""


class QaF1(evaluate.Metric):
    """SQuAD token F1 after answer normalisation, the best over references, in percent.

    Examples
    --------
    >>> from evolkv_hf.metrics import load_metric
    >>> result = load_metric("qa_f1").compute(
    ...     predictions=["in the 10th century"], references=[["10th century"]]
    ... )
    >>> round(result["qa_f1"], 2)
    80.0
    """

    def _info(self) -> Any:
        return metric_info("qa_f1", _DESCRIPTION, SQUAD_CITATION)

    def score_samples(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
        """Score of each sample, from 0 to 100."""
        return score_samples(_score, predictions, references)

    def _compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        scores = self.score_samples(predictions, references)
        if not scores:
            raise ValueError("qa_f1: no predictions to score")
        return {"qa_f1": sum(scores) / len(scores)}
