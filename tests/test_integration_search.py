"""The search engines and a short search on the real demo model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import pytest

from evolkv_hf import BudgetAllocation
from evolkv_hf.inference import encode_samples
from evolkv_hf.search import BudgetSearcher, CacheOptions, PlainEngine, PrefillOnceEngine, SearchArguments
from evolkv_hf.tasks import load_task

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def niah(demo_model_and_tokenizer):
    _, tokenizer = demo_model_and_tokenizer
    return load_task("niah_single", tokenizer, 512, 4, seed=3)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefill_once_engine_equals_plain_path_on_demo_model(demo_model_and_tokenizer, niah, attn):
    model, tokenizer = demo_model_and_tokenizer
    previous = model.config._attn_implementation
    model.set_attn_implementation(attn)
    try:
        samples = encode_samples(niah, tokenizer)
        options = CacheOptions()
        fast = PrefillOnceEngine(model, tokenizer, samples, options, batch_size=4)
        plain = PlainEngine(model, tokenizer, samples, options, batch_size=1)
        layers = model.config.num_hidden_layers
        for allocation in (
            BudgetAllocation.uniform(layers, 64),
            BudgetAllocation.pyramid(layers, 96),
            BudgetAllocation(budgets=[32 + (i * 37) % 200 for i in range(layers)]),
        ):
            assert fast.answers(allocation.budgets) == plain.answers(allocation.budgets)
        # The SnapKV prefill serves StreamingLLM too (reproduce.py scores both from one prefill).
        streaming = PlainEngine(model, tokenizer, samples, CacheOptions(policy="streaming"), batch_size=1)
        budgets = BudgetAllocation.uniform(layers, 64).budgets
        assert fast.with_policy("streaming").answers(budgets) == streaming.answers(budgets)
    finally:
        model.set_attn_implementation(previous)


def test_short_search_on_demo_model(demo_model_and_tokenizer, niah, tmp_path):
    model, tokenizer = demo_model_and_tokenizer
    args = SearchArguments(
        output_dir=str(tmp_path / "run"),
        target_budget=64,
        group_size=30,  # one group
        population_size=3,
        generations_per_group=2,
        eval_batch_size=4,
        disable_tqdm=True,
    )
    searcher = BudgetSearcher(
        model, args, niah.select(range(3)), eval_dataset=niah.select([3]), processing_class=tokenizer
    )
    result = searcher.search()
    assert result.allocation.num_layers == 30 and result.allocation.total == 64 * 30
    assert min(result.allocation.budgets) >= 32
    assert set(result.allocation.scores) == {
        "search_best_score",
        "search_completed_score",
        "eval_evolkv",
        "eval_uniform",
        "eval_pyramid",
    }
    assert len([e for e in result.history if e["event"] == "candidate"]) == 6
    loaded = BudgetAllocation.from_pretrained(tmp_path / "run" / "allocation")
    assert loaded.budgets == result.allocation.budgets and loaded.metric_name == "edit_sim"
