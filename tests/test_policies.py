"""Selection policies: the fast paths give the same answer as the plain definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from evolkv_hf.cache.policies import (
    positions_from_ranking,
    rank_positions,
    select_positions,
    snapkv_scores,
)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    prefix=st.integers(1, 40),
    window=st.integers(0, 5),
    levels=st.integers(1, 6),
    pads=st.integers(0, 40),
    data=st.data(),
)
def test_select_positions_equals_the_stable_ranking(
    seed: int, prefix: int, window: int, levels: int, pads: int, data: st.DataObject
) -> None:
    # Few distinct levels and -inf pads make ties common: the top-k fast path must fall back exactly then.
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (2, 3, prefix), generator=generator).float()
    scores[0, :, : min(pads, prefix)] = float("-inf")
    scores[1, :, : min(pads % 5, prefix)] = float("inf")  # streaming sinks score +inf
    keep = data.draw(st.integers(0, prefix))
    seq = prefix + window
    expected = positions_from_ranking(rank_positions(scores), keep, seq, window)
    assert torch.equal(select_positions(scores, keep, seq, window), expected)


def _reference_scores(
    queries: torch.Tensor,
    keys: torch.Tensor,
    key_valid: torch.Tensor | None,
    scaling: float,
    prefix: int,
    kernel: int,
    pooling: str,
    aggregation: str,
    softcap: float | None = None,
) -> torch.Tensor:
    """SnapKV written out head by head: window attention, mean over valid window queries, pooling, GQA."""
    batch, heads, window, _ = queries.shape
    kv_heads, seq = keys.shape[1], keys.shape[2]
    groups = heads // kv_heads
    out = torch.empty(batch, kv_heads, prefix)
    for b in range(batch):
        valid = key_valid[b] if key_valid is not None else torch.ones(seq, dtype=torch.bool)
        for kv in range(kv_heads):
            per_head = []
            for g in range(groups):
                q = queries[b, kv * groups + g].float()
                logits = (q @ keys[b, kv].float().T) * scaling
                if softcap is not None:
                    logits = torch.tanh(logits / softcap) * softcap
                for i in range(window):
                    logits[i, seq - window + i + 1 :] = float("-inf")
                logits[:, ~valid] = float("-inf")
                rows = [torch.softmax(logits[i], -1) for i in range(window) if valid[seq - window + i]]
                mean = torch.stack(rows).mean(0)[:prefix] if rows else torch.zeros(prefix)
                pool = F.avg_pool1d if pooling == "avg" else F.max_pool1d
                pooled = (
                    pool(mean[None, None], kernel, stride=1, padding=kernel // 2)[0, 0, :prefix]
                    if prefix
                    else mean
                )
                per_head.append(pooled)
            stacked = torch.stack(per_head)
            out[b, kv] = stacked.mean(0) if aggregation == "mean" else stacked.amax(0)
        out[b, :, ~valid[:prefix]] = float("-inf")
    return out


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("aggregation", ["mean", "max"])
@pytest.mark.parametrize("padded", [False, True])
def test_snapkv_scores_match_the_head_by_head_definition(
    pooling: str, aggregation: str, padded: bool
) -> None:
    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, window, seq, dim = 3, 6, 2, 4, 19, 8
    queries = torch.randn(batch, heads, window, dim, generator=generator)
    keys = torch.randn(batch, kv_heads, seq, dim, generator=generator)
    key_valid = None
    if padded:
        # Rows with different numbers of valid window queries (4, 2 and 4): the per-row counts matter.
        key_valid = torch.ones(batch, seq, dtype=torch.bool)
        key_valid[1, :17] = False
        key_valid[2, :3] = False
    prefix = seq - window
    got = snapkv_scores(
        queries,
        keys,
        key_valid,
        scaling=dim**-0.5,
        prefix_length=prefix,
        kernel_size=5,
        pooling=pooling,
        gqa_aggregation=aggregation,
    )
    expected = _reference_scores(queries, keys, key_valid, dim**-0.5, prefix, 5, pooling, aggregation)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "window", "seq", "kernel"),
    [
        (4, 4, 1, 6, 1),  # no GQA, a one-token window, no pooling
        (4, 2, 5, 5, 3),  # the whole prompt is the window: nothing to score
        (6, 2, 3, 10, 2),  # an even kernel
    ],
)
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_snapkv_scores_match_the_definition_at_edge_shapes(
    heads: int, kv_heads: int, window: int, seq: int, kernel: int, pooling: str
) -> None:
    generator = torch.Generator().manual_seed(4)
    queries = torch.randn(3, heads, window, 8, generator=generator)
    keys = torch.randn(3, kv_heads, seq, 8, generator=generator)
    key_valid = torch.ones(3, seq, dtype=torch.bool)
    key_valid[1, : seq - 1] = False  # one real token
    key_valid[2] = False  # nothing real at all
    for valid in (None, key_valid):
        got = snapkv_scores(
            queries, keys, valid, scaling=0.3, prefix_length=seq - window, kernel_size=kernel, pooling=pooling
        )
        expected = _reference_scores(queries, keys, valid, 0.3, seq - window, kernel, pooling, "mean")
        assert got.shape == (3, kv_heads, seq - window)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_snapkv_scores_ignore_pad_queries_whatever_their_values() -> None:
    # Right padding: pad queries see real keys. Their rows are left out of the average, even when they hold
    # non-finite values (the in-place softmax must not carry them into the scores through a zero weight).
    generator = torch.Generator().manual_seed(5)
    queries = torch.randn(2, 4, 3, 8, generator=generator)
    keys = torch.randn(2, 2, 9, 8, generator=generator)
    key_valid = torch.ones(2, 9, dtype=torch.bool)
    key_valid[0, 8] = False
    queries[0, :, 2] = float("nan")  # the pad query of row 0
    got = snapkv_scores(queries, keys, key_valid, scaling=0.3, prefix_length=6, kernel_size=3)
    expected = _reference_scores(queries, keys, key_valid, 0.3, 6, 3, "avg", "mean")
    assert not got.isnan().any()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_snapkv_scores_leave_their_inputs_untouched() -> None:
    generator = torch.Generator().manual_seed(6)
    queries = torch.randn(2, 4, 3, 8, generator=generator).bfloat16()
    keys = torch.randn(2, 2, 9, 8, generator=generator).bfloat16()
    key_valid = torch.ones(2, 9, dtype=torch.bool)
    key_valid[1, :4] = False
    copies = (queries.clone(), keys.clone(), key_valid.clone())
    snapkv_scores(queries, keys, key_valid, scaling=0.3, prefix_length=6, softcap=2.0)
    for before, after in zip(copies, (queries, keys, key_valid), strict=True):
        assert torch.equal(before, after)


def test_snapkv_scores_apply_the_logit_softcap_before_the_softmax() -> None:
    # Gemma2 caps its attention logits; large queries make the cap bite.
    generator = torch.Generator().manual_seed(3)
    queries = torch.randn(2, 4, 3, 8, generator=generator) * 20
    keys = torch.randn(2, 2, 15, 8, generator=generator)
    key_valid = torch.ones(2, 15, dtype=torch.bool)
    key_valid[1, :5] = False
    got = snapkv_scores(
        queries, keys, key_valid, scaling=8**-0.5, prefix_length=12, kernel_size=3, softcap=5.0
    )
    expected = _reference_scores(queries, keys, key_valid, 8**-0.5, 12, 3, "avg", "mean", softcap=5.0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    uncapped = snapkv_scores(queries, keys, key_valid, scaling=8**-0.5, prefix_length=12, kernel_size=3)
    assert not torch.allclose(got[torch.isfinite(got)], uncapped[torch.isfinite(uncapped)])


def test_snapkv_scores_accept_transposed_half_precision_keys() -> None:
    # Models hand the cache keys as a transposed view of the projection; bf16 logits, float32 softmax.
    generator = torch.Generator().manual_seed(1)
    queries = torch.randn(1, 4, 3, 8, generator=generator)
    keys = torch.randn(1, 12, 2, 8, generator=generator).transpose(1, 2)
    reference = snapkv_scores(queries, keys.contiguous(), None, scaling=0.25, prefix_length=9)
    half = snapkv_scores(queries.bfloat16(), keys.bfloat16(), None, scaling=0.25, prefix_length=9)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, reference, rtol=0.05, atol=1e-3)


def test_snapkv_scores_do_not_overflow_in_float16() -> None:
    # Unscaled q.k of large activations exceeds float16's range; the scaling is applied to the queries first.
    generator = torch.Generator().manual_seed(2)
    queries = torch.randn(1, 4, 3, 64, generator=generator) * 100
    keys = torch.randn(1, 2, 12, 64, generator=generator) * 100
    reference = snapkv_scores(queries, keys, None, scaling=64**-0.5, prefix_length=9)
    half = snapkv_scores(queries.half(), keys.half(), None, scaling=64**-0.5, prefix_length=9)
    assert torch.isfinite(half).all()
    assert torch.equal(half.argmax(-1), reference.argmax(-1))
