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
    fast = PrefillOnceEngine(model, IdTokenizer(), samples, options, batch_size=3)
    for budgets in CANDIDATES:
        assert fast.answers(budgets) == plain.answers(budgets)


def test_memory_cap_recomputes_samples_beyond_it():
    model = tiny_model("llama")
    samples = encoded_samples(4, QUERY_AWARE, seed=1)
    options = CacheOptions(window_size=4, kernel_size=3)
    capped = PrefillOnceEngine(model, IdTokenizer(), samples, options, batch_size=2, max_storage_bytes=1)
    assert sum(entry is not None for entry in capped.prefilled) == 1
    plain = PlainEngine(model, IdTokenizer(), samples, options)
    assert capped.answers([8, 20, 12]) == plain.answers([8, 20, 12])


def test_budget_below_window_is_refused():
    model = tiny_model("llama")
    engine = PrefillOnceEngine(
        model, IdTokenizer(), encoded_samples(1, QUERY_AWARE), CacheOptions(window_size=4)
    )
    with pytest.raises(ValueError, match="window_size"):
        engine.answers([3, 8, 8])
