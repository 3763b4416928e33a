"""``edit_sim`` as an ``evaluate`` metric (loads offline: ``evaluate.load(<this folder>)``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import evaluate

from evolkv_hf.metrics.info import metric_info
from evolkv_hf.metrics.scoring import edit_sim as _score
from evolkv_hf.metrics.scoring import score_samples

_DESCRIPTION = """Edit similarity: rapidfuzz ``fuzz.ratio`` (normalised Indel similarity, 0-100) of the
prediction's first non-empty line against the closest reference, both lower-cased and stripped of
surrounding whitespace and punctuation; averaged over samples. Gives partial credit to a partial
copy of a needle (``"8052"`` for ``"8056020"``: 72.7) where exact match gives 0.
Pass ``use_first_line=False`` to ``compute`` to compare the whole stripped prediction.
"""


class EditSim(evaluate.Metric):
    """Edit similarity of the prediction's first line to the closest reference, in percent.

    Examples
    --------
    >>> from evolkv_hf.metrics import load_metric
    >>> result = load_metric("edit_sim").compute(
    ...     predictions=["8056020.", "8052"], references=[["8056020"], ["8056020"]]
    ... )
    >>> round(result["edit_sim"], 2)
    86.36
    """

    def _info(self) -> Any:
        return metric_info("edit_sim", _DESCRIPTION)

    def score_samples(
        self, predictions: Sequence[str], references: Sequence[Sequence[str]], use_first_line: bool = True
    ) -> list[float]:
        """Score of each sample, from 0 to 100."""
        return score_samples(_score, predictions, references, use_first_line=use_first_line)

    def _compute(
        self, predictions: Sequence[str], references: Sequence[Sequence[str]], use_first_line: bool = True
    ) -> dict[str, float]:
        scores = self.score_samples(predictions, references, use_first_line=use_first_line)
        if not scores:
            raise ValueError("edit_sim: no predictions to score")
        return {"edit_sim": sum(scores) / len(scores)}
