"""Property-based fuzzing of ``EvolKVCache`` against the masked full-cache oracle.

Every example draws a tiny random Llama or Qwen3 model (1-3 layers, 1-2 KV heads, 1-3 query heads per KV
head, head dim 8 or 16, sdpa or eager), per-layer budgets (1, the window, exactly the prompt length, above it,
or anything in between), a prompt shorter than, equal to or longer than the observation window, a batch of
1-3 left-padded rows and the cache options (policy, window, kernel, pooling, GQA aggregation). Greedy
generation with the cache must match greedy generation through ``EvictionOracle`` (a full ``DynamicCache``
whose attention masks out exactly what the cache evicted): same tokens, logits within 1e-5 (float32), no
NaN, the documented stored lengths and a consistent ``memory_bytes``. The oracle is built from the cache's
own kept positions, so it checks the mechanics (gather, masks, lengths, padding, GQA storage); which
positions are kept is checked separately against scores computed from the attention probabilities of an
eager forward (SnapKV) or from the StreamingLLM rule.

Two hypothesis profiles, registered here rather than in conftest.py (neither is loaded globally):

* ``ci`` (default): 25 derandomized examples, a few seconds on 2 CPU cores;
* ``fuzz``: 500 random examples, selected with ``EVOLKV_FUZZ_PROFILE=fuzz``.

``pytest tests/test_fuzz_cache.py --hypothesis-show-statistics`` shows how many examples compressed how
many layers, had padding, and had their selection checked.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from tiny_models import VOCAB, EvictionOracle, greedy
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, PreTrainedModel, Qwen3Config

from evolkv_hf import EvolKVCache

_COMMON_SETTINGS = dict(
    deadline=None,
    database=None,  # no example database: runs do not depend on what earlier runs found
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("ci", max_examples=25, derandomize=True, **_COMMON_SETTINGS)
settings.register_profile("fuzz", max_examples=500, **_COMMON_SETTINGS)
PROFILE = os.environ.get("EVOLKV_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "fuzz"):
    raise ValueError(f"EVOLKV_FUZZ_PROFILE must be 'ci' or 'fuzz', got {PROFILE!r}.")
FUZZ = settings.get_profile(PROFILE)

LOGIT_TOLERANCE = 1e-5
FAMILIES = ("llama", "qwen3")


@dataclass(frozen=True)
class Case:
    """One fuzzed configuration (hypothesis prints it on failure)."""

    family: str
    attn: str
    num_layers: int
    num_kv_heads: int
    gqa_ratio: int
    head_dim: int
    budgets: tuple[int, ...]
    prompt_length: int
    pads: tuple[int, ...]
    max_new_tokens: int
    policy: str
    window_size: int
    kernel_size: int
    pooling: str
    gqa_aggregation: str
    num_sink_tokens: int
    seed: int


@st.composite
def budget_for(draw: st.DrawFn, window: int, prompt: int) -> int:
    """One layer's budget: 1, the window, exactly the prompt, above it, between the window and the prompt
    (where SnapKV/StreamingLLM select), or anything below the prompt."""
    kind = draw(st.sampled_from(["between", "one", "window", "below", "prompt", "above", "between"]))
    if kind == "between" and prompt - 1 > window:
        return draw(st.integers(window + 1, prompt - 1))
    if kind == "one":
        return 1
    if kind == "window":
        return window
    if kind == "prompt":
        return prompt
    if kind == "above":
        return draw(st.integers(prompt + 1, prompt + 8))
    return draw(st.integers(1, max(1, prompt - 1)))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    window = draw(st.integers(1, 8), label="window_size")
    # Mostly prompts longer than the window (where SnapKV selects), but all three relations.
    relation = draw(
        st.sampled_from(["longer", "shorter", "longer", "equal", "longer"]), label="prompt vs window"
    )
    if relation == "shorter" and window > 1:
        prompt = draw(st.integers(1, window - 1))
    elif relation == "equal":
        prompt = window
    else:
        prompt = draw(st.integers(window + 1, window + 28))
    num_layers = draw(st.integers(1, 3), label="num_layers")
    budgets = tuple(draw(budget_for(window, prompt)) for _ in range(num_layers))
    batch = draw(st.integers(1, 3), label="batch")
    # Left padding, at least one real token per row.
    pads = tuple(draw(st.lists(st.integers(0, prompt - 1), min_size=batch, max_size=batch), label="pads"))
    return Case(
        family=draw(st.sampled_from(FAMILIES)),
        attn=draw(st.sampled_from(["sdpa", "eager"])),
        num_layers=num_layers,
        num_kv_heads=draw(st.integers(1, 2)),
        gqa_ratio=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from([8, 16])),
        budgets=budgets,
        prompt_length=prompt,
        pads=pads,
        max_new_tokens=draw(st.integers(1, 5)),
        policy=draw(st.sampled_from(["snapkv", "streaming"])),
        window_size=window,
        kernel_size=draw(st.integers(1, 5)),
        pooling=draw(st.sampled_from(["avg", "max"])),
        gqa_aggregation=draw(st.sampled_from(["mean", "max"])),
        num_sink_tokens=draw(st.integers(0, 4)),
        seed=draw(st.integers(0, 2**16)),
    )


def build_model(case: Case) -> PreTrainedModel:
    """A tiny random model for ``case`` (same weights for the same case)."""
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=48,  # a multiple of every query-head count drawn (1, 2, 3, 4, 6)
        intermediate_size=64,
        num_hidden_layers=case.num_layers,
        num_attention_heads=case.num_kv_heads * case.gqa_ratio,
        num_key_value_heads=case.num_kv_heads,
        head_dim=case.head_dim,
        max_position_embeddings=256,
        # Larger than the default 0.02: attention logits of order 1 (evicting the wrong position shows in the
        # tokens) and output logits of order 1 (float32 rounding stays well below the 1e-5 tolerance).
        initializer_range=0.1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=None,
    )
    config = LlamaConfig(**kwargs) if case.family == "llama" else Qwen3Config(**kwargs)
    torch.manual_seed(case.seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=case.attn)
    model.generation_config.pad_token_id = 0
    return model.eval()


def make_inputs(case: Case) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(case.seed + 1)
    ids = torch.randint(2, VOCAB, (len(case.pads), case.prompt_length), generator=generator)
    mask = torch.ones_like(ids)
    for row, count in enumerate(case.pads):
        ids[row, :count] = 0
        mask[row, :count] = 0
    return {"input_ids": ids, "attention_mask": mask}


def note(label: str) -> None:
    """Count ``label`` in hypothesis' statistics (``--hypothesis-show-statistics``); a no-op elsewhere."""
    if currently_in_test_context():
        event(label)


def top2_gap(logits: torch.Tensor) -> torch.Tensor:
    top = logits.float().topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def assert_matches_oracle(ours, reference) -> None:
    """Same tokens and logits within ``LOGIT_TOLERANCE`` at every step.

    A step whose two best logits are within ``2 * LOGIT_TOLERANCE`` is a genuine greedy tie: float32
    rounding may break it either way, so the comparison stops there instead of failing.
    """
    steps = len(reference.logits)
    new_ours = ours.sequences[:, -steps:]
    new_reference = reference.sequences[:, -steps:]
    for step, (mine, theirs) in enumerate(zip(ours.logits, reference.logits, strict=True)):
        assert not torch.isnan(mine).any(), f"NaN in the cache's logits at step {step}"
        diff = float((mine - theirs).abs().max())
        assert diff <= LOGIT_TOLERANCE, f"step {step}: max logit diff {diff:.3g} > {LOGIT_TOLERANCE}"
        if not torch.equal(new_ours[:, step], new_reference[:, step]):
            rows = (new_ours[:, step] != new_reference[:, step]).nonzero().flatten()
            gaps = top2_gap(theirs[rows])
            assert bool((gaps <= 2 * LOGIT_TOLERANCE).all()), (
                f"step {step}: tokens differ in rows {rows.tolist()} although the logits agree and the "
                f"top-2 gaps are {gaps.tolist()}"
            )
            note("greedy tie broken differently")
            return  # a tie broke differently: later steps continue from different tokens
    assert torch.equal(ours.sequences, reference.sequences)


def reference_scores(case: Case, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, the selection scores of the prefix positions, ``(batch, kv_heads, prefix)``, computed
    independently of the cache: from the attention probabilities an eager forward returns
    (``output_attentions=True``), not from recomputed queries."""
    model = build_model(dataclasses.replace(case, attn="eager"))
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
    length = case.prompt_length
    window = min(case.window_size, length)
    prefix = length - window
    valid = inputs["attention_mask"].bool()
    query_valid = valid[:, length - window :].float()  # pad queries see only pads: dropped
    batch = len(case.pads)
    scores = []
    for probs in attentions:
        window_probs = probs.float()[:, :, length - window :, :prefix] * query_valid[:, None, :, None]
        observed = window_probs.sum(dim=2) / query_valid.sum(dim=-1).clamp(min=1)[:, None, None]
        if case.kernel_size > 1 and prefix > 0:
            pool = torch.nn.functional.avg_pool1d if case.pooling == "avg" else torch.nn.functional.max_pool1d
            flat = pool(observed.reshape(-1, 1, prefix), case.kernel_size, 1, case.kernel_size // 2)
            observed = flat[..., :prefix].reshape(observed.shape)
        # Query head h reads KV head h // gqa_ratio.
        grouped = observed.reshape(batch, case.num_kv_heads, case.gqa_ratio, prefix)
        layer_scores = grouped.mean(dim=2) if case.gqa_aggregation == "mean" else grouped.amax(dim=2)
        scores.append(layer_scores.masked_fill(~valid[:, None, :prefix], float("-inf")))
    return scores


def expected_streaming(case: Case, row: int, keep: int) -> set[int]:
    """Real prefix positions StreamingLLM keeps in ``row``: the first sinks, then the most recent."""
    prefix = case.prompt_length - min(case.window_size, case.prompt_length)
    real = list(range(case.pads[row], prefix))
    sinks = real[: min(case.num_sink_tokens, keep)]
    rest = [p for p in real if p not in sinks]
    recent = rest[len(rest) - min(len(rest), keep - len(sinks)) :]
    return set(sinks) | set(recent)


def check_selection(case: Case, cache: EvolKVCache, inputs: dict[str, torch.Tensor]) -> None:
    """The kept prefix positions are the best-scored ones (tie-robust: no evicted real position scores
    higher than a kept one) and as many real positions as the budget allows."""
    length = case.prompt_length
    window = min(case.window_size, length)
    prefix = length - window
    scores = reference_scores(case, inputs) if case.policy == "snapkv" else None
    for index, budget in enumerate(case.budgets):
        if budget >= length or budget <= window:
            continue  # nothing evicted, or only the last `budget` tokens kept (checked by the caller)
        note(f"selection checked ({case.policy})")
        keep = budget - window
        kept = cache.kept_positions(index)[..., :keep]
        for row, pad_count in enumerate(case.pads):
            for head in range(case.num_kv_heads):
                kept_real = {int(p) for p in kept[row, head] if p >= pad_count}
                assert len(kept_real) == min(keep, max(0, prefix - pad_count)), (index, row, head)
                if scores is None:
                    assert kept_real == expected_streaming(case, row, keep), (index, row, head)
                    continue
                row_scores = scores[index][row, head]
                evicted = [p for p in range(pad_count, prefix) if p not in kept_real]
                if kept_real and evicted:
                    lowest_kept = min(float(row_scores[p]) for p in kept_real)
                    highest_evicted = max(float(row_scores[p]) for p in evicted)
                    assert lowest_kept >= highest_evicted - 1e-6, (
                        index,
                        row,
                        head,
                        lowest_kept,
                        highest_evicted,
                    )


def check_case(case: Case) -> None:
    inputs = make_inputs(case)
    model = build_model(case)
    cache = EvolKVCache(
        model,
        list(case.budgets),
        window_size=case.window_size,
        kernel_size=case.kernel_size,
        pooling=case.pooling,
        gqa_aggregation=case.gqa_aggregation,
        policy=case.policy,
        num_sink_tokens=case.num_sink_tokens,
    )
    new = case.max_new_tokens
    ours = greedy(model, inputs, past_key_values=cache, max_new_tokens=new, min_new_tokens=new)
    assert ours.sequences.shape == (len(case.pads), case.prompt_length + new)

    reference_model = build_model(case)
    EvictionOracle.from_cache(cache, case.prompt_length).install(reference_model)
    reference = greedy(
        reference_model, inputs, past_key_values=DynamicCache(), max_new_tokens=new, min_new_tokens=new
    )
    assert_matches_oracle(ours, reference)
    check_selection(case, cache, inputs)

    # The documented length contract and what a layer holds.
    expected = [min(budget, case.prompt_length) + new - 1 for budget in case.budgets]
    assert cache.stored_lengths() == expected
    assert cache.get_seq_length() == case.prompt_length + new - 1
    batch = len(case.pads)
    for index, (layer, budget) in enumerate(zip(cache.layers, case.budgets, strict=True)):
        assert layer.is_compressed == (case.prompt_length > budget), index
        assert layer.keys.shape == (batch, case.num_kv_heads, expected[index], case.head_dim)
        assert layer.values.shape == layer.keys.shape
        assert not torch.isnan(layer.keys).any() and not torch.isnan(layer.values).any()
        kept = cache.kept_positions(index)
        assert kept.shape == (batch, case.num_kv_heads, expected[index])
        prompt_part = kept[..., : min(budget, case.prompt_length)]
        # Sorted, distinct, in range; the last min(window, budget) prompt positions are always kept.
        assert bool((prompt_part[..., 1:] > prompt_part[..., :-1]).all())
        assert int(prompt_part.min()) >= 0 and int(prompt_part.max()) == case.prompt_length - 1
        window = min(case.window_size, budget, case.prompt_length)
        tail = torch.arange(case.prompt_length - window, case.prompt_length)
        assert bool((prompt_part[..., -window:] == tail).all())
        # Pads are evicted first: a row keeps a pad only if all its real tokens are kept.
        for row, pad_count in enumerate(case.pads):
            real = case.prompt_length - pad_count
            kept_pads = (prompt_part[row] < pad_count).sum(dim=-1)  # per KV head
            assert kept_pads.tolist() == [max(0, min(budget, case.prompt_length) - real)] * case.num_kv_heads
    itemsize = torch.finfo(torch.float32).bits // 8
    assert cache.memory_bytes() == sum(
        batch * case.num_kv_heads * length * case.head_dim * 2 * itemsize for length in expected
    )
    assert cache.memory_bytes() == sum(layer.memory_bytes() for layer in cache.layers)


@FUZZ
@given(case=cases())
def test_cache_matches_oracle_on_random_configs(case: Case) -> None:
    compressed = sum(budget < case.prompt_length for budget in case.budgets)
    note(f"compressed layers: {compressed} of {case.num_layers}")
    note("left-padded batch" if any(case.pads) else "no padding")
    check_case(case)


# Edge cases the strategy can reach but that are worth pinning as plain regression examples.
PINNED = [
    # budget 1 everywhere, prompt longer than the window, padded batch, GQA 3:1
    Case("llama", "sdpa", 3, 2, 3, 8, (1, 1, 1), 20, (0, 7, 19), 4, "snapkv", 8, 5, "max", "max", 4, 1),
    # budgets below, equal to and above the prompt; prompt shorter than the window
    Case("qwen3", "eager", 3, 1, 2, 16, (2, 5, 9), 5, (0, 3), 3, "snapkv", 8, 4, "avg", "mean", 4, 2),
    # streaming with more sinks than the budget leaves room for, window 1
    Case("llama", "eager", 2, 2, 1, 16, (3, 12), 30, (4, 0), 5, "streaming", 1, 1, "avg", "mean", 4, 3),
    # SnapKV selection with pooling over a padded batch, budgets between the window and the prompt
    Case("llama", "eager", 3, 2, 2, 16, (7, 12, 20), 28, (0, 9), 3, "snapkv", 4, 5, "avg", "max", 4, 5),
    # budget exactly the window, even kernel
    Case("qwen3", "sdpa", 2, 2, 2, 8, (6, 6), 25, (0, 10, 24), 2, "snapkv", 6, 2, "max", "mean", 0, 4),
]


@pytest.mark.parametrize("case", PINNED, ids=[f"pinned{i}" for i in range(len(PINNED))])
def test_pinned_edge_cases(case: Case) -> None:
    check_case(case)
