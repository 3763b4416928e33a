"""Evaluating candidate allocations: the plain path and the prefill-once path.

With a prefill-time selector the prefill, and every layer's ranking of prompt positions, are the same
for every candidate allocation; a candidate only changes how many of the best-ranked positions each
layer keeps. :class:`PrefillOnceEngine` therefore runs each sample's prefill once with the full cache,
keeps per layer the full keys/values and the ranking, and evaluates a candidate by gathering the kept
entries and decoding many samples together: with one allocation every row has the same stored length
per layer (rows whose whole prompt fits a budget are the exception: they are left-padded with masked
entries), and positions and true lengths are carried by the attention mask exactly as for a
left-padded batch. For greedy decoding its answers are those of
:class:`PlainEngine`, which runs ``generate`` with a fresh ``EvolKVCache`` per batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from ..cache import EvolKVCache
from ..cache.layer import EvolKVLayer
from ..cache.policies import ScoringOptions, positions_from_ranking, rank_positions
from ..inference import (
    QUERY_AWARE,
    EncodedSample,
    cache_keyword,
    eos_token_ids,
    generate_answers,
    greedy_generate,
    left_pad,
    pad_token_id,
    truncate_answer,
)

Progress = Callable[[int], None]


class FitnessEngine(Protocol):
    """Turns a candidate allocation into the answers of the search samples."""

    def answers(self, budgets: Sequence[int], progress: Progress | None = None) -> list[str]: ...


@dataclass(frozen=True)
class CacheOptions:
    """The ``EvolKVCache`` options shared by every candidate."""

    window_size: int = 32
    kernel_size: int = 7
    pooling: str = "avg"
    gqa_aggregation: str = "mean"
    policy: str = "snapkv"

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "window_size": self.window_size,
            "kernel_size": self.kernel_size,
            "pooling": self.pooling,
            "gqa_aggregation": self.gqa_aggregation,
            "policy": self.policy,
        }


class PlainEngine:
    """Runs ``generate`` with a fresh ``EvolKVCache`` for every batch of every candidate."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        samples: Sequence[EncodedSample],
        options: CacheOptions,
        *,
        batch_size: int = 1,
    ) -> None:
        self.model, self.tokenizer, self.samples = model, tokenizer, list(samples)
        self.options, self.batch_size = options, batch_size

    def answers(self, budgets: Sequence[int], progress: Progress | None = None) -> list[str]:
        options = self.options.as_kwargs()
        return generate_answers(
            self.model,
            self.tokenizer,
            self.samples,
            lambda: EvolKVCache(self.model, list(budgets), **options),
            batch_size=self.batch_size,
            progress=progress,
        )


class _RankingLayer(EvolKVLayer):
    """Attends the prefill in full, and records the full keys/values and the ranking of prefix positions."""

    def __init__(self, options: ScoringOptions, storage_device: torch.device | None) -> None:
        super().__init__(budget=0, options=options)
        self.storage_device = storage_device
        self.ranking: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prefilled:
            raise RuntimeError("The ranking prefill runs a single forward per sample.")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.prefilled = True
        length = key_states.shape[-2]
        self.seen = self.prefill_length = length
        pending, self.pending = self.pending, None
        window = min(self.options.window_size, length)
        device = self.storage_device or key_states.device
        self.ranking = rank_positions(self.score_prefix(key_states, pending, window)).to(device)
        # Own compact copies: a view would keep its whole base alive (Phi3's values are a slice of the fused qkv
        # output), and the memory cap counts only what is stored.
        self.keys, self.values = _own_copy(key_states, device), _own_copy(value_states, device)
        return key_states, value_states


def _own_copy(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    moved = tensor.to(device)
    return moved.clone(memory_format=torch.contiguous_format) if moved is tensor else moved.contiguous()


@dataclass
class _Prefilled:
    """One sample after its ranking prefill."""

    keys: list[torch.Tensor | None]  # per layer (1, kv_heads, length, dim), None for layers not compressed
    values: list[torch.Tensor | None]
    rankings: list[torch.Tensor | None]
    length: int  # tokens prefilled (the prompt, or the context in query-agnostic mode)
    first_token: int | None  # greedy token from the prefill logits (query-aware mode)

    @property
    def nbytes(self) -> int:
        """Bytes held: keys, values and rankings (each tensor owns its storage, see ``_own_copy``)."""
        tensors = (*self.keys, *self.values, *self.rankings)
        return sum(t.untyped_storage().nbytes() for t in tensors if t is not None)


class PrefillOnceEngine:
    """Prefill each search sample once; evaluate candidates by gathering and batched decoding.

    Parameters
    ----------
    model, tokenizer, samples:
        The model, its tokenizer and the encoded search samples.
    options:
        Cache options shared by all candidates. Candidates' budgets must be at least
        ``options.window_size`` (the searcher's default floor).
    batch_size:
        Samples decoded together per candidate.
    storage_device:
        Where the prefilled keys/values and rankings are kept (default: the model's device).
    max_storage_bytes:
        Memory cap for the stored prefills; samples beyond it are recomputed by the plain path for
        every candidate instead of being stored.

    Example
    -------
    >>> engine = PrefillOnceEngine(
    ...     model, tokenizer, encode_samples(ds, tokenizer), CacheOptions()
    ... )  # doctest: +SKIP
    >>> engine.answers([128] * model.config.num_hidden_layers)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        samples: Sequence[EncodedSample],
        options: CacheOptions,
        *,
        batch_size: int = 8,
        storage_device: str | torch.device | None = None,
        max_storage_bytes: int | None = 8 * 2**30,
        progress: Progress | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.model, self.tokenizer, self.samples = model, tokenizer, list(samples)
        self.options, self.batch_size = options, batch_size
        self.storage_device = torch.device(storage_device) if storage_device is not None else None
        self.max_storage_bytes = max_storage_bytes
        self._keyword = cache_keyword(model)
        self._pad = pad_token_id(tokenizer, model)
        self._eos = eos_token_ids(model, tokenizer)
        self.prefilled: list[_Prefilled | None] = []
        stored = 0
        for sample in self.samples:
            if self.max_storage_bytes is not None and stored >= self.max_storage_bytes:
                self.prefilled.append(None)
            else:
                entry = self._prefill(sample)
                stored += entry.nbytes
                self.prefilled.append(entry)
            if progress is not None:
                progress(1)
        self.stored_bytes = stored
        missing = [i for i, entry in enumerate(self.prefilled) if entry is None]
        self._fallback = (
            PlainEngine(model, tokenizer, [self.samples[i] for i in missing], options, batch_size=batch_size)
            if missing
            else None
        )
        self._fallback_indices = missing

    # ------------------------------------------------------------------ prefill
    @torch.no_grad()
    def _prefill(self, sample: EncodedSample) -> _Prefilled:
        cache = EvolKVCache(self.model, 1, **self.options.as_kwargs())
        attention_layers = sum(hasattr(layer, "get_seq_length") for layer in cache.layers)
        if attention_layers != sum(cache.compressing_layer(i) is not None for i in range(len(cache.layers))):
            raise ValueError(
                "The prefill-once engine supports models whose attention layers are all compressed; this model "
                "has sliding-window layers. Use engine='plain'."
            )
        for index in range(len(cache.layers)):
            if cache.compressing_layer(index) is not None:
                cache.layers[index] = _RankingLayer(cache.options, self.storage_device)
        ids = sample.prompt_ids if sample.mode == QUERY_AWARE else sample.context_ids
        input_ids = torch.tensor([ids], device=self.model.device)
        first_token = None
        if sample.mode == QUERY_AWARE:
            # The first answer token comes from the full-attention prefill; taking it through generate
            # applies the model's generation config exactly as the plain path does.
            output = greedy_generate(self.model, input_ids, torch.ones_like(input_ids), cache, 1, self._pad)
            first_token = int(output[0, -1])
        else:
            self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self._keyword: cache})
        keys: list[torch.Tensor | None] = []
        values: list[torch.Tensor | None] = []
        rankings: list[torch.Tensor | None] = []
        for layer in cache.layers:
            if isinstance(layer, _RankingLayer):
                keys.append(layer.keys)
                values.append(layer.values)
                rankings.append(layer.ranking)
            else:
                keys.append(None)
                values.append(None)
                rankings.append(None)
        return _Prefilled(keys, values, rankings, len(ids), first_token)

    def with_policy(self, policy: str) -> PrefillOnceEngine:
        """An engine over the same prefills whose candidates keep what ``policy`` ranks first (no new forward).

        The prefill attends in full whatever the policy, so the stored keys, values and first answer tokens
        are every policy's; only the ranking of prompt positions differs. StreamingLLM's ranking needs no
        queries and is recomputed from the stored keys, so one prefill serves SnapKV and StreamingLLM (the
        answers are those of an engine built with ``policy``). SnapKV's ranking needs the observation-window
        queries, which only a SnapKV prefill sees. The new engine shares the keys and values; its rankings (one
        int64 per position, KV head and layer: a few percent of the keys and values) are new and not counted in
        ``stored_bytes``.

        Example
        -------
        >>> snapkv = PrefillOnceEngine(model, tokenizer, samples, CacheOptions())  # doctest: +SKIP
        >>> streaming = snapkv.with_policy("streaming")  # doctest: +SKIP
        """
        if policy == self.options.policy:
            return self
        if ScoringOptions(policy=policy).needs_queries:
            raise ValueError(
                f"An engine prefilled for {self.options.policy!r} cannot rank positions with {policy!r}: that needs "
                f"the prefill's observation-window queries. Build PrefillOnceEngine with CacheOptions(policy="
                f"{policy!r}) and call with_policy on it instead."
            )
        options = replace(self.options, policy=policy)
        scoring = ScoringOptions(**options.as_kwargs())
        engine = copy.copy(self)
        engine.options = options
        engine.prefilled = [
            None if entry is None else replace(entry, rankings=_rankings(entry, scoring))
            for entry in self.prefilled
        ]
        if self._fallback is not None:
            engine._fallback = PlainEngine(
                self.model, self.tokenizer, self._fallback.samples, options, batch_size=self.batch_size
            )
        return engine

    # ------------------------------------------------------------------ candidates
    def answers(self, budgets: Sequence[int], progress: Progress | None = None) -> list[str]:
        """Greedy answers of every sample under ``budgets`` (one int per layer)."""
        budgets = list(budgets)
        if min(budgets) < self.options.window_size:
            raise ValueError(
                f"The prefill-once engine needs every budget >= window_size ({self.options.window_size}); got "
                f"{min(budgets)}. Raise min_budget or use engine='plain'."
            )
        answers: list[str] = [""] * len(self.samples)
        stored = [i for i, entry in enumerate(self.prefilled) if entry is not None]
        by_mode: dict[str, list[int]] = {}
        for index in stored:
            by_mode.setdefault(self.samples[index].mode, []).append(index)
        for indices in by_mode.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for index, text in zip(chunk, self._decode_batch(budgets, chunk), strict=False):
                    answers[index] = text
                if progress is not None:
                    progress(len(chunk))
        if self._fallback is not None:
            for index, text in zip(
                self._fallback_indices, self._fallback.answers(budgets, progress), strict=False
            ):
                answers[index] = text
        return answers

    @torch.no_grad()
    def _decode_batch(self, budgets: list[int], chunk: list[int]) -> list[str]:
        entries = [self.prefilled[i] for i in chunk]
        samples = [self.samples[i] for i in chunk]
        if any(entry is None for entry in entries):  # pragma: no cover - callers pass stored samples only
            raise RuntimeError("Sample was not prefilled.")
        prefilled: list[_Prefilled] = [e for e in entries if e is not None]
        device = self.model.device
        seen = max(entry.length for entry in prefilled)
        cache = EvolKVCache(self.model, budgets, **self.options.as_kwargs())
        for layer_idx, layer in enumerate(cache.layers):
            if isinstance(layer, EvolKVLayer):
                self._load_layer(layer, layer_idx, prefilled, seen, device)
        mode = samples[0].mode
        if mode == QUERY_AWARE:
            rows = [[*s.prompt_ids, int(e.first_token or 0)] for s, e in zip(samples, prefilled, strict=True)]
            input_ids, attention_mask = left_pad(rows, self._pad, device)
            max_new = max(s.max_new_tokens for s in samples) - 1
        else:
            context_ids, context_mask = left_pad([s.context_ids for s in samples], self._pad, device)
            question_ids, question_mask = left_pad([s.question_ids for s in samples], self._pad, device)
            input_ids = torch.cat([context_ids, question_ids], dim=1)
            attention_mask = torch.cat([context_mask, question_mask], dim=1)
            max_new = max(s.max_new_tokens for s in samples)
        if max_new > 0:
            output = greedy_generate(self.model, input_ids, attention_mask, cache, max_new, self._pad)
            new_tokens = output[:, input_ids.shape[1] :].tolist()
        else:
            new_tokens = [[] for _ in samples]
        texts = []
        for tokens, sample, entry in zip(new_tokens, samples, prefilled, strict=False):
            if mode == QUERY_AWARE:
                tokens = [entry.first_token, *tokens]
            answer = truncate_answer(tokens, sample.max_new_tokens, self._eos)
            texts.append(self.tokenizer.decode(answer, skip_special_tokens=True).strip())
        return texts

    def _load_layer(
        self, layer: EvolKVLayer, layer_idx: int, entries: list[_Prefilled], seen: int, device: torch.device
    ) -> None:
        budget = layer.budget
        kept_keys, kept_values, kept_positions = [], [], []
        for entry in entries:
            keys, values, ranking = entry.keys[layer_idx], entry.values[layer_idx], entry.rankings[layer_idx]
            if keys is None or values is None or ranking is None:  # pragma: no cover - guarded in _prefill
                raise RuntimeError(f"Layer {layer_idx} was not prefilled.")
            if entry.length <= budget:
                positions = torch.arange(entry.length, device=keys.device).expand(1, keys.shape[1], -1)
            else:
                window = min(self.options.window_size, entry.length)
                positions = positions_from_ranking(ranking, budget - window, entry.length, window)
            kept_keys.append(keys.gather(2, positions.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])))
            kept_values.append(values.gather(2, positions.unsqueeze(-1).expand(-1, -1, -1, values.shape[-1])))
            kept_positions.append(positions + (seen - entry.length))
        stored = max(k.shape[2] for k in kept_keys)
        # Rows kept whole because their prompt fits the budget are shorter: left-pad them with entries that
        # the attention mask hides (they fall on the row's left padding).
        keys_batch = torch.cat([_left_pad_entries(k, stored) for k in kept_keys]).to(device)
        values_batch = torch.cat([_left_pad_entries(v, stored) for v in kept_values]).to(device)
        positions_batch = torch.cat(
            [_left_pad_entries(p.unsqueeze(-1), stored).squeeze(-1) for p in kept_positions]
        )
        layer.load_compressed(keys_batch, values_batch, positions_batch.to(device), seen)


def _rankings(entry: _Prefilled, options: ScoringOptions) -> list[torch.Tensor | None]:
    """``entry``'s per-layer rankings of prefix positions under a policy that scores without queries."""
    layer = EvolKVLayer(budget=0, options=options)
    window = min(options.window_size, entry.length)
    return [
        None
        if keys is None or old is None
        else rank_positions(layer.score_prefix(keys, None, window)).to(old.device)
        for keys, old in zip(entry.keys, entry.rankings, strict=True)
    ]


def _left_pad_entries(states: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - states.shape[2]
    if missing == 0:
        return states
    pad = states.new_zeros(*states.shape[:2], missing, states.shape[-1])
    return torch.cat([pad, states], dim=2)
