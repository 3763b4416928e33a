"""Tiny random models of the supported families, and the masked full-cache oracle.

The oracle is an attention function that runs on a plain ``DynamicCache`` and, once the prompt has been
processed, masks out exactly the prompt positions an ``EvolKVCache`` evicted, per layer, row and KV head.
Greedy generation through it must match generation with the compressed cache.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    AttentionInterface,
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    PhiConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
    StableLmConfig,
)
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

# transformers 5.24 renamed the `past_key_values` keyword of models and generate to `cache`.
CACHE_KWARG = (
    "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
)

VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=None,
)


def tiny_config(family: str, num_layers: int = 3, attn: str = "sdpa") -> Any:
    """A tiny random config of ``family`` with GQA (4 query heads, 2 KV heads)."""
    if family == "llama":
        config = LlamaConfig(num_hidden_layers=num_layers, **COMMON)
    elif family == "mistral":
        config = MistralConfig(num_hidden_layers=num_layers, sliding_window=4096, **COMMON)
    elif family == "qwen2":
        config = Qwen2Config(num_hidden_layers=num_layers, **COMMON)
    elif family == "qwen3":
        config = Qwen3Config(num_hidden_layers=num_layers, head_dim=16, **COMMON)
    elif family == "phi3":
        config = Phi3Config(num_hidden_layers=num_layers, partial_rotary_factor=0.5, **COMMON)
    elif family == "gemma2":
        layer_types = ["sliding_attention", "full_attention"] * ((num_layers + 1) // 2)
        config = Gemma2Config(
            num_hidden_layers=num_layers,
            head_dim=16,
            sliding_window=12,
            layer_types=layer_types[:num_layers],
            query_pre_attn_scalar=24,
            **COMMON,
        )
    elif family == "gemma3":
        layer_types = ["sliding_attention", "full_attention"] * ((num_layers + 1) // 2)
        config = Gemma3TextConfig(
            num_hidden_layers=num_layers,
            head_dim=16,
            sliding_window=12,
            layer_types=layer_types[:num_layers],
            query_pre_attn_scalar=24,
            **COMMON,
        )
    elif family == "olmo2":  # q_norm over the whole query projection, before the split into heads
        config = Olmo2Config(num_hidden_layers=num_layers, **COMMON)
    elif family == "phi":  # partial rotary and q_layernorm in the module's forward
        config = PhiConfig(
            num_hidden_layers=num_layers, partial_rotary_factor=0.5, qk_layernorm=True, **COMMON
        )
    elif family == "stablelm":  # partial rotary, and a LayerNorm per head applied after the transpose
        config = StableLmConfig(
            num_hidden_layers=num_layers, partial_rotary_factor=0.25, qk_layernorm=True, **COMMON
        )
    else:
        raise ValueError(family)
    config._attn_implementation = attn
    return config


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "olmo2", "phi", "stablelm")


def tiny_model(
    family: str = "llama", num_layers: int = 3, attn: str = "sdpa", seed: int = 0, **config_overrides: Any
) -> PreTrainedModel:
    """A random model of ``family``; ``config_overrides`` are set on its tiny config first."""
    if family == "gemma2" and attn == "sdpa":
        attn = "eager"  # Gemma2's logit softcap has no sdpa path in transformers
    config = tiny_config(family, num_layers, attn)
    for name, value in config_overrides.items():
        setattr(config, name, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    model.generation_config.pad_token_id = 0
    return model.eval()


def random_batch(
    batch: int, length: int, pads: list[int] | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random token ids with left padding (``pads[i]`` pad tokens in row ``i``)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    for row, count in enumerate(pads or []):
        ids[row, :count] = 0
        mask[row, :count] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    return states if groups == 1 else states.repeat_interleave(groups, dim=1)


class EvictionOracle:
    """Registers an attention implementation that masks evicted prompt positions after the prefill."""

    name = "evolkv_oracle"

    def __init__(self, prompt_length: int, evicted: dict[int, torch.Tensor]) -> None:
        self.prompt_length = prompt_length
        self.evicted = evicted  # layer -> (batch, kv_heads, prompt_length) bool

    @classmethod
    def from_cache(cls, cache: Any, prompt_length: int) -> EvictionOracle:
        evicted = {}
        for index in range(len(cache.layers)):
            layer = cache.compressing_layer(index)
            if layer is None or not layer.is_compressed:
                continue
            kept = layer.prefill_positions
            flags = torch.ones(*kept.shape[:2], prompt_length, dtype=torch.bool)
            flags.scatter_(2, kept.cpu(), False)
            evicted[index] = flags
        return cls(prompt_length, evicted)

    def attention(self) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        oracle = self

        def forward(
            module: torch.nn.Module,
            query: torch.Tensor,
            key: torch.Tensor,
            value: torch.Tensor,
            attention_mask: torch.Tensor | None,
            scaling: float | None = None,
            dropout: float = 0.0,
            softcap: float | None = None,
            **kwargs: Any,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            groups = query.shape[1] // key.shape[1]
            keys, values = _repeat_kv(key, groups), _repeat_kv(value, groups)
            scores = torch.matmul(query, keys.transpose(2, 3)) * (scaling or query.shape[-1] ** -0.5)
            if softcap is not None:
                scores = torch.tanh(scores / softcap) * softcap
            if attention_mask is not None:
                scores = scores + attention_mask[:, :, :, : keys.shape[-2]]
            evicted = oracle.evicted.get(module.layer_idx)
            if evicted is not None and keys.shape[-2] > oracle.prompt_length:
                flags = torch.zeros(scores.shape[0], scores.shape[1], 1, keys.shape[-2], dtype=torch.bool)
                flags[..., : oracle.prompt_length] = _repeat_kv(evicted, groups)[:, :, None, :]
                scores = scores.masked_fill(flags, float("-inf"))
            probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
            output = torch.matmul(probs, values).transpose(1, 2).contiguous()
            return output, probs

        return forward

    def install(self, model: PreTrainedModel) -> None:
        AttentionInterface.register(self.name, self.attention())
        if self.name not in ALL_MASK_ATTENTION_FUNCTIONS:
            ALL_MASK_ATTENTION_FUNCTIONS.register(self.name, eager_mask)
        model.set_attn_implementation(self.name)


def greedy(model: PreTrainedModel, inputs: dict[str, torch.Tensor], **kwargs: Any) -> Any:
    return model.generate(
        **inputs,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
        **kwargs,
    )


def max_logit_diff(first: Any, second: Any) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(first.logits, second.logits, strict=True))
