"""``exact_match`` as an ``evaluate`` metric (loads offline: ``evaluate.load(<this folder>)``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import evaluate

from evolkv_hf.metrics.info import SQUAD_CITATION, metric_info
from evolkv_hf.metrics.scoring import exact_match as _score
from evolkv_hf.metrics.scoring import score_samples

_DESCRIPTION = """SQuAD exact match: 100 for a sample if its prediction equals one of its references after
normalisation (lower case, no punctuation, no articles a/an/the, single spaces), else 0.
"""


class ExactMatch(evaluate.Metric):
    """SQuAD exact match after answer normalisation, the best over references, in percent.

    Examples
    --------
    >>> from evolkv_hf.metrics import load_metric
    >>> result = load_metric("exact_match").compute(
    ...     predictions=["The Normans."], references=[["Normans", "the Norse"]]
    ... )
    >>> round(result["exact_match"], 2)
    100.0
    """

    def _info(self) -> Any:
        return metric_info("exact_match", _DESCRIPTION, SQUAD_CITATION)

    def score_samples(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
        """Score of each sample, from 0 to 100."""
        return score_samples(_score, predictions, references)

    def _compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        scores = self.score_samples(predictions, references)
        if not scores:
            raise ValueError("exact_match: no predictions to score")
        return {"exact_match": sum(scores) / len(scores)}
