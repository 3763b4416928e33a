"""RULER common words extraction (``cwe``): find the most frequent words of a long numbered list.

The context is ``"1. word 2. word ..."``: ``num_common`` words repeated ``freq_common`` times each,
among other words repeated ``freq_uncommon`` times, shuffled. RULER's defaults are used: 30 and 3
repetitions from 4,096 tokens on, 6 and 1 below. Past what the embedded vocabulary can fill, both
frequencies are multiplied by the same factor. Unlike RULER, no few-shot example is prepended.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .common import check_common_args, check_positive_int, make_row, sample_rng
from .length import LENGTH_TOLERANCE, LengthFitError, check_length, count_tokens, fit_largest
from .words import common_words_vocabulary

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def common_words_extraction(
    tokenizer: PreTrainedTokenizerBase | Any,
    context_length: int,
    num_samples: int,
    seed: int = 0,
    *,
    num_common: int = 10,
    freq_common: int | None = None,
    freq_uncommon: int | None = None,
) -> list[dict[str, Any]]:
    """Generate common-words-extraction samples (RULER ``cwe``).

    Parameters
    ----------
    tokenizer
        Tokenizer that measures the context length.
    context_length
        Target context length in tokens.
    num_samples
        Number of samples.
    seed
        Seed; sample ``i`` depends only on ``(seed, i)``.
    num_common
        Number of frequent words (the answers).
    freq_common, freq_uncommon
        Repetitions of frequent and other words (default: RULER's 30/3 from 4,096 tokens, 6/1 below).

    Returns
    -------
    list of dict
        Rows of the task schema (``depth`` is -1), without ``mode``.
    """
    check_common_args(context_length, num_samples, seed)
    check_positive_int("num_common", num_common)
    large = context_length >= 4096
    freq_common = check_positive_int(
        "freq_common", freq_common if freq_common is not None else (30 if large else 6)
    )
    freq_uncommon = check_positive_int(
        "freq_uncommon", freq_uncommon if freq_uncommon is not None else (3 if large else 1)
    )
    if freq_common <= freq_uncommon:
        raise ValueError(f"freq_common ({freq_common}) must be greater than freq_uncommon ({freq_uncommon})")
    vocabulary = common_words_vocabulary()
    if num_common >= len(vocabulary):
        raise ValueError(f"num_common must be < {len(vocabulary)} (the vocabulary size)")

    rows = []
    for index in range(num_samples):
        rng = sample_rng("cwe", seed, index)
        words = rng.sample(vocabulary, len(vocabulary))
        common = words[:num_common]
        order_seed = rng.getrandbits(64)

        def build(n_words: int, scale: int, words: list[str] = words, order_seed: int = order_seed) -> str:
            listed = words[:num_common] * (freq_common * scale)
            listed += words[num_common:n_words] * (freq_uncommon * scale)
            sample_rng("cwe-order", order_seed, n_words, str(scale)).shuffle(listed)
            return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed))

        def count(n_words: int, scale: int, build: Callable[[int, int], str] = build) -> int:
            return count_tokens(tokenizer, build(n_words, scale))

        lo, hi = num_common, len(words)
        scale, fit = 1, None
        for _ in range(8):
            fit = fit_largest(functools.partial(count, scale=scale), context_length, lo, hi, probe=hi)
            if fit is None:
                break
            if fit[0] < hi or fit[1] >= (1 - LENGTH_TOLERANCE) * context_length:
                break
            full = count_tokens(tokenizer, build(hi, 1))  # vocabulary exhausted: repeat every word more
            scale = max(scale + 1, math.ceil(context_length / full))
        if fit is None:
            raise LengthFitError(
                f"cwe: context_length={context_length} is too short for {num_common} words repeated "
                f"{freq_common * scale} times; lower freq_common or num_common"
            )
        n_words, length = fit
        check_length(length, context_length, "cwe")
        rows.append(
            make_row(
                context=build(n_words, scale),
                question=(
                    "Above is a numbered list of words. In these words, some appear more often than others. "
                    f"Question: What are the {num_common} most common words in the above list?"
                ),
                answer_prefix=f"The top {num_common} words that appear most often in the list are:",
                answers=common,
                max_new_tokens=max(120, 12 * num_common),
                task="cwe",
                context_length=length,
                depth=-1.0,
                seed=seed,
                index=index,
            )
        )
    return rows
