"""Recompute the observation-window queries of an attention module from its inputs.

``Cache.update`` receives keys and values but no queries, so a forward pre-hook on each attention module
recomputes the queries of the last ``window`` tokens exactly as the module will: projection (``q_proj``, or
the first ``num_heads * head_dim`` columns of a fused ``qkv_proj``), ``q_norm`` where present (per head in
Qwen3 and Gemma3; over the whole projection in OLMo2), ``q_layernorm`` where present (Phi, StableLM, after the
split into heads), then RoPE with the module file's own ``apply_rotary_pos_emb`` and the
``position_embeddings`` the decoder layer passes, sliced to the window; when those cover fewer dimensions
than a head (partial rotary, which Phi and StableLM apply in the module's forward) only the first ones are
rotated.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

RotaryFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class QueryRecipe:
    """What is needed to recompute one attention module's queries."""

    head_dim: int
    fused_qkv: bool
    apply_rotary: RotaryFn
    q_norm_on_projection: bool = False
    """``q_norm`` normalises the whole projection before the split into heads (OLMo2), not each head."""

    @classmethod
    def for_module(cls, module: nn.Module, model_type: str) -> QueryRecipe:
        """Inspect an attention module; raise ``ValueError`` naming ``model_type`` when unsupported."""
        head_dim = getattr(module, "head_dim", None)
        if not isinstance(head_dim, int):
            raise ValueError(
                f"EvolKVCache cannot read `head_dim` from the attention module {type(module).__name__} of "
                f"model type {model_type!r}; this architecture is not supported."
            )
        if isinstance(getattr(module, "q_proj", None), nn.Module):
            fused = False
        elif isinstance(getattr(module, "qkv_proj", None), nn.Module):
            fused = True
        else:
            raise ValueError(
                f"EvolKVCache does not support model type {model_type!r}: its attention module "
                f"{type(module).__name__} has neither `q_proj` nor `qkv_proj` (multi-latent attention and other "
                "non-standard projections are not supported)."
            )
        rotary = getattr(sys.modules.get(type(module).__module__), "apply_rotary_pos_emb", None)
        if not callable(rotary):
            raise ValueError(
                f"EvolKVCache does not support model type {model_type!r}: no `apply_rotary_pos_emb` was found in "
                f"{type(module).__module__}."
            )
        q_norm = getattr(module, "q_norm", None)
        weight = getattr(q_norm, "weight", None) if isinstance(q_norm, nn.Module) else None
        on_projection = isinstance(weight, torch.Tensor) and weight.dim() == 1 and weight.shape[0] != head_dim
        return cls(
            head_dim=head_dim, fused_qkv=fused, apply_rotary=rotary, q_norm_on_projection=on_projection
        )


def window_queries(
    module: nn.Module,
    recipe: QueryRecipe,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
    window: int,
) -> torch.Tensor:
    """Return the queries of the last ``window`` tokens, shaped ``(batch, num_heads, window, head_dim)``.

    ``hidden_states`` is the attention module's input (after the decoder layer's input norm).
    """
    states = hidden_states[:, -window:]
    batch, length = states.shape[:2]
    with torch.no_grad():
        if recipe.fused_qkv:
            fused = _call(module, "qkv_proj", states)
            num_heads = getattr(module.config, "num_attention_heads", None)
            if num_heads is None:  # pragma: no cover - every fused-qkv family in transformers has it
                raise ValueError("Fused qkv projection without `config.num_attention_heads`.")
            # Phi3 computes the query width the same way; tensor-parallel shards are not fused.
            projected = fused[..., : num_heads * recipe.head_dim]
        else:
            projected = _call(module, "q_proj", states)
        q_norm = getattr(module, "q_norm", None)
        if isinstance(q_norm, nn.Module) and recipe.q_norm_on_projection:
            projected = q_norm(projected)
        queries = projected.view(batch, length, -1, recipe.head_dim)
        if isinstance(q_norm, nn.Module) and not recipe.q_norm_on_projection:
            queries = q_norm(queries)
        queries = queries.transpose(1, 2)
        # Phi, StableLM: a norm on (batch, heads, length, head_dim), StableLM's with one weight per head.
        q_layernorm = getattr(module, "q_layernorm", None)
        if isinstance(q_layernorm, nn.Module):
            queries = q_layernorm(queries)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            cos, sin = cos[:, -length:], sin[:, -length:]
            rotary = cos.shape[-1]
            rotated, passed = queries[..., :rotary], queries[..., rotary:]
            # The rotary function also rotates a key tensor; hand it one head so that no work is wasted.
            rotated, _ = recipe.apply_rotary(rotated, rotated[:, :1], cos, sin)
            queries = torch.cat((rotated, passed), dim=-1) if passed.shape[-1] else rotated
    return queries


def _call(module: nn.Module, name: str, states: torch.Tensor) -> torch.Tensor:
    projection = getattr(module, name)
    output: torch.Tensor = projection(states)
    return output
