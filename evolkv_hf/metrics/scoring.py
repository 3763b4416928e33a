"""Per-sample scoring functions behind the metrics, in ``[0, 100]`` (plain Python, no ``evaluate``).

Every function takes one prediction and the list of its accepted references.
"""

from __future__ import annotations

import collections
import functools
import re
import string
from collections.abc import Callable, Sequence
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b", flags=re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)
_EDGE_CHARACTERS = string.whitespace + ".,;:!?\"'`()[]{}<>"


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, drop punctuation, drop articles, collapse whitespace.

    Examples
    --------
    >>> normalize_answer("  The  Eiffel-Tower! ")
    'eiffeltower'
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _check_substring_references(references: Sequence[str], metric: str) -> None:
    """A blank reference is a substring of every prediction: it would score 100 whatever the model said."""
    blank = [r for r in references if not r.strip()]
    if blank:
        raise ValueError(
            f"{metric}: reference {blank[0]!r} is blank, and a blank reference is found in every prediction; "
            "remove blank answers from the references (or use 'exact_match' for unanswerable questions)."
        )


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """RULER: percentage of the references found in the prediction (case-insensitive substring).

    Examples
    --------
    >>> string_match_all("The numbers are 12 and 34.", ["12", "34", "56", "78"])
    50.0
    """
    _check_substring_references(references, "string_match_all")
    lowered = prediction.lower()
    return 100.0 * sum(r.lower() in lowered for r in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """RULER: 100 if any reference is in the prediction (case-insensitive substring), else 0.

    Examples
    --------
    >>> string_match_part("It was Paris, France.", ["France", "Lyon"])
    100.0
    """
    _check_substring_references(references, "string_match_part")
    lowered = prediction.lower()
    return 100.0 * any(r.lower() in lowered for r in references)


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """SQuAD exact match: 100 if the normalised prediction equals a normalised reference.

    Examples
    --------
    >>> exact_match("the Norman conquest.", ["Norman Conquest"])
    100.0
    """
    normalized = normalize_answer(prediction)
    return 100.0 * any(normalized == normalize_answer(r) for r in references)


def _token_f1(prediction: str, reference: str) -> float:
    predicted = normalize_answer(prediction).split()
    gold = normalize_answer(reference).split()
    if not predicted or not gold:  # SQuAD v2: both empty is a match, one empty is not
        return float(predicted == gold)
    same = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD token F1 (after :func:`normalize_answer`), the best over the references.

    Examples
    --------
    >>> round(qa_f1("in the 10th century", ["10th and 11th centuries", "10th century"]), 2)
    80.0
    """
    return 100.0 * max(_token_f1(prediction, r) for r in references)


def _strip_edges(text: str) -> str:
    return text.strip(_EDGE_CHARACTERS)


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, stripped (``""`` if none)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def edit_sim(prediction: str, references: Sequence[str], *, use_first_line: bool = True) -> float:
    """Edit similarity (rapidfuzz ``fuzz.ratio``, normalised Indel distance) to the closest reference.

    The prediction's first non-empty line (or the whole stripped text with ``use_first_line=False``)
    and each reference are lower-cased and stripped of surrounding whitespace and punctuation
    (``.,;:!?"'`()[]{}<>``). A partial copy of a needle gets partial credit: ``"8052"`` against
    ``"8056020"`` scores 72.7 where exact match gives 0.

    Examples
    --------
    >>> round(edit_sim("8052.", ["8056020"]), 1)
    72.7
    >>> edit_sim(" 8056020.\\nThe special magic number is 8056020.", ["8056020"])
    100.0
    """
    from rapidfuzz import fuzz

    candidate = first_line(prediction) if use_first_line else prediction
    candidate = _strip_edges(candidate).lower()
    best = 0.0
    for reference in references:
        target = _strip_edges(reference).lower()
        score = 100.0 if candidate == target else float(fuzz.ratio(candidate, target))
        best = max(best, score)
    return best


@functools.cache
def _rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer  # type: ignore[import-untyped]
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The rouge_l metric needs the 'rouge_score' package: pip install rouge_score"
        ) from error
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F-measure (``rouge_score``, no stemming), the best over the references.

    ``rouge_score``'s tokenizer keeps only ASCII letters and digits (lower-cased): text in other
    scripts scores 0.

    Examples
    --------
    >>> round(rouge_l("the cat sat", ["cat sat on"]), 2)
    66.67
    """
    scorer = _rouge_scorer()
    return 100.0 * max(scorer.score(r, prediction)["rougeL"].fmeasure for r in references)


SCORERS: dict[str, Callable[..., float]] = {
    "string_match_all": string_match_all,
    "string_match_part": string_match_part,
    "exact_match": exact_match,
    "qa_f1": qa_f1,
    "edit_sim": edit_sim,
    "rouge_l": rouge_l,
}
"""Per-sample scoring function of each metric."""


def score_samples(
    scorer: Callable[..., float],
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    **kwargs: Any,
) -> list[float]:
    """Apply a per-sample ``scorer`` after checking the inputs; raise ``ValueError`` on bad input."""
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} reference lists")
    scores = []
    for i, (prediction, refs) in enumerate(zip(predictions, references, strict=True)):
        if not isinstance(prediction, str):
            raise ValueError(f"prediction {i} must be a string, got {type(prediction).__name__}")
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references {i} must be a non-empty list of strings, got {refs!r:.80}")
        scores.append(float(scorer(prediction, list(refs), **kwargs)))
    return scores
