"""The one dataset schema shared by every task, and its validation.

Every task is a :class:`datasets.Dataset` with the columns of :data:`REQUIRED_COLUMNS` plus metadata
(:data:`METADATA_COLUMNS`). Any user dataset with the required columns works wherever a built-in
task does: check it with :func:`validate_task_dataset`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets

REQUIRED_COLUMNS: tuple[str, ...] = ("context", "question", "answer_prefix", "answers", "max_new_tokens")
"""Columns every task dataset must have.

``context`` (str): the text to read (compressed alone in query-agnostic mode); ``question`` (str):
what is asked after it, with any task instructions; ``answer_prefix`` (str): text the assistant's
answer starts with (may be empty); ``answers`` (list of str): accepted answers; ``max_new_tokens``
(int): generation budget.
"""

METADATA_COLUMNS: tuple[str, ...] = ("task", "mode", "context_length", "depth", "seed", "index")
"""Columns the built-in tasks add: task name, prompt mode, context length in tokens, needle depth
in ``[0, 1]`` (``-1`` when not applicable), seed and sample index."""

MODES: tuple[str, ...] = ("query_aware", "query_agnostic")
"""Prompt modes: the question is inside the compressed prompt (SnapKV's standard) or asked after
the context was compressed alone."""

TASK_FEATURES = datasets.Features(
    {
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answer_prefix": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")),
        "max_new_tokens": datasets.Value("int64"),
        "task": datasets.Value("string"),
        "mode": datasets.Value("string"),
        "context_length": datasets.Value("int64"),
        "depth": datasets.Value("float64"),
        "seed": datasets.Value("int64"),
        "index": datasets.Value("int64"),
    }
)
"""Features of the datasets returned by :func:`~evolkv_hf.tasks.load_task`."""

_STRING_DTYPES = ("string", "large_string")
_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _is_string(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in _STRING_DTYPES


def _is_string_list(feature: Any) -> bool:
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        return _is_string(feature.feature)
    if isinstance(feature, list) and len(feature) == 1:  # legacy list-of-feature notation
        return _is_string(feature[0])
    return False


def validate_task_dataset(dataset: datasets.Dataset) -> None:
    """Check that ``dataset`` can be used as a task; raise a ``ValueError`` that says what is wrong.

    Checks the presence and types of :data:`REQUIRED_COLUMNS`, that the dataset is not empty, that
    every ``context`` is non-blank, that every ``answers`` list is non-empty and holds no empty answer,
    that ``max_new_tokens`` is positive and, when a ``mode`` column is present, that its values are in
    :data:`MODES`.

    Parameters
    ----------
    dataset
        A :class:`datasets.Dataset`.

    Raises
    ------
    TypeError
        If ``dataset`` is not a :class:`datasets.Dataset`.
    ValueError
        Listing every problem found.

    Examples
    --------
    >>> import datasets
    >>> ds = datasets.Dataset.from_list(
    ...     [
    ...         {
    ...             "context": "The sky is blue.",
    ...             "question": "What colour is the sky?",
    ...             "answer_prefix": "The sky is",
    ...             "answers": ["blue"],
    ...             "max_new_tokens": 8,
    ...         }
    ...     ]
    ... )
    >>> validate_task_dataset(ds)  # no error
    """
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"Expected a datasets.Dataset, got {type(dataset).__name__}; build one with "
            "datasets.Dataset.from_list(rows) (an IterableDataset must be materialised first)."
        )
    features = dataset.features
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in features]
    if missing:
        problems.append(f"missing required column(s) {missing} (required: {list(REQUIRED_COLUMNS)})")
    for column in ("context", "question", "answer_prefix"):
        if column in features and not _is_string(features[column]):
            problems.append(f"column {column!r} must be of type Value('string'), got {features[column]}")
    if "answers" in features and not _is_string_list(features["answers"]):
        hint = ""
        if _is_string(features["answers"]):
            hint = "; wrap single answers in a list, e.g. ds.map(lambda r: {'answers': [r['answers']]})"
        problems.append(
            f"column 'answers' must be a list of strings (List(Value('string'))), got {features['answers']}{hint}"
        )
    if "max_new_tokens" in features:
        feature = features["max_new_tokens"]
        if not (isinstance(feature, datasets.Value) and feature.dtype in _INT_DTYPES):
            problems.append(f"column 'max_new_tokens' must be an integer Value, got {feature}")
    if "mode" in features and not _is_string(features["mode"]):
        problems.append(f"column 'mode' must be of type Value('string'), got {features['mode']}")
    if len(dataset) == 0:
        problems.append("the dataset is empty")
    if problems:
        raise ValueError("Invalid task dataset: " + "; ".join(problems) + ".")

    columns = {column: dataset[column] for column in ("context", "question", "answer_prefix", "answers")}
    for column in ("context", "question", "answer_prefix"):
        nulls = [i for i, value in enumerate(columns[column]) if value is None]
        if nulls:
            problems.append(f"rows {nulls[:10]} have no {column!r} (None)")
    blank_context = [
        i for i, value in enumerate(columns["context"]) if value is not None and not value.strip()
    ]
    if blank_context:
        problems.append(f"rows {blank_context[:10]} have an empty 'context' (there is nothing to compress)")
    empty = [i for i, answers in enumerate(columns["answers"]) if not answers]
    if empty:
        problems.append(f"rows {empty[:10]} have an empty 'answers' list")
    # An empty answer is found in every prediction by the substring metrics (string_match_*): it would score 100.
    blank = [
        i
        for i, answers in enumerate(columns["answers"])
        if answers and any(answer is None or not answer.strip() for answer in answers)
    ]
    if blank:
        problems.append(
            f"rows {blank[:10]} have an empty or missing answer in 'answers' (every prediction would contain it); "
            "drop such answers, or the rows"
        )
    bad_budget = [i for i, n in enumerate(dataset["max_new_tokens"]) if n is None or n <= 0]
    if bad_budget:
        problems.append(f"rows {bad_budget[:10]} have a non-positive or missing 'max_new_tokens'")
    if "mode" in features:
        bad_mode = sorted({m for m in dataset["mode"] if m not in MODES}, key=str)
        if bad_mode:
            problems.append(f"column 'mode' has values {bad_mode}; allowed: {list(MODES)}")
    if problems:
        raise ValueError("Invalid task dataset: " + "; ".join(problems) + ".")


def rows_to_dataset(rows: Sequence[Mapping[str, Any]]) -> datasets.Dataset:
    """Build a task dataset with :data:`TASK_FEATURES` from generated rows (in memory)."""
    return datasets.Dataset.from_dict(
        {name: [row[name] for row in rows] for name in TASK_FEATURES}, features=TASK_FEATURES
    )
