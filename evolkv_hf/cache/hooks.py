"""Attach and detach the forward pre-hooks an ``EvolKVCache`` needs on a model.

Two kinds of hooks, both no-ops unless the call's cache is an ``EvolKVCache``:

* on the decoder base module: keep the call's 2D padding mask on the cache, and refuse
  ``use_cache=False``, custom 4D masks and chunked prefill before anything is computed;
* on each attention module: for the prefill, recompute the observation-window queries and hand them to
  the layer; afterwards, replace the attention mask by one built for this layer's stored length with
  transformers' own ``create_causal_mask(..., layer_idx=L)`` (so sdpa, eager, flash and flex each get
  their native format).

No transformers class is modified: hooks are registered on module instances and can be removed with
:func:`remove_hooks`.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .queries import QueryRecipe, window_queries

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .cache import EvolKVCache

_HOOKS_ATTRIBUTE = "_evolkv_hf_hooks"
_CACHE_KWARGS = ("cache", "past_key_values")


@dataclass
class ModelHooks:
    """The hooks installed on one model; ``remove()`` takes them all off."""

    handles: list[RemovableHandle] = field(default_factory=list)
    attention_modules: dict[int, nn.Module] = field(default_factory=dict)
    recipes: dict[int, QueryRecipe] = field(default_factory=dict)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def decoder_module(model: nn.Module) -> nn.Module:
    """The decoder base module (the one that builds the attention masks)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if isinstance(decoder, nn.Module) and isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        return decoder
    if isinstance(getattr(model, "layers", None), nn.ModuleList):
        return model
    raise ValueError(
        f"EvolKVCache cannot find the decoder layers of {type(model).__name__}: expected "
        "`model.get_decoder().layers` as in transformers' decoder-only models."
    )


def find_attention_modules(model: nn.Module) -> dict[int, nn.Module]:
    """Map layer index to self-attention module for every decoder layer."""
    modules: dict[int, nn.Module] = {}
    for layer in decoder_module(model).layers:  # type: ignore[union-attr]
        attention = getattr(layer, "self_attn", None)
        if not isinstance(attention, nn.Module):
            candidates = [
                m
                for m in layer.children()
                if hasattr(m, "layer_idx") and type(m).__name__.endswith("Attention")
            ]
            attention = candidates[0] if len(candidates) == 1 else None
        layer_idx = getattr(attention, "layer_idx", None)
        if attention is None or not isinstance(layer_idx, int):
            continue
        modules[layer_idx] = attention
    return modules


def attach_hooks(model: PreTrainedModel, model_type: str, layer_indices: list[int]) -> ModelHooks:
    """Install the hooks on ``model`` once; later calls return the installed hooks.

    ``layer_indices`` are the layers the cache compresses; each must have a supported attention module.
    """
    installed = model.__dict__.get(_HOOKS_ATTRIBUTE)
    if isinstance(installed, ModelHooks) and installed.handles:
        missing = [i for i in layer_indices if i not in installed.recipes]
        if not missing:
            return installed
        installed.remove()
    attention_modules = find_attention_modules(model)
    recipes: dict[int, QueryRecipe] = {}
    for index in layer_indices:
        module = attention_modules.get(index)
        if module is None:
            raise ValueError(
                f"EvolKVCache found no self-attention module for decoder layer {index} of model type "
                f"{model_type!r}; this architecture is not supported."
            )
        recipes[index] = QueryRecipe.for_module(module, model_type)
    hooks = ModelHooks(attention_modules=attention_modules, recipes=recipes)
    hooks.handles.append(decoder_module(model).register_forward_pre_hook(_decoder_pre_hook, with_kwargs=True))
    for index, module in attention_modules.items():
        if index in recipes:
            hooks.handles.append(
                module.register_forward_pre_hook(_make_attention_pre_hook(recipes[index]), with_kwargs=True)
            )
    model.__dict__[_HOOKS_ATTRIBUTE] = hooks
    return hooks


def remove_hooks(model: nn.Module) -> bool:
    """Remove the hooks ``EvolKVCache`` installed on ``model``. Returns whether any were installed."""
    installed = model.__dict__.pop(_HOOKS_ATTRIBUTE, None)
    if isinstance(installed, ModelHooks):
        installed.remove()
        return True
    return False


def hooks_installed(model: nn.Module) -> bool:
    """Whether ``model`` currently carries EvolKVCache hooks."""
    installed = model.__dict__.get(_HOOKS_ATTRIBUTE)
    return isinstance(installed, ModelHooks) and bool(installed.handles)


def _call_cache(kwargs: dict[str, Any]) -> EvolKVCache | None:
    from .cache import EvolKVCache

    for name in _CACHE_KWARGS:
        cache = kwargs.get(name)
        if isinstance(cache, EvolKVCache):
            return cache
    return None


def _decoder_pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    cache = _call_cache(kwargs)
    if cache is None:
        return
    if kwargs.get("use_cache") is False:
        raise ValueError(
            "EvolKVCache was passed with use_cache=False: the model would store every step's full input in the "
            "cache and produce wrong outputs. Drop use_cache=False (or do not pass a cache)."
        )
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() != 2:
        raise ValueError(
            f"EvolKVCache needs a 2D padding attention_mask (batch, length), got a {mask.dim()}D mask: each "
            "layer builds its own mask from it. Pass the tokenizer's attention_mask instead of a custom mask."
        )
    if not isinstance(mask, torch.Tensor) and mask is not None:
        raise ValueError(f"EvolKVCache needs a 2D tensor attention_mask or None, got {type(mask).__name__}.")
    if cache.get_seq_length() == 0 and _inside_chunked_prefill():
        raise ValueError(
            "EvolKVCache does not support chunked prefill (`prefill_chunk_size`): it compresses each layer at the "
            "end of the first forward, which would then be only the first chunk. Generate without "
            "`prefill_chunk_size`."
        )
    cache._begin_forward(mask)


def _inside_chunked_prefill(max_depth: int = 12) -> bool:
    """Whether this forward is a chunk of ``generate``'s chunked prefill (found in the calling frames)."""
    frame = sys._getframe(2)
    depth = 0
    while frame is not None and depth < max_depth:
        if frame.f_code.co_name == "_prefill":
            config = frame.f_locals.get("generation_config")
            return getattr(config, "prefill_chunk_size", None) is not None
        frame = frame.f_back  # type: ignore[assignment]
        depth += 1
    return False


def _make_attention_pre_hook(
    recipe: QueryRecipe,
) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]] | None]:
    # A partial of a module-level function, not a closure, so that a hooked model still pickles (torch.save).
    return functools.partial(_attention_pre_hook, recipe)


def _attention_pre_hook(
    recipe: QueryRecipe, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    cache = _call_cache(kwargs)
    if cache is None:
        return None
    layer_idx: int = module.layer_idx  # type: ignore[assignment]
    layer = cache._compressing_layer(layer_idx)
    if layer is None:
        return None
    hidden_states = kwargs.get("hidden_states", args[0] if args else None)
    if not isinstance(hidden_states, torch.Tensor):
        raise ValueError(
            f"EvolKVCache could not find the hidden states passed to {type(module).__name__}; this "
            "architecture is not supported."
        )
    query_length = hidden_states.shape[1]
    if not layer.prefilled:
        if query_length > layer.budget:
            _stash_prefill(cache, layer, module, recipe, hidden_states, kwargs)
        return None
    if (
        query_length == 1
        and kwargs.get("attention_mask") is None
        and cache._mask_kinds[layer_idx] == "full"
        and not cache._has_padding()
    ):
        # One new token, nothing padded, full attention, and the model's mask function chose no mask (sdpa,
        # flash): the token may see every stored entry of every such layer, whatever their number, so no mask
        # is right for all. (A sliding-window layer may need one where the model's reference layer did not.)
        return None
    kwargs["attention_mask"] = cache._layer_mask(
        module.config, hidden_states, kwargs.get("position_ids"), layer_idx
    )
    return args, kwargs


def _stash_prefill(
    cache: EvolKVCache,
    layer: Any,
    module: nn.Module,
    recipe: QueryRecipe,
    hidden_states: torch.Tensor,
    kwargs: dict[str, Any],
) -> None:
    from .layer import PendingPrefill

    length = hidden_states.shape[1]
    key_valid = cache._key_valid(length)
    queries = None
    if layer.options.needs_queries:
        window = min(layer.options.window_size, length)
        queries = window_queries(module, recipe, hidden_states, kwargs.get("position_embeddings"), window)
    scaling = getattr(module, "scaling", None)
    if not isinstance(scaling, float):
        scaling = float(recipe.head_dim) ** -0.5
    softcap = getattr(module, "attn_logit_softcapping", None)
    layer.pending = PendingPrefill(key_valid=key_valid, queries=queries, scaling=scaling, softcap=softcap)


def mask_function_for(kind: str) -> tuple[Callable[..., Any], str]:
    """transformers' mask builder for a layer kind, and the name of its cache keyword."""
    from transformers import masking_utils

    builder = (
        masking_utils.create_sliding_window_causal_mask
        if kind == "sliding"
        else masking_utils.create_causal_mask
    )
    parameters = inspect.signature(builder).parameters
    cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
    return builder, cache_kwarg
