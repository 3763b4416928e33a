"""The compressing cache layer: what one decoder layer stores, and the length/mask contract.

A layer that stores ``S`` entries after having seen ``T`` tokens reports ``get_seq_length() == T`` (RoPE
positions and ``generate``'s prefill slicing depend on it) and ``get_mask_sizes(q) == (S + q, T - S)``, so
that the mask built for it by transformers' own mask functions treats the stored entries as the last ``S``
positions. Stored entries stay sorted by original position and kept pads sit first, which makes that mask
exact for left-padded batches (see ``docs/concepts.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

from .policies import ScoringOptions, select_positions, snapkv_scores, streaming_scores


@dataclass
class PendingPrefill:
    """What the attention pre-hook hands to the layer right before the prefill's ``update``."""

    key_valid: torch.Tensor | None
    queries: torch.Tensor | None
    scaling: float
    softcap: float | None


class EvolKVLayer(DynamicLayer):
    """One layer's compressing KV store with a token budget.

    The first forward that reaches the layer (the prefill) is attended in full; its keys and values are
    then reduced to ``budget`` entries per KV head (the best-scored prefix positions plus the observation
    window). Every later token is appended. Prompts no longer than the budget are kept whole.

    Parameters
    ----------
    budget:
        Tokens kept per KV head, the observation window included.
    options:
        The scoring policy and its parameters.
    """

    is_croppable = True

    def __init__(self, budget: int, options: ScoringOptions) -> None:
        super().__init__()
        self.budget = budget
        self.options = options
        self._reset_state()

    def _reset_state(self) -> None:
        self.seen = 0
        self.prefilled = False
        self.prefill_length = 0
        self.prefill_positions: torch.Tensor | None = None
        # Trailing stored entries that are consecutive positions (what crop may remove): the prefill's part is
        # found from the kept positions only when crop asks (it costs a device sync), plus what came after.
        self._prefill_tail: int | None = 0
        self._tail_delta = 0
        self.pending: PendingPrefill | None = None

    def __repr__(self) -> str:
        return f"EvolKVLayer(budget={self.budget}, stored={self.stored_length}, seen={self.seen})"

    # ------------------------------------------------------------------ the transformers contract
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = key_states.shape[-2]
        if not self.prefilled:
            self.prefilled = True
            self.seen = length
            self.prefill_length = length
            pending, self.pending = self.pending, None
            if length > self.budget:
                # The projections arrive as transposed views; one contiguous copy of each (what DynamicCache's
                # concatenation makes too) serves the scoring, the gather and the prefill's attention, which all
                # run faster on it.
                key_states, value_states = key_states.contiguous(), value_states.contiguous()
                positions = self._select(key_states, pending)
                self.prefill_positions = positions
                self.keys = _gather(key_states, positions)
                self.values = _gather(value_states, positions)
                self._prefill_tail = None
            else:
                self.keys, self.values = key_states, value_states
                self._prefill_tail = length
            # The prefill attends to the whole prompt.
            return key_states, value_states
        if self.keys is None or self.values is None:  # pragma: no cover - set by the prefill above
            raise RuntimeError("EvolKVLayer lost its keys/values; call reset() before reusing the cache.")
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.seen += length
        self._tail_delta += length
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.stored_length
        return stored + query_length, self.seen - stored

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        super().reset()
        self._reset_state()

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last ``-tokens_to_remove`` tokens (assisted decoding rolls back this way).

        Only a contiguous tail can be removed: the tokens appended after compression and the trailing
        window of the prompt.
        """
        if tokens_to_remove > 0:
            raise ValueError(
                f"EvolKVCache.crop takes a negative number of tokens to remove, got {tokens_to_remove}."
            )
        count = -tokens_to_remove
        if count == 0 or not self.is_initialized or self.keys is None or self.values is None:
            return
        self.check_crop(count)
        self.keys = self.keys[..., :-count, :]
        self.values = self.values[..., :-count, :]
        self.seen -= count
        self._tail_delta -= count

    def check_crop(self, count: int) -> None:
        """Raise ``ValueError`` if the last ``count`` tokens cannot be removed (they were compressed)."""
        if self.is_initialized and self.keys is not None and count > self.contiguous_tail:
            raise ValueError(
                f"Cannot crop {count} tokens: only the last {self.contiguous_tail} stored tokens are contiguous; "
                "earlier prompt tokens were compressed and cannot be rolled back. Assisted and prompt-lookup "
                "decoding draft tokens in the prefill, where they are compressed with the prompt: keep every "
                "layer's budget and window_size above the number of drafted tokens (num_assistant_tokens, "
                "prompt_lookup_num_tokens)."
            )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.stored_length > 0:
            self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.prefill_positions is not None:
            self.prefill_positions = self.prefill_positions.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.keys is not None and self.values is not None and self.stored_length > 0:
            self.keys = self.keys[indices.to(self.keys.device), ...]
            self.values = self.values[indices.to(self.values.device), ...]
        if self.prefill_positions is not None:
            self.prefill_positions = self.prefill_positions[indices.to(self.prefill_positions.device), ...]

    # ------------------------------------------------------------------ introspection
    @property
    def contiguous_tail(self) -> int:
        """How many trailing stored entries are consecutive original positions (the most ``crop`` removes)."""
        if self._prefill_tail is None:
            positions = self.prefill_positions
            self._prefill_tail = 0 if positions is None else _contiguous_tail(positions, self.prefill_length)
        return self._prefill_tail + self._tail_delta

    @property
    def stored_length(self) -> int:
        """Entries held per KV head."""
        if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
            return 0
        return int(self.keys.shape[-2])

    @property
    def is_compressed(self) -> bool:
        """Whether the prefill was longer than the budget and tokens were evicted."""
        return self.prefill_positions is not None

    def kept_positions(self) -> torch.Tensor | None:
        """Original positions of the stored entries, ``(batch, num_kv_heads, stored)``; ``None`` if empty."""
        stored = self.stored_length
        if stored == 0 or self.keys is None:
            return None
        batch, heads = self.keys.shape[:2]
        device = self.keys.device
        if self.prefill_positions is None:
            base = torch.arange(self.prefill_length, device=device).expand(batch, heads, -1)
        else:
            base = self.prefill_positions
        if stored <= base.shape[-1]:
            return base[..., :stored]
        appended = torch.arange(
            self.prefill_length, self.prefill_length + stored - base.shape[-1], device=device
        )
        return torch.cat([base, appended.expand(batch, heads, -1)], dim=-1)

    def memory_bytes(self) -> int:
        """Bytes of keys and values held."""
        if self.stored_length == 0 or self.keys is None or self.values is None:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    # ------------------------------------------------------------------ selection
    def _select(self, keys: torch.Tensor, pending: PendingPrefill | None) -> torch.Tensor:
        length = keys.shape[-2]
        window = min(self.options.window_size, self.budget, length)
        scores = self.score_prefix(keys, pending, window)
        return select_positions(scores, self.budget - window, length, window)

    def score_prefix(self, keys: torch.Tensor, pending: PendingPrefill | None, window: int) -> torch.Tensor:
        """Scores of the ``length - window`` prefix positions, ``(batch, num_kv_heads, prefix)``."""
        options = self.options
        batch, num_kv_heads, length, _ = keys.shape
        prefix = length - window
        key_valid = pending.key_valid if pending is not None else None
        if key_valid is not None:
            key_valid = key_valid.to(keys.device)
        with torch.no_grad():
            if options.policy == "snapkv":
                if pending is None or pending.queries is None:
                    raise RuntimeError(
                        "EvolKVCache could not capture the observation-window queries for this layer: the model's "
                        "attention hooks did not run. Build the cache with `EvolKVCache(model, budgets)` for the "
                        "same model object that runs the forward."
                    )
                return snapkv_scores(
                    pending.queries.to(keys.device),
                    keys,
                    key_valid,
                    scaling=pending.scaling,
                    prefix_length=prefix,
                    kernel_size=options.kernel_size,
                    pooling=options.pooling,
                    gqa_aggregation=options.gqa_aggregation,
                    softcap=pending.softcap,
                )
            return streaming_scores(
                key_valid,
                batch=batch,
                num_kv_heads=num_kv_heads,
                prefix_length=prefix,
                num_sink_tokens=options.num_sink_tokens,
                device=keys.device,
            )

    def load_compressed(
        self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor | None, seen: int
    ) -> None:
        """Set the layer to a prefill already compressed elsewhere (used by the fast search engine).

        ``keys``/``values`` are ``(batch, num_kv_heads, stored, dim)`` sorted by original position (left pads
        first), ``positions`` their original positions (``None`` when the prompt was kept whole) and ``seen``
        the prompt length the rows are aligned to.
        """
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values
        self.seen = seen
        self.prefilled = True
        self.prefill_length = seen
        self.prefill_positions = positions
        self.pending = None
        self._prefill_tail = min(self.options.window_size, keys.shape[-2]) if positions is not None else seen
        self._tail_delta = 0


def _gather(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    index = positions.unsqueeze(-1).expand(-1, -1, -1, states.shape[-1])
    return states.gather(2, index)


def _contiguous_tail(positions: torch.Tensor, length: int) -> int:
    """Number of trailing kept positions equal to ``length - n .. length - 1`` in every row and head."""
    kept = positions.shape[-1]
    expected = torch.arange(length - kept, length, device=positions.device)
    match = (positions == expected).flip(-1).long().cumprod(dim=-1)
    return int(match.sum(dim=-1).min().item())
