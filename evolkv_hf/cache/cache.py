"""``EvolKVCache``: a transformers ``Cache`` with a token budget per layer."""

from __future__ import annotations

import numbers
import operator
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import cache_utils
from transformers.cache_utils import Cache, DynamicSlidingWindowLayer, get_layer_types_and_kwargs

from .hooks import attach_hooks, mask_function_for, remove_hooks
from .layer import EvolKVLayer
from .policies import ScoringOptions

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..allocation import BudgetAllocation

_SLIDING_TYPES = ("sliding_attention", "chunked_attention")
_SUPPORTED_TYPES = ("full_attention", *_SLIDING_TYPES, "dummy")


class EvolKVCache(Cache):
    """A KV cache that keeps, per decoder layer, at most ``budget`` prompt tokens per KV head.

    At the end of the prefill each layer scores the prompt positions (SnapKV: the attention of the last
    ``window_size`` prompt tokens; or StreamingLLM: sinks plus recent tokens) and keeps the best
    ``budget - window_size`` of them plus the window itself, in their original order. The prefill itself
    attends to the whole prompt; generated tokens are appended. Every layer gets an attention mask sized
    for what it stores, so eager and sdpa attention, left-padded batches, GQA, beam search, multi-turn
    reuse and ``crop`` all work with unequal per-layer budgets.

    Parameters
    ----------
    model:
        The decoder-only transformers model the cache is used with. Hooks are installed on it once (see
        :meth:`detach`); they do nothing for other cache types.
    budgets:
        Tokens kept per layer and per KV head, the observation window included: an ``int`` for every layer,
        a sequence with one ``int`` per decoder layer, or a :class:`~evolkv_hf.BudgetAllocation`. Budgets of
        sliding-window layers of hybrid models (Gemma2/3) are ignored: those layers keep their own window.
    window_size:
        Observation window (default 32, or the allocation's). Always kept.
    kernel_size:
        Pooling width over the window attention (default 7, or the allocation's).
    pooling:
        ``"avg"`` (default, or the allocation's) or ``"max"``.
    gqa_aggregation:
        How the query heads of a KV head are combined: ``"mean"`` (default) or ``"max"``.
    policy:
        ``"snapkv"`` (default, or the allocation's) or ``"streaming"``.
    num_sink_tokens:
        Sink tokens kept by the ``"streaming"`` policy (default 4).

    Example
    -------
    >>> from evolkv_hf import EvolKVCache
    >>> cache = EvolKVCache(model, budgets=128)  # doctest: +SKIP
    >>> out = model.generate(**inputs, past_key_values=cache, max_new_tokens=32)  # doctest: +SKIP
    >>> cache.stored_lengths()[:3], cache.memory_bytes()  # doctest: +SKIP
    ([159, 159, 159], 3663360)

    (SmolLM2-135M in bfloat16: 30 layers x 3 KV heads x 159 entries x (64 + 64) dims x 2 bytes.)
    """

    def __init__(
        self,
        model: PreTrainedModel,
        budgets: int | Sequence[int] | BudgetAllocation,
        *,
        window_size: int | None = None,
        kernel_size: int | None = None,
        pooling: str | None = None,
        gqa_aggregation: str = "mean",
        policy: str | None = None,
        num_sink_tokens: int = 4,
    ) -> None:
        config = _text_config(model)
        model_type = str(getattr(config, "model_type", type(model).__name__))
        layer_types, layer_kwargs = get_layer_types_and_kwargs(config)
        _check_architecture(config, layer_types, model_type)
        num_layers = len(layer_types)

        defaults = _allocation_defaults(budgets, num_layers)
        _warn_other_base_model(budgets, model)
        self.options = ScoringOptions(
            policy=policy if policy is not None else defaults.get("policy", "snapkv"),
            window_size=window_size if window_size is not None else defaults.get("window_size", 32),
            kernel_size=kernel_size if kernel_size is not None else defaults.get("kernel_size", 7),
            pooling=pooling if pooling is not None else defaults.get("pooling", "avg"),
            gqa_aggregation=gqa_aggregation,
            num_sink_tokens=num_sink_tokens,
        )
        self.budgets = _validate_budgets(budgets, num_layers)

        # Compress full-attention layers; a model whose layers are all sliding (Mistral, Qwen2 with
        # use_sliding_window) is compressed on its sliding layers, whose window then acts on stored entries.
        compressed_type = "full_attention" if "full_attention" in layer_types else "sliding_attention"
        layers: list[Any] = []
        self._mask_kinds: dict[int, str] = {}
        for index, (kind, kwargs) in enumerate(zip(layer_types, layer_kwargs, strict=False)):
            if kind == compressed_type:
                layers.append(EvolKVLayer(self.budgets[index], self.options))
                self._mask_kinds[index] = "full" if kind == "full_attention" else "sliding"
            elif kind in _SLIDING_TYPES:
                layers.append(DynamicSlidingWindowLayer(**kwargs))
            else:
                # Layers without attention (transformers >= 5.23 names them "dummy").
                layers.append(cache_utils.DummyLayer())
        if not self._mask_kinds:
            raise ValueError(
                f"EvolKVCache found no attention layer to compress in model type {model_type!r}."
            )
        super().__init__(layers=layers)
        attach_hooks(model, model_type, sorted(self._mask_kinds))
        self._forward_mask: torch.Tensor | None = None
        self._mask_memo: dict[tuple[Any, ...], Any] = {}
        # The decoder hook numbers each forward; the first compressed layer checks that its forward was
        # numbered, so a cache used after EvolKVCache.detach(model), or with another model, fails loudly.
        self._forward_count = 0
        self._checked_forward = 0
        self._first_compressed = min(self._mask_kinds)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_dir: str | os.PathLike[str],
        model: PreTrainedModel,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        endpoint: str | None = None,
        **cache_options: Any,
    ) -> EvolKVCache:
        """Build a cache from a saved :class:`~evolkv_hf.BudgetAllocation` (a directory or a Hub repo id).

        The download options are those of :meth:`BudgetAllocation.from_pretrained`; ``cache_options``
        (``window_size``, ``policy``, ...) go to the constructor and override the allocation's settings.

        Example
        -------
        >>> cache = EvolKVCache.from_pretrained("user/smollm2-evolkv-c128", model)  # doctest: +SKIP
        """
        from ..allocation import BudgetAllocation

        allocation = BudgetAllocation.from_pretrained(
            repo_id_or_dir,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            endpoint=endpoint,
        )
        return cls(model, allocation, **cache_options)

    @staticmethod
    def detach(model: PreTrainedModel) -> bool:
        """Remove the hooks any ``EvolKVCache`` installed on ``model``; returns whether there were any."""
        return remove_hooks(model)

    # ------------------------------------------------------------------ Cache API
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == self._first_compressed:
            hooks_ran = self._forward_count > self._checked_forward
            self._checked_forward = self._forward_count
        else:
            hooks_ran = self._forward_count > 0
        if not hooks_ran and layer_idx in self._mask_kinds:
            raise RuntimeError(
                "EvolKVCache's hooks did not run for this forward: the cache was built for another model object, or "
                "EvolKVCache.detach(model) removed them. Create the cache with `EvolKVCache(model, budgets)` for "
                "the model object that runs the forward."
            )
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def reset(self) -> None:
        super().reset()
        self._forward_mask = None
        self._mask_memo = {}

    # ------------------------------------------------------------------ introspection
    def compressing_layer(self, layer_idx: int) -> EvolKVLayer | None:
        """The layer at ``layer_idx`` if this cache compresses it, else ``None`` (e.g. a Gemma sliding layer).

        ``layer_idx`` counts decoder layers from 0; negative values count from the end, as for a list. An index
        outside the model's layers raises ``IndexError``.
        """
        return self._compressing_layer(self._check_layer_idx(layer_idx))

    def _compressing_layer(self, layer_idx: int) -> EvolKVLayer | None:
        layer = self.layers[layer_idx] if layer_idx < len(self.layers) else None
        return layer if isinstance(layer, EvolKVLayer) else None

    def _check_layer_idx(self, layer_idx: Any) -> int:
        try:
            if isinstance(layer_idx, bool):
                raise TypeError
            index = operator.index(layer_idx)  # ints, numpy integers, 0-d integer tensors
        except TypeError:
            raise TypeError(
                f"layer_idx must be an int, got {type(layer_idx).__name__} {layer_idx!r}."
            ) from None
        count = len(self.layers)
        if not -count <= index < count:
            raise IndexError(
                f"layer_idx {index} is out of range: the model has {count} decoder layers (0 to {count - 1})."
            )
        return index % count

    def stored_lengths(self) -> list[int]:
        """Entries held per KV head, for every layer (sliding layers report what they hold)."""
        lengths = []
        for layer in self.layers:
            if isinstance(layer, EvolKVLayer):
                lengths.append(layer.stored_length)
            else:
                keys = getattr(layer, "keys", None)
                lengths.append(
                    int(keys.shape[-2]) if isinstance(keys, torch.Tensor) and keys.numel() > 0 else 0
                )
        return lengths

    def kept_positions(self, layer_idx: int) -> torch.Tensor | None:
        """Original token positions held by a compressed layer, ``(batch, num_kv_heads, stored)``.

        ``None`` before the prefill and after :meth:`reset`. Raises ``ValueError`` for a layer this cache leaves
        to the model (a sliding-window layer) and ``IndexError`` for an index outside the model's layers.
        """
        layer = self.compressing_layer(layer_idx)
        if layer is None:
            raise ValueError(
                f"Layer {layer_idx} is not compressed by this cache (a sliding-window layer keeps the model's own "
                "cache); see compressing_layer()."
            )
        return layer.kept_positions()

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last ``-tokens_to_remove`` tokens from every layer (assisted decoding rolls back this way).

        Every layer is checked before any is changed: a crop that one layer refuses leaves the cache as it was.
        """
        if tokens_to_remove < 0:
            for layer in self.layers:
                if isinstance(layer, EvolKVLayer):
                    layer.check_crop(-tokens_to_remove)
        super().crop(tokens_to_remove)

    def memory_bytes(self) -> int:
        """Bytes of keys and values actually held, over all layers."""
        return kv_memory_bytes(self)

    def __repr__(self) -> str:
        return (
            f"EvolKVCache(layers={len(self.layers)}, mean_budget={sum(self.budgets) / len(self.budgets):.1f}, "
            f"policy={self.options.policy!r}, window_size={self.options.window_size}, "
            f"stored={self.stored_lengths()})"
        )

    # ------------------------------------------------------------------ used by the hooks
    def _begin_forward(self, attention_mask: torch.Tensor | None) -> None:
        self._forward_count += 1
        self._forward_mask = attention_mask
        self._mask_memo = {}

    def _key_valid(self, length: int) -> torch.Tensor | None:
        mask = self._forward_mask
        if mask is None:
            return None
        key = ("key_valid", length)
        if key not in self._mask_memo:  # once per forward, not once per layer
            valid = mask[:, -length:].bool()
            self._mask_memo[key] = None if bool(valid.all()) else valid
        valid_or_none: torch.Tensor | None = self._mask_memo[key]
        return valid_or_none

    def _has_padding(self) -> bool:
        """Whether this forward's 2D padding mask masks anything (checked once per forward)."""
        mask = self._forward_mask
        return mask is not None and self._key_valid(mask.shape[-1]) is not None

    def _layer_mask(
        self, config: Any, hidden_states: torch.Tensor, position_ids: torch.Tensor | None, layer_idx: int
    ) -> Any:
        kind = self._mask_kinds[layer_idx]
        query_length = hidden_states.shape[1]
        sizes = self.get_mask_sizes(query_length, layer_idx)
        key = (kind, query_length, sizes, hidden_states.device, hidden_states.dtype)
        if key not in self._mask_memo:
            builder, cache_kwarg = mask_function_for(kind)
            self._mask_memo[key] = builder(
                config=config,
                inputs_embeds=hidden_states,
                attention_mask=self._forward_mask,
                position_ids=position_ids,
                layer_idx=layer_idx,
                **{cache_kwarg: self},
            )
        return self._mask_memo[key]


def kv_memory_bytes(cache: Cache) -> int:
    """Bytes of keys and values held by any transformers ``Cache`` (``DynamicCache``, ``EvolKVCache``, ...).

    Example
    -------
    >>> kv_memory_bytes(DynamicCache())  # doctest: +SKIP
    0
    """
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def _text_config(model: Any) -> Any:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        raise TypeError(
            f"EvolKVCache needs a transformers model (with a `.config`), got {type(model).__name__}. "
            "Pass the model first: EvolKVCache(model, budgets)."
        )
    text_config = config.get_text_config(decoder=True)
    if text_config is not config:
        # A multimodal wrapper (Gemma3ForConditionalGeneration, what AutoModelForCausalLM returns for Gemma-3 4B
        # and up; Llava, ...) builds the decoder's per-layer masks itself and hands it a dict, without the 2D
        # padding mask every compressed layer needs its own mask from.
        raise ValueError(
            f"EvolKVCache does not support {type(model).__name__}: it wraps the language model of model type "
            f"{getattr(text_config, 'model_type', '?')!r} with another encoder (its config has a text_config) "
            "and builds the decoder's attention masks itself. Load the text-only model class instead (e.g. "
            "Gemma3ForCausalLM for Gemma 3)."
        )
    return text_config


def _check_architecture(config: Any, layer_types: list[str], model_type: str) -> None:
    if getattr(config, "kv_lora_rank", None) is not None:
        raise ValueError(
            f"EvolKVCache does not support model type {model_type!r}: multi-latent attention (MLA) stores "
            "compressed latents, not per-head keys and values."
        )
    sharing = getattr(config, "kv_sharing_modes", None)
    if sharing is not None and "reuse" in list(sharing):
        raise ValueError(
            f"EvolKVCache does not support model type {model_type!r}: some layers reuse another layer's KV cache "
            "(KV sharing), so per-layer budgets cannot be applied independently."
        )
    unsupported = sorted({kind for kind in layer_types if kind not in _SUPPORTED_TYPES})
    if unsupported:
        raise ValueError(
            f"EvolKVCache does not support model type {model_type!r}: it has layer types {unsupported} "
            f"(supported: {list(_SUPPORTED_TYPES)})."
        )


def _warn_other_base_model(budgets: Any, model: Any) -> None:
    """Warn when an allocation learned for one Hub model is used with another (same layer count or not)."""
    learned_for = getattr(budgets, "base_model", None)
    if not _is_allocation(budgets) or not isinstance(learned_for, str) or not learned_for:
        return
    from ..inference import hub_model_id

    current = hub_model_id(model)
    if current is not None and current != learned_for:
        warnings.warn(
            f"This allocation was learned for {learned_for!r} but the model is {current!r}: per-layer budgets "
            "are model-specific, so it may do worse than a uniform budget. Search one for this model, or ignore "
            "this warning if the two share their weights.",
            UserWarning,
            stacklevel=3,
        )


def _is_allocation(budgets: Any) -> bool:
    """Whether ``budgets`` is a :class:`~evolkv_hf.BudgetAllocation` (or alike), not plain numbers."""
    return hasattr(budgets, "budgets") and not isinstance(budgets, (int, Sequence))


def _allocation_defaults(budgets: Any, num_layers: int) -> dict[str, Any]:
    if not _is_allocation(budgets):
        return {}
    validate = getattr(budgets, "validate_for", None)
    if callable(validate):
        validate(num_layers)
    defaults = {}
    for name in ("window_size", "kernel_size", "pooling", "policy"):
        value = getattr(budgets, name, None)
        if value is not None:
            defaults[name] = value
    return defaults


def _validate_budgets(budgets: Any, num_layers: int) -> list[int]:
    if _is_allocation(budgets):
        budgets = budgets.budgets
    if isinstance(budgets, bool):
        raise TypeError("budgets must be an int or a sequence of ints, got a bool.")
    if isinstance(budgets, numbers.Integral):
        values: list[Any] = [budgets] * num_layers
    elif isinstance(budgets, torch.Tensor) or hasattr(budgets, "tolist"):
        listed = budgets.tolist()
        # A 0-d tensor or array is one budget for every layer, like an int.
        values = list(listed) if isinstance(listed, list) else [listed] * num_layers
    elif isinstance(budgets, Sequence) and not isinstance(budgets, (str, bytes)):
        values = list(budgets)
    else:
        raise TypeError(
            f"budgets must be an int, a sequence of ints (one per layer) or a BudgetAllocation, got "
            f"{type(budgets).__name__}."
        )
    if len(values) != num_layers:
        raise ValueError(
            f"Got {len(values)} budgets but the model has {num_layers} decoder layers: pass one budget per layer "
            "(or a single int for all layers)."
        )
    checked = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"Budget of layer {index} must be an integer number of tokens, got {value!r}.")
        if value < 1:
            raise ValueError(f"Budget of layer {index} must be at least 1 token, got {value}.")
        checked.append(int(value))
    return checked
