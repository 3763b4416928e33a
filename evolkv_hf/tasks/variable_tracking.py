"""RULER variable tracking (``vt``): follow chains of variable assignments hidden in noise.

A chain reads ``VAR ABCDE = 12345``, ``VAR FGHIJ = VAR ABCDE``, ... (``num_hops`` hops); its
statements appear in order, at random positions between repetitions of RULER's noise sentences
("The grass is green. The sky is blue. ..."). ``num_chains - 1`` other chains with other values are
distractors. The question asks for every variable assigned the first chain's value.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING, Any

from .._validation import check_positive_int
from .common import check_common_args, make_row, sample_rng
from .length import LengthFitError, check_length, count_tokens, fit_largest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

NOISE_SENTENCES: tuple[str, ...] = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
"""RULER's noise, cycled sentence by sentence."""


def variable_tracking(
    tokenizer: PreTrainedTokenizerBase | Any,
    context_length: int,
    num_samples: int,
    seed: int = 0,
    *,
    num_chains: int = 1,
    num_hops: int = 4,
) -> list[dict[str, Any]]:
    """Generate variable-tracking samples (RULER ``vt``: one chain of four hops by default).

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
    num_chains
        Chains in the context; the first one is asked about.
    num_hops
        Assignments after the first in each chain; the answer has ``num_hops + 1`` variables.

    Returns
    -------
    list of dict
        Rows of the task schema (``depth`` is -1), without ``mode``.
    """
    check_common_args(context_length, num_samples, seed)
    check_positive_int("num_chains", num_chains)
    check_positive_int("num_hops", num_hops, minimum=0)
    rows = []
    for index in range(num_samples):
        rng = sample_rng("vt", seed, index)
        names: list[str] = []
        while len(names) < num_chains * (num_hops + 1):
            name = "".join(rng.choices(string.ascii_uppercase, k=5))
            if name not in names:
                names.append(name)
        chain_values: list[int] = []
        while len(chain_values) < num_chains:
            value = rng.randint(10000, 99999)
            if value not in chain_values:
                chain_values.append(value)
        statements: list[tuple[float, int, str]] = []  # (position fraction, order, text)
        for c in range(num_chains):
            chain = names[c * (num_hops + 1) : (c + 1) * (num_hops + 1)]
            texts = [f"VAR {chain[0]} = {chain_values[c]}"]
            texts += [f"VAR {chain[j + 1]} = VAR {chain[j]}" for j in range(num_hops)]
            fractions = sorted(rng.random() for _ in texts)
            statements += [
                (f, len(statements) + j, t) for j, (f, t) in enumerate(zip(fractions, texts, strict=True))
            ]
        statements.sort()

        def build(n: int, statements: list[tuple[float, int, str]] = statements) -> str:
            units = [NOISE_SENTENCES[i % len(NOISE_SENTENCES)] for i in range(n)]
            for offset, (fraction, _, text) in enumerate(statements):
                units.insert(round(fraction * n) + offset, text)
            return " ".join(units)

        hi = 2 * context_length + 10
        fit = fit_largest(
            lambda n: count_tokens(tokenizer, build(n)), context_length, 0, hi, min(hi, context_length // 4)
        )
        if fit is None:
            raise LengthFitError(
                f"vt: context_length={context_length} is too short for {len(statements)} statements"
            )
        n, length = fit
        check_length(length, context_length, "vt")
        answers = names[: num_hops + 1]
        value = chain_values[0]
        rows.append(
            make_row(
                context=build(n),
                question=(
                    "The text above hides one or more chains of variable assignments. "
                    f"Question: Find all variables that are assigned the value {value} in the text above."
                ),
                answer_prefix=(
                    "According to the chain(s) of variable assignment in the text above, "
                    f"{len(answers)} variables are assigned the value {value}, they are:"
                ),
                answers=answers,
                max_new_tokens=30 if len(answers) <= 5 else 6 * len(answers),
                task="vt",
                context_length=length,
                depth=-1.0,
                seed=seed,
                index=index,
            )
        )
    return rows
