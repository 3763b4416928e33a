"""The prefill-once engine gives the answers of the plain per-sample path."""

from __future__ import annotations

import pytest
import torch
from tiny_models import VOCAB, tiny_model

from evolkv_hf.inference import QUERY_AGNOSTIC, QUERY_AWARE, EncodedSample
from evolkv_hf.search.engine import CacheOptions, PlainEngine, PrefillOnceEngine


class IdTokenizer:
    """Decodes token ids to their numbers: enough to compare answers exactly."""

    pad_token_id = 0
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def encoded_samples(count: int, mode: str, seed: int = 0) -> list[EncodedSample]:
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        length = 36 + 5 * index  # unequal prompt lengths
        ids = torch.randint(2, VOCAB, (length,), generator=generator).tolist()
        question = torch.randint(2, VOCAB, (3 + index % 3,), generator=generator).tolist()
        samples.append(EncodedSample(ids, question, max_new_tokens=4 + index % 3, mode=mode))
    return samples


CANDIDATES = [[8, 8, 8], [8, 20, 12], [30, 8, 45], [100, 100, 100]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", [QUERY_AWARE, QUERY_AGNOSTIC])
def test_prefill_once_equals_plain_path(attn, mode):
    model = tiny_model("llama", attn=attn)
    samples = encoded_samples(5, mode)
    options = CacheOptions(window_size=4, kernel_size=3)
    plain = PlainEngine(model, IdTokenizer(), samples, options, batch_size=1)
    # Regression: batched query-agnostic prefills used positions shifted by each row's left padding.
    plain_batched = PlainEngine(model, IdTokenizer(), samples, options, batch_size=3)
    fast = PrefillOnceEngine(model, IdTokenizer(), samples, options, batch_size=3)
    for budgets in CANDIDATES:
        expected = plain.answers(budgets)
        assert fast.answers(budgets) == expected
        assert plain_batched.answers(budgets) == expected


def test_decoding_is_greedy_whatever_the_model_generation_config_says():
    # Regression: only sampling was switched off, so a repetition penalty, n-gram ban, beams or minimum length
    # shipped in the model's generation_config (Qwen2.5-Instruct ships repetition_penalty=1.05) changed the
    # "greedy" answers of every method, and could make batching change them.
    model = tiny_model("llama")
    samples = encoded_samples(4, QUERY_AWARE, seed=2)
    options = CacheOptions(window_size=4, kernel_size=3)
    expected = {
        name: engine(model, IdTokenizer(), samples, options, batch_size=2).answers([8, 20, 12])
        for name, engine in (("plain", PlainEngine), ("prefill_once", PrefillOnceEngine))
    }
    config = model.generation_config
    config.repetition_penalty, config.no_repeat_ngram_size, config.num_beams = 1.5, 1, 2
    config.min_new_tokens = 3
    # Step-counting settings applied twice in the prefill-once engine's two generate calls.
    config.begin_suppress_tokens, config.suppress_tokens = [6], [43]
    for name, engine in (("plain", PlainEngine), ("prefill_once", PrefillOnceEngine)):
        got = engine(model, IdTokenizer(), samples, options, batch_size=2).answers([8, 20, 12])
        assert got == expected[name], name


def test_memory_cap_recomputes_samples_beyond_it():
    model = tiny_model("llama")
    samples = encoded_samples(4, QUERY_AWARE, seed=1)
    options = CacheOptions(window_size=4, kernel_size=3)
    capped = PrefillOnceEngine(model, IdTokenizer(), samples, options, batch_size=2, max_storage_bytes=1)
    assert sum(entry is not None for entry in capped.prefilled) == 1
    plain = PlainEngine(model, IdTokenizer(), samples, options)
    assert capped.answers([8, 20, 12]) == plain.answers([8, 20, 12])


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_stored_prefills_own_compact_tensors_and_count_them_all(family):
    # Regression: Phi3's stored values were views of the fused qkv output, which stayed alive whole (2.6x what
    # the memory cap counted for a tiny model), and the rankings were not counted at all.
    model = tiny_model(family)
    engine = PrefillOnceEngine(
        model, IdTokenizer(), encoded_samples(2, QUERY_AWARE), CacheOptions(window_size=4, kernel_size=3)
    )
    held = 0
    for entry in engine.prefilled:
        assert entry is not None
        tensors = [t for t in (*entry.keys, *entry.values, *entry.rankings) if t is not None]
        for tensor in tensors:
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
        held += sum(t.numel() * t.element_size() for t in tensors)
    assert engine.stored_bytes == held


def test_budget_below_window_is_refused():
    model = tiny_model("llama")
    engine = PrefillOnceEngine(
        model, IdTokenizer(), encoded_samples(1, QUERY_AWARE), CacheOptions(window_size=4)
    )
    with pytest.raises(ValueError, match="window_size"):
        engine.answers([3, 8, 8])


def test_query_agnostic_batch_prefills_context_at_true_positions():
    # Regression: the context prefill of a left-padded query-agnostic batch used arange positions, so
    # padded rows sat `pad` positions too far right of the question that generate placed after them.
    from evolkv_hf.inference import generate_batch

    model = tiny_model("llama")
    samples = encoded_samples(3, QUERY_AGNOSTIC)
    seen = []
    handle = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("position_ids")), with_kwargs=True
    )
    try:
        generate_batch(model, IdTokenizer(), samples, None)
    finally:
        handle.remove()
    context_positions = seen[0]
    lengths = [len(s.context_ids) for s in samples]
    for row, length in enumerate(lengths):
        assert context_positions[row, -length:].tolist() == list(range(length))


@pytest.mark.parametrize("mode", [QUERY_AWARE, QUERY_AGNOSTIC])
def test_a_snapkv_prefill_serves_streaming_llm_without_a_second_forward(mode):
    model = tiny_model("llama")
    samples = encoded_samples(5, mode, seed=3)
    snapkv_options = CacheOptions(window_size=4, kernel_size=3)
    streaming_options = CacheOptions(window_size=4, kernel_size=3, policy="streaming")
    snapkv = PrefillOnceEngine(model, IdTokenizer(), samples, snapkv_options, batch_size=3)
    # The memory cap leaves all samples but the first to the plain path: it must switch policy too.
    capped = PrefillOnceEngine(
        model, IdTokenizer(), samples, snapkv_options, batch_size=3, max_storage_bytes=1
    )
    own = PrefillOnceEngine(model, IdTokenizer(), samples, streaming_options, batch_size=3)
    plain = PlainEngine(model, IdTokenizer(), samples, streaming_options, batch_size=1)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    shared, shared_capped = snapkv.with_policy("streaming"), capped.with_policy("streaming")
    assert not calls  # no forward
    for ours, theirs, base in zip(shared.prefilled, own.prefilled, snapkv.prefilled, strict=True):
        assert ours is not None and theirs is not None and base is not None
        assert all(torch.equal(a, b) for a, b in zip(ours.rankings, theirs.rankings, strict=True))
        assert ours.keys is base.keys and ours.values is base.values  # shared, not copied
    assert shared_capped._fallback is not None and shared_capped._fallback.options.policy == "streaming"
    differs = False
    for budgets in CANDIDATES:
        expected = plain.answers(budgets)
        assert own.answers(budgets) == expected
        assert shared.answers(budgets) == expected
        assert shared_capped.answers(budgets) == expected
        differs |= snapkv.answers(budgets) != expected
    assert differs  # the policies answer differently here, so the equalities above say which one ran
    # The SnapKV engine is unchanged, and a StreamingLLM prefill has no queries to rank with SnapKV.
    assert snapkv.answers([8, 20, 12]) == PlainEngine(model, IdTokenizer(), samples, snapkv_options).answers(
        [8, 20, 12]
    )
    assert snapkv.with_policy("snapkv") is snapkv
    with pytest.raises(ValueError, match="observation-window queries"):
        own.with_policy("snapkv")
