"""results/heldout_draws.py: more held-out draws of a published run, and the published draws' statistics."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_published_results import fake_evaluation

from evolkv_hf import BudgetAllocation

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
PUBLISHED_DRAWS = sorted(RESULTS.glob("heldout_draws__*.json"))
HAVE_DATA = importlib.util.find_spec("long_context_eval") is not None


@pytest.fixture(scope="module")
def draws() -> Iterator[Any]:
    sys.path.insert(0, str(RESULTS))  # heldout_draws.py imports reproduce.py and tables.py from beside it
    try:
        import heldout_draws  # type: ignore[import-not-found]

        yield heldout_draws
    finally:
        sys.path.remove(str(RESULTS))


def published(settings: dict[str, Any], per_sample: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """A run entry of summary.json with the settings and per-sample scores these tests need."""
    base = {"task": "niah_single", "search_samples": 60, "eval_samples": 200, "depth_split": "stratified"}
    return {"settings": {**base, **settings}, "per_sample": per_sample or {}, "searches": {}}


def test_draws_are_the_blocks_of_rows_after_the_published_held_out_set(draws: Any) -> None:
    args = draws.run_arguments("run", published({}))
    assert draws.draw_rows(args, 0) == (60, 259)  # the published held-out set
    assert draws.draw_rows(args, 1) == (260, 459)
    assert draws.draw_rows(args, 3) == (660, 859)
    assert draws.parse_draws("3,1,3") == [1, 3]
    with pytest.raises(SystemExit, match="draw 0 is the published held-out set"):
        draws.parse_draws("0,1")
    with pytest.raises(SystemExit, match="comma-separated integers"):
        draws.parse_draws("1-3")


def test_runs_with_the_ordered_split_of_a_task_with_depths_are_refused(draws: Any) -> None:
    with pytest.raises(SystemExit, match="depth-split ordered"):
        draws.run_arguments("old", published({"depth_split": "ordered"}))
    # Runs published before --depth-split existed used the ordered split.
    entry = published({})
    del entry["settings"]["depth_split"]
    with pytest.raises(SystemExit, match="depth-split ordered"):
        draws.run_arguments("older", entry)
    # vt has no depths: both splits give the same samples.
    assert draws.run_arguments("vt", published({"task": "vt", "depth_split": "ordered"})).task == "vt"


@pytest.mark.skipif(not HAVE_DATA, reason="task data not installed")
def test_draw_zero_is_the_published_held_out_set_and_later_draws_are_disjoint(draws: Any) -> None:
    import reproduce  # type: ignore[import-not-found]  # beside heldout_draws.py, on sys.path through the fixture
    from test_tasks import WordTokenizer

    tokenizer = WordTokenizer()
    args = draws.run_arguments(
        "run", published({"search_samples": 3, "eval_samples": 4, "context_length": 512})
    )
    search, held_out = reproduce.split_samples(args, tokenizer)
    zero, one = draws.draw_samples(args, tokenizer, 0), draws.draw_samples(args, tokenizer, 1)
    assert zero.to_list() == held_out.to_list()
    assert list(one["index"]) == [7, 8, 9, 10]
    assert list(one["depth"]) == list(zero["depth"])  # depths spread over 0-1 as in the published set
    contexts = [set(part["context"]) for part in (search, zero, one)]
    assert not contexts[0] & contexts[2] and not contexts[1] & contexts[2]


def test_the_learned_allocations_are_the_published_ones(
    draws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(draws, "ROOT", tmp_path)
    entry = published(
        {"sweeps": 2, "target_budget": 128, "constraint": "project"},
        {
            "evolkv_seed0@128": [0.0],
            "evolkv_seed0_sweep1@128": [0.0],
            "uniform@128": [0.0],
            "full@full": [1.0],
        },
    )
    args = draws.run_arguments("run", entry)
    last, first = BudgetAllocation.uniform(30, 128), BudgetAllocation.pyramid(30, 128)
    with pytest.raises(SystemExit, match=r"evolkv_seed0, but its allocation .* is missing"):
        draws.learned_methods("run", entry, args)
    last.save_pretrained(tmp_path / "allocations" / draws.search_name(args, 0))
    first.save_pretrained(tmp_path / "allocations" / draws.search_name(args, 0, 1))
    learned = draws.learned_methods("run", entry, args)
    assert learned["evolkv_seed0"].budgets == last.budgets
    assert learned["evolkv_seed0_sweep1"].budgets == first.budgets
    entry["searches"] = {"evolkv_seed0": {"budgets": first.budgets}}
    with pytest.raises(SystemExit, match="no longer holds the allocation run published as evolkv_seed0"):
        draws.learned_methods("run", entry, args)


def test_methods_expand_to_budgets_and_only_the_missing_ones_are_scored(draws: Any) -> None:
    import reproduce

    learned = {"evolkv_seed0": BudgetAllocation.pyramid(4, 128)}
    methods = draws.requested_methods(draws.parse_methods("full,uniform,evolkv"), [128, 256], 4, learned)
    assert methods == {
        "full": {0: []},
        "uniform": {128: [128] * 4, 256: [256] * 4},
        "evolkv_seed0": {b: learned["evolkv_seed0"].rescale(b).budgets for b in (128, 256)},
    }
    assert "streaming" in draws.requested_methods(draws.parse_methods("streaming"), [128], 4, learned)
    with pytest.raises(SystemExit, match="unknown \\['snapkv'\\]"):
        draws.parse_methods("uniform,snapkv")
    scored = {"full@full": [1.0], "uniform@128": [0.0]}
    assert draws.missing_methods(methods, scored) == {
        "uniform": {256: [256] * 4},
        "evolkv_seed0": methods["evolkv_seed0"],
    }
    # reproduce.py's own methods are unchanged by the helper both scripts use.
    assert list(reproduce.baseline_methods(4, [128])) == ["full", "uniform", "pyramid", "streaming"]
    with pytest.raises(ValueError, match="unknown method 'snapkv'"):
        reproduce.baseline_methods(4, [128], ("snapkv",))


def test_the_statistics_pool_the_draws_and_pair_the_samples(draws: Any) -> None:
    per_draw = {
        0: {"uniform@128": [0.0, 0.0], "pyramid@128": [0.0, 100.0], "evolkv_seed0@128": [100.0, 100.0]},
        1: {"uniform@128": [100.0, 0.0], "pyramid@128": [0.0, 0.0], "evolkv_seed0@128": [100.0, 0.0]},
        2: {"uniform@128": [0.0, 0.0], "pyramid@128": [0.0, 0.0], "evolkv_seed0@128": [0.0, 100.0]},
    }
    stats = draws.statistics(per_draw)
    by_draw = [stats["draws"][d]["paired"][0] for d in ("0", "1", "2")]
    # Each draw compares with its own better heuristic (ties: uniform, as in reproduce.py).
    assert [(item["baseline"], item["difference"]) for item in by_draw] == [
        ("pyramid", 50.0),
        ("uniform", 0.0),
        ("uniform", 50.0),
    ]
    pooled, new = stats["pooled"], stats["pooled_new"]
    assert (pooled["draws"], new["draws"]) == ([0, 1, 2], [1, 2])
    assert pooled["scores"]["evolkv_seed0@128"]["score"] == pytest.approx(66.67, abs=0.01)
    assert pooled["scores"]["uniform@128"]["n"] == 6 and new["scores"]["uniform@128"]["n"] == 4
    # Pooled heuristics: uniform 16.7 vs pyramid 16.7 (tie: uniform); the difference is over the 6 pairs.
    assert (pooled["paired"][0]["baseline"], pooled["paired"][0]["difference"]) == ("uniform", 50.0)
    assert (new["paired"][0]["baseline"], new["paired"][0]["difference"]) == ("uniform", 25.0)
    # A method one draw did not score is not pooled; without new draws there is no pool of them.
    per_draw[1]["streaming@128"] = [0.0, 0.0]
    assert "streaming@128" not in draws.statistics(per_draw)["pooled"]["scores"]
    assert "pooled_new" not in draws.statistics({0: per_draw[0]})
    text = draws.report_text(stats)
    assert "| | draw 0 | draw 1 | draw 2 | pooled, all draws [95% CI] | pooled, draws 1-2 [95% CI] |" in text
    assert "| evolkv_seed0@128 | 100.0 | 50.0 | 50.0 | 66.7 [" in text and "] (n=6) | 50.0 [" in text
    assert (
        "| evolkv_seed0@128 - best heuristic | +50.0 (pyramid) | +0.0 (uniform) | +50.0 (uniform) | +50.0 ["
        in text
    )


def test_the_draws_file_keeps_every_draw_and_refuses_what_it_cannot_pool(
    draws: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    published = {
        "evolkv_hf_commit": "abc",
        "per_sample": {
            "uniform@128": [0.0, 100.0],
            "evolkv_seed0@128": [100.0, 100.0],
            "uniform@512": [1.0] * 2,
        },
    }
    path = tmp_path / "heldout_draws__run.json"
    first = draws.load_saved(path, "run", published)
    first["draws"]["1"] = {"rows": [62, 63], "per_sample": {"uniform@128": [0.0, 0.0]}, "runs": [{"a": 1}]}
    draws.save(path, first, published)
    # Another process scored draw 2 from the file as it was: saving merges, it does not drop draw 1.
    second = draws.load_saved(path, "run", published)
    second["draws"]["2"] = {"rows": [64, 65], "per_sample": {"uniform@128": [100.0, 0.0]}}
    second["draws"]["1"]["per_sample"]["evolkv_seed0@128"] = [0.0, 100.0]
    stale = json.loads(path.read_text())
    stale["draws"]["1"]["per_sample"]["evolkv_seed0@128"] = [0.0, 0.0]  # an older copy, saved later
    draws.save(path, second, published)
    saved = draws.save(path, stale, published)
    assert sorted(saved["draws"]) == ["1", "2"] and saved["draws"]["1"]["runs"] == [{"a": 1}]
    # Scores in the file are never replaced.
    assert saved["draws"]["1"]["per_sample"]["evolkv_seed0@128"] == [0.0, 100.0]
    assert "already holds other scores for ['evolkv_seed0@128']; kept those" in capsys.readouterr().out
    # Draw 0 is pooled only for what the draws scored (not uniform@512); draw 2 lacks evolkv: not pooled.
    assert sorted(saved["statistics"]["draws"]["0"]["scores"]) == ["evolkv_seed0@128", "uniform@128"]
    assert sorted(saved["statistics"]["pooled"]["scores"]) == ["uniform@128"]
    assert (
        saved["command"]
        == "python results/heldout_draws.py run --draws 1,2 --budgets 128 --methods uniform,evolkv"
    )
    assert json.loads(path.read_text()) == saved
    # A file from the run as published before is refused, and so is a file that is not JSON.
    with pytest.raises(SystemExit, match="the run was published again"):
        draws.load_saved(path, "run", {**published, "evolkv_hf_commit": "def"})
    path.write_text('{"run": "run", "draws": {')  # a write cut short (the script's writes are atomic)
    with pytest.raises(SystemExit, match=r"is not valid JSON .*nothing was changed"):
        draws.load_saved(path, "run", published)
    # Draws of another split, or scored with other per-layer budgets, are refused.
    args = argparse.Namespace(search_samples=60, eval_samples=2)
    with pytest.raises(SystemExit, match=r"draw 1 was saved with rows \[62, 64\], not \[62, 63\]"):
        draws.check_saved({"draws": {"1": {"rows": [62, 64]}}, "budgets": {}}, args, {})
    saved_budgets = {"draws": {}, "budgets": {"evolkv_seed0@128": [128, 128]}}
    draws.check_saved(saved_budgets, args, {"evolkv_seed0": {128: [128, 128]}})
    with pytest.raises(SystemExit, match="its allocation changed since"):
        draws.check_saved(saved_budgets, args, {"evolkv_seed0": {128: [64, 192]}})


def test_each_sample_is_prefilled_once_for_every_policy(draws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: reproduce.evaluate prefilled every chunk once per policy, and for StreamingLLM even when no
    # method used it.
    import reproduce

    prefills, derived = [], []

    class FakeEngine:
        def __init__(self, model, tokenizer, chunk, options, batch_size, policy=None):
            if policy is None:
                prefills.append(options.policy)
            self.count, self.policy = len(chunk), policy or options.policy

        def with_policy(self, policy):
            derived.append((self.policy, policy))
            return FakeEngine(None, None, [None] * self.count, None, None, policy=policy)

        def answers(self, budgets):
            # StreamingLLM misses the needle: its scores show which engine answered.
            return ["0" if self.policy == "streaming" else "1234567"] * self.count

    model, args = fake_evaluation(monkeypatch, FakeEngine, prompt_length=9)
    held_out = {"answers": [["1234567"]] * 3}
    methods = {"uniform": {64: [64, 64]}, "streaming": {64: [64, 64]}}
    scores, _ = reproduce.evaluate(args, model, None, held_out, methods)
    assert prefills == ["snapkv", "snapkv"]  # two chunks, one prefill each
    assert derived == [("snapkv", "snapkv"), ("snapkv", "streaming")] * 2
    assert scores[("uniform", 64)] == [100.0] * 3 and scores[("streaming", 64)] == [0.0] * 3
    prefills.clear()
    reproduce.evaluate(args, model, None, held_out, {"uniform": {64: [64, 64]}})
    assert prefills == ["snapkv", "snapkv"]  # no StreamingLLM prefill
    prefills.clear()
    reproduce.evaluate(args, model, None, held_out, {"streaming": {64: [64, 64]}})
    assert prefills == ["streaming", "streaming"]  # StreamingLLM alone needs no SnapKV queries
    prefills.clear()
    assert reproduce.evaluate(args, model, None, held_out, {}) == ({}, {}) and not prefills


@pytest.mark.parametrize("path", PUBLISHED_DRAWS, ids=lambda p: p.name)
def test_published_draws_are_disjoint_and_their_statistics_follow_from_the_scores(
    draws: Any, path: Path
) -> None:
    saved = json.loads(path.read_text())
    summary = json.loads((RESULTS / "summary.json").read_text())
    run = summary["runs"][saved["run"]]
    assert path.name == f"heldout_draws__{saved['run']}.json"
    assert saved["published_commit"] == run["evolkv_hf_commit"]
    args = draws.run_arguments(saved["run"], run)
    keys = set()
    for draw, entry in saved["draws"].items():
        assert int(draw) >= 1 and entry["rows"] == list(draws.draw_rows(args, int(draw)))
        assert all(len(values) == args.eval_samples for values in entry["per_sample"].values())
        assert set(entry["per_sample"]) <= set(saved["budgets"])
        keys |= set(entry["per_sample"])
    per_draw = {0: {key: values for key, values in run["per_sample"].items() if key in keys}}
    per_draw.update({int(draw): entry["per_sample"] for draw, entry in saved["draws"].items()})
    assert draws.statistics(per_draw) == saved["statistics"]
    assert saved["command"] == draws.command_text(saved)
    # The learned allocations scored are the published ones, at the budgets recorded.
    for key, budgets in saved["budgets"].items():
        method, budget = draws.parse_key(key)
        if draws.LEARNED.fullmatch(method):
            assert draws.learned_methods(saved["run"], run, args)[method].rescale(budget).budgets == budgets


@pytest.mark.parametrize("path", PUBLISHED_DRAWS, ids=lambda p: p.name)
def test_published_draws_are_in_the_results_page_as_the_script_prints_them(draws: Any, path: Path) -> None:
    saved = json.loads(path.read_text())
    page = (ROOT / "docs" / "results.md").read_text()
    assert draws.report_text(saved["statistics"]) in page, (
        f"paste the table heldout_draws.py prints for {path.name}"
    )
    assert saved["command"] in page
