"""The benchmark scripts run end to end on a tiny random model (so they cannot rot unnoticed)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import cost_table  # noqa: E402
from _measure import MEMORY_RUN_ENVIRONMENT, PeakMemory, kv_bytes, run_memory_job  # noqa: E402


def test_cost_table_on_a_tiny_random_model(tmp_path: Path) -> None:
    output, plot = tmp_path / "table.json", tmp_path / "scaling.png"
    cost_table.main(
        [
            "--model", "random:tiny-llama", "--device", "cpu", "--dtype", "float32",
            "--lengths", "96,160", "--budgets", "16,40", "--decode-tokens", "3", "--repeats", "1",
            "--no-memory", "--output", str(output), "--plot", str(plot),
        ]
    )  # fmt: skip
    results = json.loads(output.read_text())
    rows = results["rows"]
    # DynamicCache + (uniform + pyramid) x 2 budgets, at 2 lengths.
    assert len(rows) == 2 * 5
    config = cost_table.RANDOM_MODELS["tiny-llama"]
    per_token = (
        config["num_hidden_layers"] * config["num_key_value_heads"] * 2 * 16 * 4
    )  # K+V, head_dim 16, fp32
    for row in rows:
        stored = row["length"] if row["budget"] is None else row["budget"]
        # Uniform and pyramid allocations both keep budget x layers tokens in total; decode appends 3.
        assert row["kv_bytes"] == (stored + 3) * per_token, row
        assert row["prefill_s"] > 0 and row["decode_ms_per_token"] > 0
    assert {r["method"] for r in rows} == {"dynamic", "evolkv-uniform", "evolkv-pyramid"}
    dynamic = [r for r in rows if r["method"] == "dynamic"]
    assert all(r["prefill_ratio"] == 1.0 and r["kv_bytes_ratio"] == 1.0 for r in dynamic)
    assert set(results["compression_alone_ms"]) == {"96", "160"}
    assert plot.stat().st_size > 0


def test_cost_table_rejects_unknown_models() -> None:
    with pytest.raises(SystemExit, match=r"random:llama-3\.1-8b"):
        cost_table.load_model("random:nope", torch.float32, torch.device("cpu"), "sdpa")


def test_peak_memory_sees_an_allocation() -> None:
    with PeakMemory(torch.device("cpu")) as peak:
        block = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, touched
        del block
    assert peak.peak_bytes >= 60 * 2**20, (peak.peak_bytes, peak.method)
    if not peak.method.startswith("VmHWM"):
        pytest.skip(f"the peak cannot be reset here ({peak.method}); only the lifetime peak is checked")
    # After the reset, an earlier (freed) peak does not count: a small allocation measures small.
    with PeakMemory(torch.device("cpu")) as small:
        block = torch.ones(2**20, dtype=torch.uint8)
        del block
    assert small.peak_bytes < 32 * 2**20, (small.peak_bytes, small.method)


def test_kv_bytes_counts_keys_and_values() -> None:
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4), 0)
    assert kv_bytes(cache) == 2 * (2 * 5 * 4 * 4)


def test_plot_and_kvpress_comparison_with_both_environments(tmp_path: Path) -> None:
    # DynamicCache is measured in both environments: the plot and the pairing must keep them apart.
    rows = []
    for environment, method in (("evolkv", "evolkv-uniform"), ("kvpress", "kvpress-snapkv")):
        for length in (1024, 2048):
            # The two environments' DynamicCache baselines differ (kvpress's decode is slower here), so a ratio
            # taken against the wrong baseline shows.
            base = 1.0 if environment == "evolkv" else 2.0
            for name, budget, scale in (("dynamic", None, base), (method, 128, 0.5 * base)):
                rows.append(
                    {
                        "length": length,
                        "method": name,
                        "budget": budget,
                        "environment": environment,
                        "prefill_s": length / 1000 * (1.1 if budget else 1.0),
                        "decode_ms_per_token": 40.0 * scale,
                        "kv_bytes": 1000 * scale,
                    }
                )
    cost_table.add_ratios(rows)
    results = {
        "rows": rows,
        "compression_alone_ms": {"1024": 1.0, "2048": 2.0},
        "environment": {"transformers": "5.24.0"},
        "kvpress_environment": {"transformers": "5.2.0", "kvpress": "0.5.5"},
        "command": "test",
    }
    output = tmp_path / "cost_table.json"
    cost_table.write_derived(results, output, tmp_path / "scaling.png")
    comparison = json.loads((tmp_path / "kvpress_compare.json").read_text())
    assert [pair["length"] for pair in comparison["pairs"]] == [1024, 2048]
    pair = comparison["pairs"][0]
    assert pair["evolkv"]["decode_ratio"] == pair["kvpress"]["decode_ratio"] == 0.5
    assert pair["evolkv"]["prefill_ratio"] == 1.1
    assert comparison["kvpress_environment"]["kvpress"] == "0.5.5"
    assert (tmp_path / "scaling.png").stat().st_size > 0


def test_run_memory_job_runs_one_configuration_in_a_fresh_process(tmp_path: Path) -> None:
    """The launcher cost_table.py and kvpress_worker.py share: job and arguments in, last JSON line out."""
    script = tmp_path / "job.py"
    script.write_text(
        "import json, os, sys\n"
        "job = json.loads(sys.argv[sys.argv.index('--memory-job') + 1])\n"
        "print('warming up')\n"
        "print(json.dumps({'peak_bytes': job['length'] * 2, 'method': os.environ['MALLOC_MMAP_THRESHOLD_'] + "
        "':' + sys.argv[-1]}))\n"
    )
    peak, method = run_memory_job(str(script), {"length": 21}, ["--dtype", "bf16"])
    assert peak == 42
    assert method == MEMORY_RUN_ENVIRONMENT["MALLOC_MMAP_THRESHOLD_"] + ":bf16"


def test_repeats_must_be_positive() -> None:
    # Regression: --repeats 0 failed at statistics.median([]) after the model had loaded.
    from _measure import positive_int

    assert positive_int("3") == 3
    with pytest.raises(ValueError, match="integer >= 1"):
        positive_int("0")


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_cache_cost_replays_the_prefill_work_of_a_real_prefill(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prefill_work_ratio times the cache's own work on captured inputs: the replay must run that work once per
    layer, and rebuild the cache a real prefill builds."""
    import cache_cost
    from tiny_models import CACHE_KWARG, tiny_model

    from evolkv_hf import EvolKVCache
    from evolkv_hf.cache import hooks
    from evolkv_hf.cache import layer as cache_layer

    calls = {"window_queries": 0, "snapkv_scores": 0}

    def counted(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(hooks, "window_queries", counted("window_queries", hooks.window_queries))
    monkeypatch.setattr(cache_layer, "snapkv_scores", counted("snapkv_scores", cache_layer.snapkv_scores))

    model = tiny_model(family, num_layers=3)
    ids = torch.randint(3, 96, (1, 80), generator=torch.Generator().manual_seed(0))
    budgets = [20, 36, 52]
    real = EvolKVCache(model, budgets)
    with torch.no_grad():
        model(input_ids=ids, **{CACHE_KWARG: real})
    assert calls == {"window_queries": 3, "snapkv_scores": 3}

    inputs = cache_cost.capture_layer_inputs(model, ids)
    assert calls == {"window_queries": 3, "snapkv_scores": 3}  # capturing runs a DynamicCache prefill
    # As the projections hand them to update: a transposed view of a (batch, seq, heads, dim) buffer.
    assert all(not entry.keys.is_contiguous() and entry.keys.stride(1) == 16 for entry in inputs)

    replayed = EvolKVCache(model, budgets)
    cache_cost.replay(model, replayed, inputs)
    assert calls == {"window_queries": 6, "snapkv_scores": 6}  # once per layer, as in the real prefill
    for layer_real, layer_replayed in zip(real.layers, replayed.layers, strict=True):
        assert torch.equal(layer_real.kept_positions(), layer_replayed.kept_positions())
        torch.testing.assert_close(layer_real.keys, layer_replayed.keys, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer_real.values, layer_replayed.values, rtol=1e-5, atol=1e-6)
    assert replayed.get_seq_length() == 80 and [lay.stored_length for lay in replayed.layers] == budgets

    cache_cost.replay(model, cache_cost.make_cache("dynamic", model, 20), inputs)
    assert calls == {"window_queries": 6, "snapkv_scores": 6}  # DynamicCache: update only

    added, low, high, runs = cache_cost.measure_prefill_work(model, ids, 20, repeats=4)
    assert len(runs["dynamic"]) == len(runs["evolkv"]) == 4
    assert added == pytest.approx(sum(runs["evolkv"]) / 4 - sum(runs["dynamic"]) / 4)
    assert low <= added <= high


def test_cache_cost_work_ratio() -> None:
    import cache_cost

    # 0.1 s added (interval 0.09-0.12 s) to a 5 s prefill.
    assert cache_cost.work_ratio(0.1, 0.09, 0.12, 5.0) == (1.02, 1.018, 1.024)


def test_cache_cost_pools_the_blocks_of_several_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cache_cost

    from evolkv_hf.metrics import bootstrap_ci

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"prefill_seconds": {"2048": {"block_ratios": [1.0, 1.1]}}}))
    second.write_text(json.dumps({"prefill_seconds": {"2048": {"block_ratios": [0.9, 1.2, 1.0]}}}))
    cache_cost.main(["--pool", str(first), str(second)])  # loads no model
    blocks = [1.0, 1.1, 0.9, 1.2, 1.0]
    logs = [math.log(r) for r in blocks]
    low, high = bootstrap_ci(logs, n_resamples=4000, seed=0)
    ratio = math.exp(sum(logs) / 5)
    expected = f"ratio {ratio:.3f} [{math.exp(low):.3f}, {math.exp(high):.3f}] (5 ABBA blocks pooled)"
    assert expected in capsys.readouterr().out
