"""RULER-style long-context QA: ``squad`` and ``hotpotqa``.

The context is a list of documents (``"Document {i}:\\n{text}"``, RULER's format) holding the gold
document(s) of a question among distractors, filled until the target length (the last distractor
is cut at a word boundary to reach it).

- ``squad``: an answerable SQuAD v2 dev question; its gold paragraph among paragraphs of *other*
  articles (paragraphs of the same article could also answer it). ``depth`` places the gold
  paragraph (0: first document, 1: last).
- ``hotpotqa``: a HotpotQA dev (distractor) question; its supporting paragraphs and its own
  distractor paragraphs first, then paragraphs of other questions, all in random order
  (``depth`` is -1). Yes/no questions are left out (their answer is not in the context).

Questions are drawn without replacement in a seeded order; a question whose gold documents alone
exceed the target length is skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .common import check_common_args, make_row, resolve_depths, sample_rng
from .length import LengthFitError, check_length, count_tokens, fit_largest
from .sources import QAItem, QASource, hotpotqa_source, squad_source

if TYPE_CHECKING:
    import random

    from transformers import PreTrainedTokenizerBase

DOCUMENT_TEMPLATE = "Document {i}:\n{document}"
"""RULER's document format; documents are separated by a blank line."""

QA_QUESTION_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output any "
    "other words.\n\nQuestion: {question}"
)
"""RULER's QA instruction (given after the documents)."""

QA_MAX_NEW_TOKENS = 32
"""RULER's generation budget for QA."""


class _LazyPool:
    """Distractor document indices drawn on demand, deterministic for one sample."""

    def __init__(self, first: Sequence[int], draw: Callable[[], int | None]) -> None:
        self._items = list(first)
        self._draw = draw
        self._exhausted = False

    def take(self, n: int) -> list[int]:
        while len(self._items) < n and not self._exhausted:
            item = self._draw()
            if item is None:
                self._exhausted = True
            else:
                self._items.append(item)
        return self._items[:n]

    def available(self, n: int) -> int:
        return len(self.take(n))


class _LazyKeys:
    """Random sort keys drawn on demand: ``keys[j]`` never changes once drawn."""

    def __init__(self, seed: int) -> None:
        self._rng = sample_rng("qa-keys", seed, 0)
        self._keys: list[float] = []

    def __getitem__(self, j: int) -> float:
        while len(self._keys) <= j:
            self._keys.append(self._rng.random())
        return self._keys[j]


def _question_order(source: QASource, task: str, seed: int) -> list[int]:
    order = list(range(len(source.items)))
    sample_rng(task, seed, -1, "question-order").shuffle(order)
    return order


def _squad_pool(source: QASource, item: QAItem, rng: random.Random) -> _LazyPool:
    pool = [i for i, group in enumerate(source.document_groups) if group != item.group]
    rng.shuffle(pool)
    return _LazyPool(pool, lambda: None)


def _hotpot_pool(source: QASource, item: QAItem, rng: random.Random) -> _LazyPool:
    own = list(item.own_distractors)
    rng.shuffle(own)
    seen = set(item.gold) | set(own)
    n_docs = len(source.documents)

    def draw() -> int | None:
        for _ in range(1000):
            i = rng.randrange(n_docs)
            if i not in seen:
                seen.add(i)
                return i
        return None

    return _LazyPool(own, draw)


def _generate_qa(
    task: str,
    source: QASource,
    tokenizer: PreTrainedTokenizerBase | Any,
    context_length: int,
    num_samples: int,
    seed: int,
    depths: list[float] | None,
) -> list[dict[str, Any]]:
    """Shared QA generator: ``depths`` places the gold document (squad); ``None`` shuffles (hotpotqa)."""
    documents = source.documents
    order = _question_order(source, task, seed)
    make_pool = _squad_pool if depths is not None else _hotpot_pool
    cursor = 0
    rows: list[dict[str, Any]] = []
    for index in range(num_samples):
        depth = depths[index] if depths is not None else -1.0
        while True:
            if cursor >= len(order):
                raise LengthFitError(
                    f"{task}: not enough questions whose gold documents fit in context_length={context_length}"
                )
            item = source.items[order[cursor]]
            cursor += 1
            rng = sample_rng(task, seed, index, str(cursor))
            pool = make_pool(source, item, rng)
            gold_keys = [rng.random() for _ in item.gold]  # hotpotqa: documents sorted by random keys
            distractor_keys = _LazyKeys(rng.getrandbits(64))

            def build(
                k: int,
                cut_words: int = 0,
                item: QAItem = item,
                pool: _LazyPool = pool,
                depth: float = depth,
                gold_keys: list[float] = gold_keys,
                distractor_keys: _LazyKeys = distractor_keys,
            ) -> str:
                chosen = pool.take(k + (1 if cut_words else 0))
                texts = [documents[i] for i in chosen[:k]]
                if cut_words and len(chosen) > k:
                    texts.append(" ".join(documents[chosen[k]].split(" ")[:cut_words]))
                gold = [documents[g] for g in item.gold]
                if depths is not None:  # squad: the gold paragraph at the requested depth
                    at = round(depth * len(texts))
                    ordered = texts[:at] + gold + texts[at:]
                else:  # hotpotqa: a random order that adding a document does not reshuffle
                    tagged = [(distractor_keys[j], t) for j, t in enumerate(texts)]
                    tagged += list(zip(gold_keys, gold, strict=True))
                    ordered = [t for _, t in sorted(tagged)]
                return "\n\n".join(
                    DOCUMENT_TEMPLATE.format(i=i + 1, document=d) for i, d in enumerate(ordered)
                )

            def count(k: int, cut_words: int = 0, build: Callable[..., str] = build) -> int:
                return count_tokens(tokenizer, build(k, cut_words))

            hi = pool.available(context_length // 8 + 8)
            fit = fit_largest(count, context_length, 0, hi, probe=min(hi, max(1, context_length // 200)))
            if fit is None:
                continue  # the gold documents alone are too long: next question
            k, length = fit
            while k == hi and pool.available(2 * hi + 8) > hi:  # the pool ran short: draw more and refit
                hi = pool.available(2 * hi + 8)
                k, length = fit_largest(count, context_length, k, hi, probe=hi) or (k, length)
            cut = 0
            if pool.available(k + 1) > k:  # fill the rest with the start of one more distractor
                n_words = len(documents[pool.take(k + 1)[k]].split(" "))
                partial = fit_largest(
                    functools.partial(count, k), context_length, 0, n_words - 1, probe=n_words - 1
                )
                if partial is not None:
                    cut, length = partial
            try:
                check_length(length, context_length, task)
            except LengthFitError:
                continue  # at short lengths one more document header can overshoot the window: next question
            break
        rows.append(
            make_row(
                context=build(k, cut),
                question=QA_QUESTION_TEMPLATE.format(question=item.question),
                answer_prefix="",
                answers=item.answers,
                max_new_tokens=QA_MAX_NEW_TOKENS,
                task=task,
                context_length=length,
                depth=depth,
                seed=seed,
                index=index,
            )
        )
    return rows


def squad(
    tokenizer: PreTrainedTokenizerBase | Any,
    context_length: int,
    num_samples: int,
    seed: int = 0,
    *,
    depths: float | Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """SQuAD v2 (answerable) questions with the gold paragraph among other articles' paragraphs.

    Parameters
    ----------
    tokenizer
        Tokenizer that measures the context length.
    context_length
        Target context length in tokens (at most about 170k tokens of SQuAD paragraphs exist).
    num_samples
        Number of samples (distinct questions).
    seed
        Seed for the question order and the distractors.
    depths
        Position of the gold paragraph; see :func:`~evolkv_hf.tasks.common.resolve_depths`.

    Returns
    -------
    list of dict
        Rows of the task schema, without ``mode``; ``answers`` are the distinct gold answers.
    """
    check_common_args(context_length, num_samples, seed)
    return _generate_qa(
        "squad",
        squad_source(),
        tokenizer,
        context_length,
        num_samples,
        seed,
        resolve_depths(depths, num_samples),
    )


def hotpotqa(
    tokenizer: PreTrainedTokenizerBase | Any,
    context_length: int,
    num_samples: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """HotpotQA questions with their supporting and distractor paragraphs, plus other questions' paragraphs.

    Parameters
    ----------
    tokenizer
        Tokenizer that measures the context length.
    context_length
        Target context length in tokens.
    num_samples
        Number of samples (distinct questions).
    seed
        Seed for the question order, the extra paragraphs and the document order.

    Returns
    -------
    list of dict
        Rows of the task schema (``depth`` is -1), without ``mode``.
    """
    check_common_args(context_length, num_samples, seed)
    return _generate_qa("hotpotqa", hotpotqa_source(), tokenizer, context_length, num_samples, seed, None)
