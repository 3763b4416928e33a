"""EvolKVCache against the masked full-cache oracle, and its contract with generate."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from tiny_models import (
    CACHE_KWARG,
    COMMON,
    FAMILIES,
    EvictionOracle,
    greedy,
    max_logit_diff,
    random_batch,
    tiny_config,
    tiny_model,
)
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from evolkv_hf import EvolKVCache
from evolkv_hf.cache.hooks import find_attention_modules, hooks_installed
from evolkv_hf.cache.queries import QueryRecipe, window_queries

PROMPT = 40
NEW = 6


def run_against_oracle(family: str, attn: str, budgets: list[int], pads: list[int], **cache_kwargs):
    inputs = random_batch(len(pads), PROMPT, pads)
    model = tiny_model(family, num_layers=len(budgets), attn=attn)
    cache = EvolKVCache(model, budgets, window_size=4, kernel_size=3, **cache_kwargs)
    ours = greedy(model, inputs, past_key_values=cache, max_new_tokens=NEW)
    reference_model = tiny_model(family, num_layers=len(budgets), attn=attn)
    EvictionOracle.from_cache(cache, PROMPT).install(reference_model)
    reference = greedy(reference_model, inputs, past_key_values=DynamicCache(), max_new_tokens=NEW)
    return cache, ours, reference


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("pads", [[0], [0, 13]], ids=["batch1", "left_padded"])
def test_matches_masked_full_cache_oracle(family, attn, pads):
    cache, ours, reference = run_against_oracle(family, attn, [9, 17, 30], pads)
    assert torch.equal(ours.sequences, reference.sequences)
    assert max_logit_diff(ours, reference) <= 1e-5
    assert [layer.is_compressed for layer in cache.layers] == [True, True, True]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_matches_oracle(family):
    cache, ours, reference = run_against_oracle(family, "sdpa", [10, 20, 7, 15], [0, 9])
    assert torch.equal(ours.sequences, reference.sequences)
    assert max_logit_diff(ours, reference) <= 1e-5
    if family in ("gemma2", "gemma3"):
        # Local layers keep the model's own sliding window; global layers are compressed.
        assert [cache.compressing_layer(i) is not None for i in range(4)] == [False, True, False, True]


def test_streaming_policy_matches_oracle_and_keeps_sinks():
    cache, ours, reference = run_against_oracle("llama", "sdpa", [10, 20, 12], [0, 7], policy="streaming")
    assert torch.equal(ours.sequences, reference.sequences)
    assert max_logit_diff(ours, reference) <= 1e-5
    kept = cache.layers[0].prefill_positions
    # Row 0: sinks 0..3, then the most recent tokens; row 1 starts after 7 pads.
    assert kept[0, 0].tolist() == [0, 1, 2, 3, 34, 35, 36, 37, 38, 39]
    assert kept[1, 0].tolist() == [7, 8, 9, 10, 34, 35, 36, 37, 38, 39]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_budget_at_least_prompt_is_identical_to_dynamic_cache(attn):
    inputs = random_batch(2, PROMPT, [0, 5])
    model = tiny_model("llama", attn=attn)
    plain = greedy(model, inputs, max_new_tokens=NEW)
    cache = EvolKVCache(model, [PROMPT, PROMPT + 10, 1000])
    ours = greedy(model, inputs, past_key_values=cache, max_new_tokens=NEW)
    assert torch.equal(plain.sequences, ours.sequences)
    assert max_logit_diff(plain, ours) == 0.0
    assert not any(layer.is_compressed for layer in cache.layers)


def count_mask_builds(cache: EvolKVCache) -> list[int]:
    """Record the layer index of every per-layer mask the cache builds from now on."""
    built: list[int] = []
    build = cache._layer_mask

    def counting_build(config, hidden_states, position_ids, layer_idx):
        built.append(layer_idx)
        return build(config, hidden_states, position_ids, layer_idx)

    cache._layer_mask = counting_build
    return built


@pytest.mark.parametrize(
    ("attn", "pads", "builds"), [("sdpa", [0], False), ("sdpa", [0, 6], True), ("eager", [0], True)]
)
def test_decode_builds_per_layer_masks_only_when_needed(attn, pads, builds):
    # sdpa/flash without padding need no mask for one new token, whatever each layer stores; padding or eager do.
    model = tiny_model("llama", attn=attn)
    inputs = random_batch(len(pads), PROMPT, pads, seed=4)
    cache = EvolKVCache(model, [9, 17, 30], window_size=4)
    built_for_layers = count_mask_builds(cache)
    ours = greedy(model, inputs, past_key_values=cache, max_new_tokens=NEW)
    oracle_model = tiny_model("llama", attn=attn)
    EvictionOracle.from_cache(cache, PROMPT).install(oracle_model)
    expected = greedy(oracle_model, inputs, past_key_values=DynamicCache(), max_new_tokens=NEW)
    assert torch.equal(ours.sequences, expected.sequences)
    assert max_logit_diff(ours, expected) <= 1e-5
    assert bool(built_for_layers) is builds


def test_decode_keeps_per_layer_masks_for_sliding_window_layers():
    # Regression: a layer storing more than the window needs its sliding mask even when the model's reference
    # layer (storing less) needs none; the no-mask decode shortcut is for full-attention layers only.
    model = tiny_model("mistral", sliding_window=12)
    cache = EvolKVCache(model, [9, 30, 17], window_size=4)
    built_for_layers = count_mask_builds(cache)
    greedy(model, random_batch(1, PROMPT, [0], seed=4), past_key_values=cache, max_new_tokens=NEW)
    # Layer 1 stores 30 > 12 entries: its sliding mask is built at every decode step (NEW - 1 of them), also in
    # the first steps, where layer 0 (9 stored + new) is still inside the window and the model passes no mask.
    assert built_for_layers.count(1) == NEW - 1


def test_padded_row_gives_same_tokens_as_alone():
    model = tiny_model("llama")
    batch = random_batch(2, PROMPT, [0, 11], seed=3)
    cache = EvolKVCache(model, [12, 20, 16], window_size=4)
    together = greedy(model, batch, past_key_values=cache, max_new_tokens=NEW)
    for row in range(2):
        start = int((batch["attention_mask"][row] == 0).sum())
        alone = {k: v[row : row + 1, start:] for k, v in batch.items()}
        single = greedy(
            model, alone, past_key_values=EvolKVCache(model, [12, 20, 16], window_size=4), max_new_tokens=NEW
        )
        assert together.sequences[row, PROMPT:].tolist() == single.sequences[0, PROMPT - start :].tolist()


def test_cache_keyword_and_direct_forward():
    model = tiny_model("llama")
    inputs = random_batch(1, PROMPT)
    by_old_name = greedy(
        model, inputs, past_key_values=EvolKVCache(model, 10, window_size=4), max_new_tokens=NEW
    )
    by_new_name = greedy(
        model, inputs, **{CACHE_KWARG: EvolKVCache(model, 10, window_size=4)}, max_new_tokens=NEW
    )
    assert torch.equal(by_old_name.sequences, by_new_name.sequences)
    # Direct calls: prefill then one decoding step, positions from the cache's true length.
    cache = EvolKVCache(model, 10, window_size=4)
    with torch.no_grad():
        first = model(**inputs, **{CACHE_KWARG: cache})
        token = first.logits[:, -1:].argmax(-1)
        second = model(input_ids=token, **{CACHE_KWARG: cache})
    assert cache.get_seq_length() == PROMPT + 1
    assert torch.equal(second.logits[:, -1].argmax(-1), by_old_name.sequences[:, PROMPT + 1])


def test_window_queries_equal_the_queries_the_attention_receives():
    for family in FAMILIES:
        model = tiny_model(family, num_layers=2)
        captured_inputs, captured_queries = {}, {}

        def probe(module, query, key, value, attention_mask, captured_queries=captured_queries, **kwargs):
            captured_queries[module.layer_idx] = query.detach().clone()
            own_eager = sys.modules[type(module).__module__].eager_attention_forward
            return own_eager(module, query, key, value, attention_mask, **kwargs)

        AttentionInterface.register("evolkv_probe", probe)
        ALL_MASK_ATTENTION_FUNCTIONS.register("evolkv_probe", eager_mask)
        model.set_attn_implementation("evolkv_probe")
        modules = find_attention_modules(model)
        handles = [
            module.register_forward_pre_hook(
                lambda m, a, kw, captured=captured_inputs: captured.__setitem__(m.layer_idx, kw),
                with_kwargs=True,
            )
            for module in modules.values()
        ]
        with torch.no_grad():
            model(**random_batch(2, 20, [0, 3]))
        for handle in handles:
            handle.remove()
        for index, module in modules.items():
            kwargs = captured_inputs[index]
            recipe = QueryRecipe.for_module(module, family)
            recomputed = window_queries(
                module, recipe, kwargs["hidden_states"], kwargs["position_embeddings"], window=5
            )
            # Equal up to float32 rounding: the recomputation projects only the window's rows, and a BLAS may
            # block a 5-row matmul differently from the full one (exact on Intel MKL, ~1e-7 apart on AVX2 AMD).
            torch.testing.assert_close(recomputed, captured_queries[index][:, :, -5:], rtol=1e-5, atol=1e-6)


def test_kept_positions_are_topk_of_independent_window_attention():
    window, kernel, budget = 4, 3, 14
    model = tiny_model("llama", attn="eager")
    inputs = random_batch(2, PROMPT, [0, 6], seed=7)
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
    cache = EvolKVCache(model, budget, window_size=window, kernel_size=kernel)
    with torch.no_grad():
        model(**inputs, **{CACHE_KWARG: cache})
    valid = inputs["attention_mask"].bool()
    for index, probs in enumerate(attentions):
        observed = probs[:, :, -window:, : PROMPT - window].float().mean(dim=2)  # (batch, heads, prefix)
        pooled = F.avg_pool1d(observed.reshape(-1, 1, PROMPT - window), kernel, 1, kernel // 2)
        pooled = pooled.reshape(2, 2, 2, PROMPT - window).mean(dim=2)  # 2 KV heads x 2 query heads each
        pooled = pooled.masked_fill(~valid[:, None, : PROMPT - window], float("-inf"))
        expected = pooled.topk(budget - window, dim=-1).indices.sort(dim=-1).values
        kept = cache.kept_positions(index)
        assert torch.equal(kept[..., : budget - window], expected)
        assert kept[..., budget - window :].tolist() == [[list(range(PROMPT - window, PROMPT))] * 2] * 2


def test_layer_index_errors_name_the_range():
    # Regression: an index past the last layer was reported as "not compressed by this cache" (misleading: on
    # Gemma that names a sliding layer), a too-negative one raised a bare IndexError, and True meant layer 1.
    model = tiny_model("llama")  # 3 decoder layers
    cache = EvolKVCache(model, 12, window_size=4)
    assert cache.kept_positions(0) is None  # before the prefill
    with torch.no_grad():
        model(**random_batch(1, PROMPT, [0]), **{CACHE_KWARG: cache})
    assert torch.equal(cache.kept_positions(-1), cache.kept_positions(2))  # negative counts from the end
    assert torch.equal(cache.kept_positions(torch.tensor(1)), cache.kept_positions(1))  # 0-d integer tensor
    for bad in (3, -4):
        with pytest.raises(
            IndexError, match=rf"layer_idx {bad} is out of range: the model has 3 decoder layers"
        ):
            cache.kept_positions(bad)
        with pytest.raises(IndexError, match="out of range"):
            cache.compressing_layer(bad)
    for bad in (True, None, 1.0):
        with pytest.raises(TypeError, match="layer_idx must be an int"):
            cache.kept_positions(bad)
    cache.reset()
    assert cache.kept_positions(0) is None


def test_stored_lengths_memory_and_no_full_length_tensor():
    model = tiny_model("llama")
    budgets = [8, 25, 100]
    cache = EvolKVCache(model, budgets, window_size=4)
    greedy(model, random_batch(3, PROMPT, [0, 2, 9]), past_key_values=cache, max_new_tokens=NEW)
    expected = [min(b, PROMPT) + NEW - 1 for b in budgets]
    assert cache.stored_lengths() == expected
    assert cache.get_seq_length() == PROMPT + NEW - 1
    head_dim, kv_heads, batch, itemsize = 16, 2, 3, 4
    assert cache.memory_bytes() == sum(
        s * kv_heads * (head_dim + head_dim) * itemsize * batch for s in expected
    )
    for layer in cache.layers:
        assert layer.pending is None
        for tensor in (layer.keys, layer.values):
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_beam_search_matches_oracle():
    inputs = random_batch(2, PROMPT, [0, 5], seed=2)
    model = tiny_model("llama")
    cache = EvolKVCache(model, [9, 17, 12], window_size=4)
    ours = greedy(model, inputs, past_key_values=cache, max_new_tokens=NEW, num_beams=3)
    reference_model = tiny_model("llama")
    EvictionOracle.from_cache(cache, PROMPT).install(reference_model)
    reference = greedy(
        reference_model, inputs, past_key_values=DynamicCache(), max_new_tokens=NEW, num_beams=3
    )
    assert torch.equal(ours.sequences, reference.sequences)


def test_multi_turn_reuse_continues_the_cache():
    inputs = random_batch(1, PROMPT, seed=4)
    follow_up = torch.randint(2, 90, (1, 7), generator=torch.Generator().manual_seed(1))
    model = tiny_model("llama")
    reference_model = tiny_model("llama")

    cache = EvolKVCache(model, [9, 17, 12], window_size=4)
    first = greedy(model, inputs, past_key_values=cache, max_new_tokens=NEW)
    oracle = EvictionOracle.from_cache(cache, PROMPT)
    oracle.install(reference_model)
    dynamic = DynamicCache()
    first_ref = greedy(reference_model, inputs, past_key_values=dynamic, max_new_tokens=NEW)
    assert torch.equal(first.sequences, first_ref.sequences)

    second_inputs = {"input_ids": torch.cat([first.sequences, follow_up], dim=1)}
    second_inputs["attention_mask"] = torch.ones_like(second_inputs["input_ids"])
    second = greedy(model, second_inputs, past_key_values=cache, max_new_tokens=NEW)
    second_ref = greedy(reference_model, second_inputs, past_key_values=dynamic, max_new_tokens=NEW)
    assert torch.equal(second.sequences, second_ref.sequences)
    assert max_logit_diff(second, second_ref) <= 1e-5
    assert cache.stored_lengths() == [9 + (NEW - 1) + 1 + 7 + NEW - 1, 17 + 2 * NEW + 6, 12 + 2 * NEW + 6]


def test_crop_and_assisted_decoding():
    model = tiny_model("llama")
    inputs = random_batch(1, PROMPT, seed=5)
    # Without eviction, prompt-lookup decoding (q > 1 verification forwards, then crop) is lossless.
    plain = greedy(model, inputs, past_key_values=EvolKVCache(model, 64), max_new_tokens=10)
    assisted_cache = EvolKVCache(model, 64)
    assisted = model.generate(
        **inputs,
        past_key_values=assisted_cache,
        max_new_tokens=10,
        do_sample=False,
        prompt_lookup_num_tokens=3,
    )
    assert torch.equal(plain.sequences, assisted)
    assert assisted_cache.get_seq_length() == PROMPT + 9
    # With eviction it runs and keeps the length contract (the drafted tokens of the first forward are part
    # of the compressed prefill, see docs/concepts.md).
    cache = EvolKVCache(model, [9, 17, 12], window_size=4)
    out = model.generate(
        **inputs, past_key_values=cache, max_new_tokens=10, do_sample=False, prompt_lookup_num_tokens=3
    )
    assert out.shape[1] == PROMPT + 10 and cache.get_seq_length() == PROMPT + 9
    assert all(layer.stored_length < layer.seen for layer in cache.layers)

    cache = EvolKVCache(model, [9, 17, 12], window_size=4)
    greedy(model, inputs, past_key_values=cache, max_new_tokens=4)
    before = cache.stored_lengths()
    cache.crop(-2)
    assert cache.stored_lengths() == [s - 2 for s in before]
    assert cache.get_seq_length() == PROMPT + 3 - 2
    with pytest.raises(ValueError, match="contiguous"):
        cache.crop(-(4 + 3 + 4))  # beyond the appended tokens and the prompt's window
    with pytest.raises(ValueError, match="negative"):
        cache.crop(5)


def test_a_refused_crop_changes_no_layer():
    # Regression: transformers crops layer by layer, so layers before the one that refused were already cropped
    # (stored [23, 12], seen [23, 43] after a failed crop(-20)) and the next forward used wrong positions.
    model = tiny_model("llama", num_layers=2)
    inputs = random_batch(1, PROMPT, seed=5)
    cache = EvolKVCache(model, [64, 9], window_size=4)
    greedy(model, inputs, past_key_values=cache, max_new_tokens=4)
    stored, seen = cache.stored_lengths(), [layer.seen for layer in cache.layers]
    with pytest.raises(ValueError, match=r"Cannot crop 20 tokens.*num_assistant_tokens, prompt_lookup"):
        cache.crop(-20)
    assert cache.stored_lengths() == stored and [layer.seen for layer in cache.layers] == seen


def test_reset_makes_the_cache_reusable():
    model = tiny_model("llama")
    first_inputs, second_inputs = random_batch(1, PROMPT, seed=8), random_batch(1, PROMPT, seed=9)
    cache = EvolKVCache(model, [9, 17, 12], window_size=4)
    greedy(model, first_inputs, past_key_values=cache, max_new_tokens=NEW)
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.memory_bytes() == 0
    reused = greedy(model, second_inputs, past_key_values=cache, max_new_tokens=NEW)
    fresh = greedy(
        model,
        second_inputs,
        past_key_values=EvolKVCache(model, [9, 17, 12], window_size=4),
        max_new_tokens=NEW,
    )
    assert torch.equal(reused.sequences, fresh.sequences)


def test_hooks_are_idempotent_removable_and_inert_for_other_caches():
    model = tiny_model("llama")
    inputs = random_batch(2, PROMPT, [0, 4])
    before = greedy(model, inputs, max_new_tokens=NEW)
    EvolKVCache(model, 10)
    hooks = model.__dict__["_evolkv_hf_hooks"]
    count = len(hooks.handles)
    EvolKVCache(model, 20)
    assert model.__dict__["_evolkv_hf_hooks"] is hooks and len(hooks.handles) == count == 1 + 3
    with_hooks = greedy(model, inputs, max_new_tokens=NEW)
    assert torch.equal(before.sequences, with_hooks.sequences)
    assert max_logit_diff(before, with_hooks) == 0.0
    cache = EvolKVCache(model, 10)
    used = EvolKVCache(model, 10)
    greedy(model, inputs, past_key_values=used, max_new_tokens=NEW)
    assert EvolKVCache.detach(model) and not hooks_installed(model)
    with pytest.raises(RuntimeError, match="hooks did not run"):
        greedy(model, inputs, past_key_values=cache, max_new_tokens=NEW)
    # Regression: a cache that had already run kept working, without its per-layer masks, after detach.
    follow_up = {"input_ids": torch.cat([inputs["input_ids"], inputs["input_ids"][:, :3]], dim=1)}
    follow_up["attention_mask"] = torch.ones_like(follow_up["input_ids"])
    with pytest.raises(RuntimeError, match="hooks did not run"):
        greedy(model, follow_up, past_key_values=used, max_new_tokens=NEW)


def test_a_hooked_model_still_pickles_and_its_copy_still_compresses(tmp_path):
    # Regression: the attention hooks were local closures, so torch.save(model) failed once a cache had been
    # built for the model, even an unused one.
    import pickle

    model = tiny_model("llama")
    inputs = random_batch(1, PROMPT, seed=3)
    expected = greedy(model, inputs, past_key_values=EvolKVCache(model, [9, 17, 12]), max_new_tokens=NEW)
    copy = pickle.loads(pickle.dumps(model))
    torch.save(model, tmp_path / "model.pt")
    assert hooks_installed(copy)
    again = greedy(copy, inputs, past_key_values=EvolKVCache(copy, [9, 17, 12]), max_new_tokens=NEW)
    assert torch.equal(expected.sequences, again.sequences)


def test_import_has_no_side_effects():
    code = (
        "import transformers, torch\n"
        "from transformers.models.llama import modeling_llama as m\n"
        "before = (m.LlamaAttention.forward, m.LlamaModel.forward, dict(transformers.AttentionInterface._global_mapping))\n"
        "import evolkv_hf\n"
        "after = (m.LlamaAttention.forward, m.LlamaModel.forward, dict(transformers.AttentionInterface._global_mapping))\n"
        "assert before == after\n"
        "from torch.nn.modules import module\n"
        "assert not module._global_forward_pre_hooks\n"
        "print('clean')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "clean" in result.stdout


class TestClearErrors:
    def test_budget_count_mismatch(self):
        with pytest.raises(ValueError, match="3 decoder layers"):
            EvolKVCache(tiny_model("llama"), [10, 10])

    @pytest.mark.parametrize("bad", [0, -3])
    def test_budget_below_one(self, bad):
        with pytest.raises(ValueError, match="at least 1"):
            EvolKVCache(tiny_model("llama"), [10, bad, 10])

    @pytest.mark.parametrize("bad", [10.5, True, "8"])
    def test_non_integer_budget(self, bad):
        with pytest.raises(TypeError):
            EvolKVCache(tiny_model("llama"), [10, bad, 10])

    def test_options(self):
        model = tiny_model("llama")
        with pytest.raises(ValueError, match="policy"):
            EvolKVCache(model, 10, policy="h2o")
        with pytest.raises(ValueError, match="pooling"):
            EvolKVCache(model, 10, pooling="median")
        with pytest.raises(ValueError, match="window_size"):
            EvolKVCache(model, 10, window_size=0)

    def test_use_cache_false(self):
        model = tiny_model("llama")
        with pytest.raises(ValueError, match="use_cache=False"):
            model.generate(
                **random_batch(1, 20),
                past_key_values=EvolKVCache(model, 8),
                use_cache=False,
                max_new_tokens=2,
            )

    def test_chunked_prefill(self):
        model = tiny_model("llama")
        cache = EvolKVCache(model, 8)
        with pytest.raises(ValueError, match="chunked prefill"):
            model.generate(
                **random_batch(1, 20), past_key_values=cache, prefill_chunk_size=8, max_new_tokens=2
            )
        assert cache.get_seq_length() == 0

    def test_custom_4d_mask(self):
        model = tiny_model("llama")
        mask = torch.ones(1, 1, 20, 20)
        with pytest.raises(ValueError, match="2D padding"):
            model(
                input_ids=random_batch(1, 20)["input_ids"],
                attention_mask=mask,
                **{CACHE_KWARG: EvolKVCache(model, 8)},
            )

    def test_multi_latent_attention(self):
        from transformers import AutoModelForCausalLM, DeepseekV2Config

        config = DeepseekV2Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            kv_lora_rank=16,
            q_lora_rank=None,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=8,
            n_routed_experts=2,
            num_experts_per_tok=1,
            first_k_dense_replace=2,
        )
        model = AutoModelForCausalLM.from_config(config)
        with pytest.raises(ValueError, match="deepseek_v2"):
            EvolKVCache(model, 8)

    def test_kv_sharing(self):
        config = tiny_config("llama")
        config.kv_sharing_modes = ["store", "reuse", "reuse"]
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)
        with pytest.raises(ValueError, match="KV sharing"):
            EvolKVCache(model, 8)

    def test_multimodal_wrapper(self):
        # Regression: Gemma3ForConditionalGeneration (what AutoModelForCausalLM gives for Gemma-3 4B and up) was
        # accepted, then failed in generate with "needs a 2D tensor attention_mask or None, got dict".
        from transformers import (
            Gemma3Config,
            Gemma3ForConditionalGeneration,
            Gemma3TextConfig,
            SiglipVisionConfig,
        )

        text = Gemma3TextConfig(
            **{**COMMON, "eos_token_id": 2},
            head_dim=16,
            num_hidden_layers=2,
            layer_types=["sliding_attention", "full_attention"],
            sliding_window=12,
        )
        vision = SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=4,
        )
        model = Gemma3ForConditionalGeneration(
            Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
        )
        with pytest.raises(ValueError, match=r"Gemma3ForConditionalGeneration.*Gemma3ForCausalLM"):
            EvolKVCache(model, 8)

    def test_not_a_model(self):
        with pytest.raises(TypeError, match="transformers model"):
            EvolKVCache([1, 2, 3], 8)  # type: ignore[arg-type]


def test_cache_from_allocation_and_saved_directory(tmp_path):
    from evolkv_hf import BudgetAllocation

    model = tiny_model("llama")
    allocation = BudgetAllocation(budgets=[9, 17, 12], window_size=4, kernel_size=3, pooling="max")
    cache = EvolKVCache(model, allocation)
    assert cache.budgets == [9, 17, 12]
    assert (cache.options.window_size, cache.options.kernel_size, cache.options.pooling) == (4, 3, "max")
    overridden = EvolKVCache(model, allocation, window_size=2)
    assert overridden.options.window_size == 2 and overridden.options.kernel_size == 3

    allocation.save_pretrained(tmp_path / "alloc")
    loaded = EvolKVCache.from_pretrained(tmp_path / "alloc", model)
    inputs = random_batch(1, PROMPT)
    first = greedy(model, inputs, past_key_values=cache, max_new_tokens=NEW)
    second = greedy(model, inputs, past_key_values=loaded, max_new_tokens=NEW)
    assert torch.equal(first.sequences, second.sequences)

    with pytest.raises(ValueError, match=r"4.*3|3.*4"):
        EvolKVCache(model, BudgetAllocation.uniform(4, 16))

    # Regressions: download options reached the constructor ("unexpected keyword argument"), and a 0-d
    # tensor failed with "'int' object is not iterable".
    offline = EvolKVCache.from_pretrained(
        tmp_path / "alloc", model, local_files_only=True, force_download=False
    )
    assert offline.budgets == [9, 17, 12]
    assert EvolKVCache(model, torch.tensor(12)).budgets == [12, 12, 12]


def test_an_allocation_for_another_hub_model_warns():
    """Regression: an allocation learned for another model was used silently when the layer counts matched."""
    import warnings

    from evolkv_hf import BudgetAllocation

    model = tiny_model("llama")
    model.config._name_or_path = "org/tiny-a"
    with pytest.warns(UserWarning, match=r"learned for 'org/tiny-b' but the model is 'org/tiny-a'"):
        EvolKVCache(model, BudgetAllocation(budgets=[9, 17, 12], window_size=4, base_model="org/tiny-b"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EvolKVCache(model, BudgetAllocation(budgets=[9, 17, 12], window_size=4, base_model="org/tiny-a"))
        EvolKVCache(model, BudgetAllocation(budgets=[9, 17, 12], window_size=4))
