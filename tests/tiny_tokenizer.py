"""A tiny word-level tokenizer matching ``tiny_models.VOCAB`` and tiny task datasets, for harness tests."""

from __future__ import annotations

import random
from typing import Any

from tiny_models import VOCAB

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
WORDS = (
    [str(d) for d in range(10)]
    + [".", ",", ":", "?"]
    + [
        "the",
        "a",
        "of",
        "and",
        "to",
        "in",
        "is",
        "it",
        "that",
        "was",
        "for",
        "on",
        "are",
        "with",
        "as",
        "at",
        "be",
        "this",
        "have",
        "from",
        "or",
        "by",
        "one",
        "all",
        "we",
        "when",
        "your",
        "can",
        "said",
        "there",
        "use",
        "each",
        "which",
        "she",
        "do",
        "how",
        "their",
        "if",
        "will",
        "up",
        "other",
        "about",
        "out",
        "many",
        "then",
        "them",
    ]
    + ["What", "Answer", "The", "magic", "number", "key", "sky", "blue", "red", "colour"]
)


def tiny_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` whose ids all fit in ``VOCAB`` (no chat template)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIALS + WORDS)}
    if len(vocab) > VOCAB:
        raise RuntimeError(f"tiny vocabulary too large: {len(vocab)} > {VOCAB}")
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def tiny_rows(
    num_samples: int = 4, words: int = 60, seed: int = 0, task: str = "niah_single"
) -> list[dict[str, Any]]:
    """Rows of the task schema over the tiny vocabulary (a 'magic number' needle in filler words)."""
    rng = random.Random(seed)
    filler = [w for w in WORDS[14:] if w[0].islower()]
    rows = []
    for index in range(num_samples):
        number = " ".join(rng.choice("0123456789") for _ in range(3))
        text = [rng.choice(filler) for _ in range(words)]
        text[words // 2 : words // 2] = ["The", "magic", "number", "is", *number.split(), "."]
        rows.append(
            {
                "context": " ".join(text),
                "question": "What is the magic number ?",
                "answer_prefix": "The magic number is",
                "answers": [number],
                "max_new_tokens": 3,
                "task": task,
                "mode": "query_aware",
                "context_length": words,
                "depth": 0.5,
                "seed": seed,
                "index": index,
            }
        )
    return rows
