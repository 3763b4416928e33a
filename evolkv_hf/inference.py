"""Answer the samples of a task dataset with a given cache: the plain (reference) generation path.

Each sample is turned into a prompt by :func:`evolkv_hf.tasks.prompts.build_prompt`. In
``query_aware`` mode (the default) the whole prompt, question included, is prefilled (and compressed)
at once; in ``query_agnostic`` mode the context is prefilled and compressed alone, then the question is
fed to the compressed cache and the answer generated. Rows are left-padded into batches; decoding is
greedy.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Cache, DynamicCache

QUERY_AWARE = "query_aware"
QUERY_AGNOSTIC = "query_agnostic"
MODES = (QUERY_AWARE, QUERY_AGNOSTIC)

CacheFactory = Callable[[], Cache]


@dataclass(frozen=True)
class EncodedSample:
    """Token ids of one sample: the part compressed in query-agnostic mode, and the rest."""

    context_ids: list[int]
    question_ids: list[int]
    max_new_tokens: int
    mode: str

    @property
    def prompt_ids(self) -> list[int]:
        return self.context_ids + self.question_ids


def encode_samples(
    samples: Iterable[Mapping[str, Any]], tokenizer: Any, *, mode: str | None = None
) -> list[EncodedSample]:
    """Tokenise task samples (``mode`` overrides each sample's ``mode`` column)."""
    from .tasks.prompts import build_prompt, encode_prompt

    encoded = []
    for sample in samples:
        sample_mode = mode or sample.get("mode") or QUERY_AWARE
        if sample_mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {sample_mode!r}.")
        context_ids, question_ids = encode_prompt(build_prompt(sample, tokenizer), tokenizer)
        encoded.append(
            EncodedSample(
                context_ids=list(context_ids),
                question_ids=list(question_ids),
                max_new_tokens=int(sample["max_new_tokens"]),
                mode=sample_mode,
            )
        )
    return encoded


def cache_keyword(model: Any) -> str:
    """The keyword this transformers version uses for the cache (``cache`` since 5.24)."""
    parameters = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def pad_token_id(tokenizer: Any, model: Any) -> int:
    for candidate in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(model.generation_config, "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if isinstance(candidate, int):
            return candidate
    return 0


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad rows of token ids; returns ``(input_ids, attention_mask)``."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[index, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def truncate_answer(tokens: Sequence[int], max_new_tokens: int, eos: set[int]) -> list[int]:
    """The answer tokens: up to the first end-of-sequence token and at most ``max_new_tokens``."""
    answer = []
    for token in list(tokens)[:max_new_tokens]:
        if token in eos:
            break
        answer.append(int(token))
    return answer


def greedy_generate(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: Cache,
    max_new_tokens: int,
    pad_id: int,
) -> torch.Tensor:
    """``model.generate`` with greedy decoding and ``cache``: every answering path goes through here, so that
    the plain path and the prefill-once engine decode identically.

    Greedy means the argmax at every step: settings a model ships in its ``generation_config`` that would
    change it (a repetition penalty, n-gram bans, beams, a minimum length, suppressed tokens) are switched
    off, since ``generate`` fills every setting left unset from there. (The prefill-once engine splits the
    decoding in two ``generate`` calls, so a setting that counted steps from the start would apply twice.)
    """
    return model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_new_tokens=0,  # takes precedence over a min_length in the model's generation_config
        suppress_tokens=[],  # empty lists, not None: None would be filled in from the generation_config
        begin_suppress_tokens=[],
        pad_token_id=pad_id,
        **{cache_keyword(model): cache},
    )


@torch.no_grad()
def generate_batch(
    model: Any,
    tokenizer: Any,
    batch: Sequence[EncodedSample],
    cache: Cache | None,
) -> list[list[int]]:
    """Greedy answers (token ids) for samples sharing one mode, with ``cache`` (a fresh one per batch)."""
    modes = {sample.mode for sample in batch}
    if len(modes) != 1:
        raise ValueError("A batch must hold samples of one prompt mode.")
    device = model.device
    pad = pad_token_id(tokenizer, model)
    eos = eos_token_ids(model, tokenizer)
    cache = cache if cache is not None else DynamicCache(config=model.config)
    keyword = cache_keyword(model)
    max_new = max(sample.max_new_tokens for sample in batch)
    if modes == {QUERY_AWARE}:
        input_ids, attention_mask = left_pad([s.prompt_ids for s in batch], pad, device)
    else:
        context_ids, context_mask = left_pad([s.context_ids for s in batch], pad, device)
        # Positions from the padding mask, as generate computes them for the question that follows.
        model(
            input_ids=context_ids,
            attention_mask=context_mask,
            position_ids=(context_mask.cumsum(-1) - 1).clamp_min(0),
            use_cache=True,
            logits_to_keep=1,
            **{keyword: cache},
        )
        question_ids, question_mask = left_pad([s.question_ids for s in batch], pad, device)
        input_ids = torch.cat([context_ids, question_ids], dim=1)
        attention_mask = torch.cat([context_mask, question_mask], dim=1)
    output = greedy_generate(model, input_ids, attention_mask, cache, max_new, pad)
    new_tokens = output[:, input_ids.shape[1] :].tolist()
    return [
        truncate_answer(tokens, sample.max_new_tokens, eos)
        for tokens, sample in zip(new_tokens, batch, strict=False)
    ]


def generate_answers(
    model: Any,
    tokenizer: Any,
    samples: Sequence[EncodedSample],
    cache_factory: CacheFactory | None = None,
    *,
    batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers for encoded samples, in order.

    Parameters
    ----------
    cache_factory:
        Builds a fresh cache for each batch (``None``: the full ``DynamicCache``).
    batch_size:
        Samples decoded together (left-padded).
    progress:
        Called with the number of samples finished after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    answers: list[str] = [""] * len(samples)
    by_mode: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        by_mode.setdefault(sample.mode, []).append(index)
    for indices in by_mode.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            cache = cache_factory() if cache_factory is not None else None
            tokens = generate_batch(model, tokenizer, [samples[i] for i in chunk], cache)
            for index, answer in zip(chunk, tokens, strict=False):
                answers[index] = tokenizer.decode(answer, skip_special_tokens=True).strip()
            if progress is not None:
                progress(len(chunk))
    return answers


def hub_model_id(model: Any) -> str | None:
    """The model's Hub repo id (the demo model's too), or ``None`` for a model loaded from another local directory
    or built in memory: a directory name is not a repo id, even when it looks like one."""
    name = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not name:
        return None
    if os.path.isdir(name):
        try:
            from .demo import DEMO_MODEL_ID, demo_checkpoint_dir

            if Path(name).resolve() == demo_checkpoint_dir().resolve():
                return DEMO_MODEL_ID
        except ImportError:  # the demo module is optional here
            pass
        return None
    return str(name)


def local_model_path(model: Any) -> str | None:
    """The resolved directory a model was loaded from, or ``None`` (a Hub id, the demo model, in memory).

    Two local checkpoints can share a folder name (``runA/final``, ``runB/final``); their paths tell them
    apart where :func:`model_name` does not.
    """
    name = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not name or not os.path.isdir(name) or hub_model_id(model) is not None:
        return None
    return str(Path(name).resolve())


def model_name(model: Any) -> str:
    """A readable model name for provenance: the Hub id (the demo model's too), else the directory name."""
    hub_id = hub_model_id(model)
    if hub_id is not None:
        return hub_id
    name = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not name:
        return type(model).__name__
    return Path(name).resolve().name
