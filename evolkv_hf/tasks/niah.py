"""RULER-style needle-in-a-haystack tasks over the Paul Graham essays.

Needles read ``"One of the special magic numbers for {key} is: {value}."`` and are inserted between
sentences of a slice of the essays. Keys are ``"adjective-noun"`` pairs from an embedded word list;
values are 7-digit numbers, ``"adjective-noun"`` words or UUIDs.

- ``niah_single``: one needle, one question.
- ``niah_multikey``: the target needle among ``num_keys - 1`` distractor needles with other keys.
- ``niah_multivalue``: one key with ``num_values`` values; every value must be answered.
- ``niah_multiquery``: ``num_queries`` keys, all asked at once.

``depth`` is the position of the first answer's needle, as a fraction of the haystack's sentences
(0: before the first sentence, 1: after the last); the other needles go to random depths.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._validation import check_positive_int
from .common import check_common_args, make_row, resolve_depths, sample_rng
from .length import LENGTH_TOLERANCE, LengthFitError, check_length, count_tokens, fit_largest
from .sources import essay_words
from .words import key_vocabulary

if TYPE_CHECKING:
    import random

    from transformers import PreTrainedTokenizerBase

VALUE_KINDS: tuple[str, ...] = ("number", "word", "uuid")
"""Kinds of needle values: 7-digit numbers, ``"adjective-noun"`` words, UUIDs."""

NEEDLE_TEMPLATE = "One of the special magic {kinds} for {key} is: {value}."
"""RULER's needle sentence."""

_PLURALS = {"number": "numbers", "word": "words", "uuid": "uuids"}
_TOKENS_PER_VALUE = {"number": 12, "word": 12, "uuid": 40}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def niah_max_new_tokens(value_kind: str, num_answers: int) -> int:
    """Generation budget for ``num_answers`` values of ``value_kind`` (digits tokenize one by one)."""
    return 8 + _TOKENS_PER_VALUE[value_kind] * num_answers


def _random_value(rng: random.Random, kind: str) -> str:
    if kind == "number":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "word":
        vocabulary = key_vocabulary()
        return vocabulary[rng.randrange(len(vocabulary))]
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _join_keys(keys: Sequence[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


def _haystack(start: int, n: int) -> str:
    words = essay_words()
    start %= len(words)
    chunk = list(words[start : start + n])
    while len(chunk) < n:  # wrap around the essays
        chunk.extend(words[: n - len(chunk)])
    return " ".join(chunk)


_FIT_ATTEMPTS = 8


def _sentence_start(position: int) -> int:
    """The first word at or after ``position`` that starts a sentence (so haystacks start cleanly)."""
    words = essay_words()
    for offset in range(200):
        i = (position + offset) % len(words)
        if i == 0 or words[i - 1].endswith((".", "!", "?")):
            return i
    return position % len(words)


def _insert(text: str, needles: Sequence[tuple[float, str]]) -> str:
    sentences = _SENTENCE_END.split(text) if text else []
    slots: dict[int, list[str]] = {}
    for fraction, needle in needles:
        slots.setdefault(round(fraction * len(sentences)), []).append(needle)
    parts: list[str] = []
    for i in range(len(sentences) + 1):
        parts.extend(slots.get(i, ()))
        if i < len(sentences):
            parts.append(sentences[i])
    return " ".join(parts)


def generate_niah(
    tokenizer: PreTrainedTokenizerBase | Any,
    context_length: int,
    num_samples: int,
    seed: int = 0,
    *,
    task: str = "niah",
    num_keys: int = 1,
    num_values: int = 1,
    num_queries: int = 1,
    value_kind: str = "number",
    depths: float | Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """Generic RULER needle-in-a-haystack generator (the four ``niah_*`` tasks are special cases).

    Parameters
    ----------
    tokenizer
        Tokenizer that measures the context length.
    context_length
        Target context length in tokens.
    num_samples
        Number of samples.
    seed
        Seed; sample ``i`` depends only on ``(task, seed, i)`` and its depth.
    task
        Task name stored in the rows (and mixed into the seed).
    num_keys
        Needle keys in the haystack (``>= num_queries``).
    num_values
        Values (needles) per key.
    num_queries
        Keys asked; their values are the answers.
    value_kind
        One of :data:`VALUE_KINDS`.
    depths
        See :func:`~evolkv_hf.tasks.common.resolve_depths`.

    Returns
    -------
    list of dict
        Rows of the task schema, without ``mode``.
    """
    check_common_args(context_length, num_samples, seed)
    check_positive_int("num_keys", num_keys)
    check_positive_int("num_values", num_values)
    check_positive_int("num_queries", num_queries)
    if num_queries > num_keys:
        raise ValueError(f"num_queries ({num_queries}) must be <= num_keys ({num_keys})")
    if value_kind not in VALUE_KINDS:
        raise ValueError(f"value_kind must be one of {list(VALUE_KINDS)}, got {value_kind!r}")
    sample_depths = resolve_depths(depths, num_samples)
    vocabulary = key_vocabulary()
    kinds = _PLURALS[value_kind]
    num_words = len(essay_words())

    rows = []
    for index, depth in enumerate(sample_depths):
        rng = sample_rng(task, seed, index)
        keys = [vocabulary[i] for i in rng.sample(range(len(vocabulary)), num_keys)]
        values: list[list[str]] = []
        used = set(keys)
        for _ in keys:
            key_values: list[str] = []
            while len(key_values) < num_values:
                value = _random_value(rng, value_kind)
                if value not in used:
                    used.add(value)
                    key_values.append(value)
            values.append(key_values)
        queried = rng.sample(range(num_keys), num_queries)
        answers = [v for k in queried for v in values[k]]
        needles = []
        for k, key in enumerate(keys):
            for j, value in enumerate(values[k]):
                fraction = depth if (k == queried[0] and j == 0) else rng.random()
                needles.append((fraction, NEEDLE_TEMPLATE.format(kinds=kinds, key=key, value=value)))
        rng.shuffle(needles)  # needles sharing a slot appear in random order
        start = _sentence_start(rng.randrange(num_words))
        hi = 4 * context_length + 100
        # A single word can be many tokens (URLs, numbers): when the haystack starting here cannot land
        # within the tolerance, start at the next sentence (deterministic; other samples are unaffected).
        for _attempt in range(_FIT_ATTEMPTS):

            def build(n: int, start: int = start, needles: list[tuple[float, str]] = needles) -> str:
                return _insert(_haystack(start, n), needles)

            def tokens(n: int, build: Callable[[int], str] = build) -> int:
                return count_tokens(tokenizer, build(n))

            fit = fit_largest(
                tokens,
                context_length,
                0,
                hi,
                min(hi, context_length),
            )
            if fit is None:
                raise LengthFitError(
                    f"{task}: context_length={context_length} is too short for {len(needles)} needle(s)"
                )
            n, length = fit
            if length >= (1.0 - LENGTH_TOLERANCE) * context_length:
                break
            start = _sentence_start(start + 1)
        check_length(length, context_length, task)

        asked = _join_keys([keys[k] for k in queried])
        if len(answers) == 1:
            question = f"What is the special magic {value_kind} for {asked} mentioned in the provided text?"
            prefix = f"The special magic {value_kind} for {asked} mentioned in the provided text is"
        else:
            question = f"What are all the special magic {kinds} for {asked} mentioned in the provided text?"
            prefix = f"The special magic {kinds} for {asked} mentioned in the provided text are"
        rows.append(
            make_row(
                context=build(n),
                question=question,
                answer_prefix=prefix,
                answers=answers,
                max_new_tokens=niah_max_new_tokens(value_kind, len(answers)),
                task=task,
                context_length=length,
                depth=depth,
                seed=seed,
                index=index,
            )
        )
    return rows


def niah_single(
    tokenizer: PreTrainedTokenizerBase | Any,
    context_length: int,
    num_samples: int,
    seed: int = 0,
    *,
    value_kind: str = "number",
    depths: float | Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """One needle, one question (RULER ``niah_single_2``/``_3`` with ``value_kind`` number/uuid)."""
    return generate_niah(
        tokenizer, context_length, num_samples, seed, task="niah_single", value_kind=value_kind, depths=depths
    )


def niah_multikey(
    tokenizer: PreTrainedTokenizerBase | Any,
    context_length: int,
    num_samples: int,
    seed: int = 0,
    *,
    num_keys: int = 4,
    value_kind: str = "number",
    depths: float | Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """The target needle among ``num_keys - 1`` distractor needles (RULER ``niah_multikey_1``)."""
    return generate_niah(
        tokenizer,
        context_length,
        num_samples,
        seed,
        task="niah_multikey",
        num_keys=num_keys,
        value_kind=value_kind,
        depths=depths,
    )


def niah_multivalue(
    tokenizer: PreTrainedTokenizerBase | Any,
    context_length: int,
    num_samples: int,
    seed: int = 0,
    *,
    num_values: int = 4,
    value_kind: str = "number",
    depths: float | Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """One key with ``num_values`` values, all to be answered (RULER ``niah_multivalue``)."""
    return generate_niah(
        tokenizer,
        context_length,
        num_samples,
        seed,
        task="niah_multivalue",
        num_values=num_values,
        value_kind=value_kind,
        depths=depths,
    )


def niah_multiquery(
    tokenizer: PreTrainedTokenizerBase | Any,
    context_length: int,
    num_samples: int,
    seed: int = 0,
    *,
    num_queries: int = 4,
    value_kind: str = "number",
    depths: float | Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """``num_queries`` keys in the haystack, all asked at once (RULER ``niah_multiquery``)."""
    return generate_niah(
        tokenizer,
        context_length,
        num_samples,
        seed,
        task="niah_multiquery",
        num_keys=num_queries,
        num_queries=num_queries,
        value_kind=value_kind,
        depths=depths,
    )
