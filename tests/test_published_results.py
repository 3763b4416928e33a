"""The published results are consistent: every allocation loads, and every run is documented and plotted."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from evolkv_hf import BudgetAllocation
from evolkv_hf.allocation.model_card import is_unedited_card

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
ALLOCATIONS = sorted(p for p in (RESULTS / "allocations").iterdir() if p.is_dir())
SUMMARY = json.loads((RESULTS / "summary.json").read_text())
RUNS = sorted(SUMMARY["runs"])


@pytest.fixture(scope="module")
def search_name() -> Iterator[Callable[[argparse.Namespace, int], str]]:
    sys.path.insert(0, str(RESULTS))  # reproduce.py imports tables.py from beside it
    try:
        import reproduce  # type: ignore[import-not-found]

        yield reproduce.search_name
    finally:
        sys.path.remove(str(RESULTS))


def saved_search(budget: int, metric: str, extra: dict[str, object]) -> BudgetAllocation:
    """A uniform allocation with the provenance ``reproduce.search_sweep`` checks before reusing a saved search
    (30 samples, population 10, group size 8)."""
    import dataclasses

    return dataclasses.replace(
        BudgetAllocation.uniform(30, budget),
        metric_name=metric,
        search_num_samples=30,
        search_population_size=10,
        search_group_size=8,
        extra=extra,
    )


def fake_evaluation(
    monkeypatch: pytest.MonkeyPatch, engine: type, prompt_length: int
) -> tuple[object, argparse.Namespace]:
    """Patch ``reproduce.evaluate``'s engine and encoding for 3 held-out samples of ``prompt_length`` tokens;
    the model (2 layers) and arguments (chunks of 2) to call it with. ``reproduce`` must be importable (the
    ``search_name`` fixture puts it on the path)."""
    import types

    import reproduce

    monkeypatch.setattr(reproduce, "PrefillOnceEngine", engine)
    monkeypatch.setattr(
        reproduce,
        "encode_samples",
        lambda held_out, tokenizer: [types.SimpleNamespace(prompt_ids=[0] * prompt_length)] * 3,
    )
    model = types.SimpleNamespace(config=types.SimpleNamespace(num_hidden_layers=2))
    return model, argparse.Namespace(task="niah_single", chunk=2, batch_size=2)


def test_there_are_published_results() -> None:
    assert len(ALLOCATIONS) >= 2 and len(RUNS) >= 1


@pytest.mark.parametrize("directory", ALLOCATIONS, ids=lambda p: p.name)
def test_allocation_loads_with_its_generated_card(directory: Path) -> None:
    allocation = BudgetAllocation.from_pretrained(directory)
    assert allocation.num_layers == 30 and min(allocation.budgets) >= 1
    card = (directory / "README.md").read_text()
    assert is_unedited_card(card), (
        f"{directory.name}: regenerate the card with save_pretrained(overwrite=True)"
    )


@pytest.mark.parametrize("run", RUNS)
def test_run_is_documented_plotted_and_its_allocations_are_published(
    run: str, search_name: Callable[[argparse.Namespace, int], str]
) -> None:
    page = (ROOT / "docs" / "results.md").read_text()
    assert f"(run `{run}`)" in page, f"docs/results.md has no section for run {run}"
    record = SUMMARY["runs"][run]
    images = [f"scores_{run}.png"]
    # A search that never left the uniform start has no shape to plot.
    if any(len(set(search["budgets"])) > 1 for search in record["searches"].values()):
        images.append(f"allocations_{run}.png")
    for image in images:
        assert f"](img/{image})" in page
        assert (ROOT / "docs" / "img" / image).is_file()
    assert (RESULTS / f"{run}__scores.png").is_file()
    settings = argparse.Namespace(**{"depth_split": "ordered", **record["settings"]})
    seeds = [int(seed) for seed in str(settings.seeds).split(",")]
    for seed in seeds:
        name = search_name(settings, seed)
        allocation = BudgetAllocation.from_pretrained(RESULTS / "allocations" / name)
        assert allocation.budgets == record["searches"][f"evolkv_seed{seed}"]["budgets"], name


def test_paired_comparison_uses_the_best_heuristic_and_pairs_samples(search_name: object) -> None:
    import reproduce  # on sys.path through the search_name fixture

    # The learned method is 10 points above uniform on every sample: the paired interval is exactly +10
    # although the two separate intervals (samples scoring 0 or 100) overlap widely.
    pyramid = [0.0, 100.0] * 20
    scores = {
        ("uniform", 256): [0.0] * 40,
        ("pyramid", 256): pyramid,
        ("streaming", 256): [100.0] * 40,  # not one of the two heuristics the goal names
        ("evolkv_seed0", 256): [value + 10.0 for value in pyramid],
    }
    (item,) = reproduce.paired_comparisons(scores, [256], ["evolkv_seed0", "evolkv_seed1"])
    assert item["baseline"] == "pyramid" and item["difference"] == 10.0
    assert item["ci_low"] == item["ci_high"] == 10.0


def test_a_resumed_search_reports_its_summed_evaluation_time(tmp_path: Path, search_name: object) -> None:
    import reproduce

    log = tmp_path / "search_log.jsonl"
    records = [
        {"event": "baseline", "seconds": 10.0, "cached": False},
        {"event": "candidate", "seconds": 2.5, "cached": False},
        {"event": "candidate", "seconds": 0.0, "cached": True},
        {"event": "generation", "seconds": 99.0},  # a summary line, not an evaluation
    ]
    log.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    assert reproduce.evaluation_seconds(log, default=1.0) == 12.5
    assert reproduce.evaluation_seconds(tmp_path / "missing.jsonl", default=1.0) == 1.0
    settings = argparse.Namespace(
        task="vt", context_length=2048, target_budget=256, constraint="project", generations=8,
        search_samples=60, depth_split="ordered", eval_samples=400,
    )  # fmt: skip
    assert reproduce.run_key(settings) == "vt__2048__c256__project__g8__s60__e400"
    settings.eval_samples = 200  # the published keys carry no held-out size
    assert reproduce.run_key(settings) == "vt__2048__c256__project__g8__s60"


def test_summary_json_is_written_in_its_compact_form(search_name: object) -> None:
    import reproduce

    text = (RESULTS / "summary.json").read_text()
    assert json.loads(reproduce.summary_text(SUMMARY)) == SUMMARY
    assert reproduce.summary_text(SUMMARY) == text  # lists of numbers on one line, as reproduce.py writes it


def test_run_control_flags_are_not_published_settings(search_name: object) -> None:
    # Regression: the first run evaluated after a `--search-only` search recorded `search_only: false` in its
    # settings and `--search-only False` in its command, which argparse rejects (a store_true flag).
    import reproduce

    args = argparse.Namespace(task="vt", seeds="0,1", search_only=False)
    assert reproduce.published_settings(args) == {"task": "vt", "seeds": "0,1"}
    for key, run in SUMMARY["runs"].items():
        assert "search_only" not in run["settings"], key
        assert "--search-only" not in run["command"], key


def test_a_second_sweep_is_named_apart_and_starts_from_the_first(
    search_name: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reproduce

    settings = argparse.Namespace(
        task="niah_single", context_length=2048, target_budget=128, constraint="project", generations=15,
        search_samples=30, depth_split="stratified", eval_samples=200, sweeps=1,
    )  # fmt: skip
    # One sweep: the published names and keys, unchanged.
    assert reproduce.search_name(settings, 0) == "niah_single__c128__project__g15__stratified__seed0"
    assert reproduce.run_key(settings) == "niah_single__2048__c128__project__g15__s30__stratified"
    settings.sweeps = 2
    assert reproduce.search_name(settings, 1) == "niah_single__c128__project__g15x2__stratified__seed1"
    assert reproduce.search_name(settings, 1, 1) == "niah_single__c128__project__g15__stratified__seed1"
    assert reproduce.run_key(settings) == "niah_single__2048__c128__project__g15x2__s30__stratified"
    calls = []

    def fake_sweep(args, model, tokenizer, train, seed, sweep, initial):
        calls.append((sweep, initial))
        return BudgetAllocation.uniform(30, 128), 100.0 * sweep

    monkeypatch.setattr(reproduce, "search_sweep", fake_sweep)
    _, seconds = reproduce.search(settings, None, None, None, 1)
    assert calls == [(1, None), (2, "niah_single__c128__project__g15__stratified__seed1")]
    assert seconds == 300.0  # both sweeps' search time


def test_a_later_sweep_in_another_dtype_or_length_is_named_apart(search_name: object) -> None:
    import reproduce

    settings = argparse.Namespace(
        task="niah_single", context_length=2048, target_budget=128, constraint="project", generations=15,
        search_samples=30, depth_split="stratified", eval_samples=200, sweeps=2, sweep_generations=8,
        dtype="float32", first_sweep_dtype="bfloat16",
    )  # fmt: skip
    # The first sweep is the published bfloat16 search, reused under its own name.
    assert reproduce.search_name(settings, 0, 1) == "niah_single__c128__project__g15__stratified__seed0"
    assert reproduce.sweep_dtype(settings, 1) == "bfloat16"
    assert reproduce.sweep_dtype(settings, 2) == "float32"
    assert (
        reproduce.search_name(settings, 0) == "niah_single__c128__project__g15+8__stratified__float32__seed0"
    )
    assert reproduce.run_key(settings) == "niah_single__2048__c128__project__g15+8__s30__stratified__float32"
    settings.sweeps = 3
    assert reproduce.search_name(settings, 1, 3).startswith("niah_single__c128__project__g15+8x2__")
    # Without the new options the names are those of the plain sweeps (published runs keep their keys).
    settings.sweep_generations, settings.first_sweep_dtype, settings.dtype = None, None, "bfloat16"
    assert reproduce.search_name(settings, 1, 3) == "niah_single__c128__project__g15x3__stratified__seed1"
    assert reproduce.run_key(settings) == "niah_single__2048__c128__project__g15x3__s30__stratified"
    settings.first_sweep_dtype = "float32"
    assert (
        reproduce.search_name(settings, 1, 1) == "niah_single__c128__project__g15__stratified__float32__seed1"
    )


def test_the_evaluation_also_records_the_search_metric_held_out(
    search_name: object, monkeypatch: pytest.MonkeyPatch
) -> None:

    import reproduce

    class FakeEngine:
        def __init__(self, model, tokenizer, chunk, options, batch_size):
            self.count = len(chunk)

        def with_policy(self, policy):
            return self

        def answers(self, budgets):
            # A larger budget retrieves the whole needle, a smaller one part of it.
            return ["1234567" if budgets[0] >= 100 else "1234" for _ in range(self.count)]

    model, args = fake_evaluation(monkeypatch, FakeEngine, prompt_length=200)
    methods = {"full": {0: []}, "uniform": {64: [64, 64], 128: [128, 128]}}
    scores, partial = reproduce.evaluate(args, model, None, {"answers": [["1234567"]] * 3}, methods)
    assert scores[("uniform", 64)] == [0.0] * 3 and scores[("uniform", 128)] == [100.0] * 3
    assert scores[("full", 0)] == [100.0] * 3  # the full cache keeps the longest prompt in every layer
    # edit similarity gives the partial answer partial credit where string_match_all gives none
    assert all(0 < value < 100 for value in partial[("uniform", 64)])
    assert partial[("uniform", 128)] == [100.0] * 3


def test_a_run_block_shows_each_sweep_and_the_held_out_partial_credit(search_name: object) -> None:
    import tables  # type: ignore[import-not-found]  # beside reproduce.py, on sys.path through the fixture

    row = {"task": "niah_single", "context_length": 2048, "metric": "string_match_all", "n": 200}
    run = {
        "rows": [{**row, "method": "uniform", "budget": 128, "score": 1.0, "ci_low": 0.0, "ci_high": 2.5}],
        "searches": {
            "evolkv_seed0": {
                "search_seconds": 3000.0,
                "search_score": 51.6,
                "budgets": [128] * 30,
                "sweeps": [
                    {"search_seconds": 2192.0, "dtype": "bfloat16", "search_score": 49.6},
                    {"search_seconds": 808.0, "dtype": "float32", "search_score": 51.6},
                ],
            }
        },
        "partial_credit": {"metric": "edit_sim", "scores": {"uniform@128": 24.7, "uniform@256": 40.0}},
        "settings": {"target_budget": 128},
        "eval_seconds": 100.0,
        "command": "python results/reproduce.py",
    }
    block = tables.run_block("key", run)
    assert "its 2 sweeps took 3000 s in all" in block
    assert " samples" not in block.split("its 2 sweeps")[1].split("held-out")[0]  # not recorded: not shown
    assert "  - sweep 1 (bfloat16): 2192 s, search-set score 49.6" in block
    assert "  - sweep 2 (float32): 808 s, search-set score 51.6" in block
    assert (
        "held-out `edit_sim` (the search's partial credit, comparable with its search-set score) at 128: uniform 24.7"
        in block
    )
    # A last sweep with another fitness: each score says its metric, and the held-out partial credit says so too.
    run["settings"]["fitness"] = "exact+partial"
    run["searches"]["evolkv_seed0"]["sweeps"][0]["search_metric"] = "edit_sim"
    run["searches"]["evolkv_seed0"]["sweeps"][1]["search_metric"] = "string_match_all+0.1*edit_sim"
    block = tables.run_block("key", run)
    assert "sweep 2 (float32): 808 s, search-set score (`string_match_all+0.1*edit_sim`) 51.6" in block
    assert (
        "held-out `edit_sim` (the task's partial credit, comparable with the search-set scores in `edit_sim`)"
        in block
    )
    # Sweeps that searched different sets say how many samples each score is on.
    run["searches"]["evolkv_seed0"]["sweeps"][0]["search_samples"] = 30
    run["searches"]["evolkv_seed0"]["sweeps"][1]["search_samples"] = 60
    block = tables.run_block("key", run)
    assert "sweep 1 (bfloat16): 2192 s, search-set score (`edit_sim`) 49.6 on 30 samples" in block
    assert "search-set score (`string_match_all+0.1*edit_sim`) 51.6 on 60 samples" in block
    run["searches"]["evolkv_seed0"]["sweeps"][0]["search_metric"] = "string_match_all+0.1*edit_sim"
    run["searches"]["evolkv_seed0"]["search_metric"] = "string_match_all+0.1*edit_sim"
    assert "(the task's partial credit; no search-set score is in this metric)" in tables.run_block(
        "key", run
    )


@pytest.mark.parametrize("run", RUNS)
def test_a_published_command_parses_back_to_its_settings(run: str, search_name: object) -> None:
    import shlex

    import reproduce

    # Regression: options left unset were published as "--sweep-generations None", which does not parse.
    record = SUMMARY["runs"][run]
    words = shlex.split(record["command"])
    assert words[:2] == ["python", "results/reproduce.py"]
    parsed = reproduce.published_settings(reproduce.parse_args(words[2:]))
    assert {key: parsed.get(key) for key in record["settings"]} == record["settings"]
    assert reproduce.run_key(argparse.Namespace(**parsed)) == run


def test_unset_options_are_left_out_of_the_published_settings(search_name: object) -> None:
    import reproduce

    settings = reproduce.published_settings(reproduce.parse_args(["--search-only"]))
    assert "sweep_generations" not in settings and "first_sweep_dtype" not in settings
    assert "first_sweep_fitness" not in settings
    assert "search_only" not in settings
    with pytest.raises(SystemExit):  # --sweep-generations needs a later sweep
        reproduce.parse_args(["--sweep-generations", "8"])


def test_a_first_sweep_in_another_dtype_must_already_be_published(search_name: object) -> None:
    import reproduce

    # Regression: the first sweep would have been searched in --dtype and saved as --first-sweep-dtype's.
    args = reproduce.parse_args(
        ["--target-budget", "77", "--sweeps", "2", "--first-sweep-dtype", "bfloat16", "--dtype", "float32"]
    )
    with pytest.raises(SystemExit, match="holds no allocation: sweep 1 would be searched in bfloat16"):
        reproduce.search_sweep(args, None, None, None, 0, 1, None)
    assert not (reproduce.ROOT / "runs" / reproduce.search_name(args, 0, 1)).exists()


def test_a_search_with_the_exact_fitness_is_named_apart(search_name: object) -> None:
    import reproduce

    args = reproduce.parse_args(
        shlex.split(
            "--generations 15 --sweeps 2 --sweep-generations 8 --first-sweep-dtype bfloat16 --first-sweep-fitness "
            "partial --fitness exact+partial --dtype float32 --depth-split stratified --constraint project"
        )
    )
    # The first sweep is the published edit-similarity search, reused under its own name.
    assert reproduce.search_name(args, 0, 1) == "niah_single__c128__project__g15__stratified__seed0"
    assert reproduce.search_metric(args, 1) == "edit_sim"
    assert (
        reproduce.search_name(args, 0, 2)
        == "niah_single__c128__project__g15+8__stratified__exactfit__float32__seed0"
    )
    assert reproduce.metric_key(reproduce.search_metric(args, 2)) == "string_match_all+0.1*edit_sim"
    assert (
        reproduce.run_key(args)
        == "niah_single__2048__c128__project__g15+8__s30__stratified__exactfit__float32"
    )
    # The default keeps every published name.
    assert reproduce.run_key(reproduce.parse_args([])) == "niah_single__2048__c128__penalty__g15__s30"


def test_a_last_sweep_on_more_samples_is_named_apart_and_reuses_the_earlier_sweeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, search_name: object
) -> None:
    import reproduce

    args = reproduce.parse_args(
        shlex.split(
            "--search-samples 60 --earlier-sweep-samples 30 --generations 15 --sweeps 3 --sweep-generations 8 "
            "--first-sweep-dtype bfloat16 --first-sweep-fitness partial --fitness exact+partial --dtype float32 "
            "--depth-split stratified --constraint project"
        )
    )
    # The first two sweeps are the published 30-sample searches, under their own names; only the last says 60.
    assert [reproduce.sweep_samples(args, sweep) for sweep in (1, 2, 3)] == [30, 30, 60]
    assert reproduce.search_name(args, 0, 1) == "niah_single__c128__project__g15__stratified__seed0"
    assert (
        reproduce.search_name(args, 0, 2)
        == "niah_single__c128__project__g15+8__stratified__exactfit__float32__seed0"
    )
    assert (
        reproduce.search_name(args, 0, 3)
        == "niah_single__c128__project__g15+8x2__s30+60__stratified__exactfit__float32__seed0"
    )
    assert (
        reproduce.run_key(args)
        == "niah_single__2048__c128__project__g15+8x2__s30+60__stratified__exactfit__float32"
    )
    # Without the option every sweep searches --search-samples, and the names say 60 (a run on 60 samples in every
    # sweep is not named as the one above).
    assert reproduce.sweep_samples(reproduce.parse_args(["--sweeps", "2"]), 1) == 30
    args.earlier_sweep_samples = None
    assert [reproduce.sweep_samples(args, sweep) for sweep in (1, 2, 3)] == [60, 60, 60]
    assert reproduce.search_name(args, 0, 3).startswith("niah_single__c128__project__g15+8x2__s60__")
    assert (
        reproduce.run_key(args)
        == "niah_single__2048__c128__project__g15+8x2__s60__stratified__exactfit__float32"
    )
    args.earlier_sweep_samples = 30
    # Regression: the reuse check compared an earlier sweep's sample count with --search-samples, so a 30-sample
    # sweep was refused in a run whose last sweep searches 60.
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    directory = tmp_path / "allocations" / reproduce.search_name(args, 0, 2)
    first = reproduce.search_name(args, 0, 1)
    saved = saved_search(
        128,
        "string_match_all+0.1*edit_sim",
        {
            "context_length": 2048,
            "depth_split": "stratified",
            "dtype": "float32",
            "initial_allocation": f"results/allocations/{first}",
        },
    )
    saved.save_pretrained(directory)
    allocation, _ = reproduce.search_sweep(args, None, None, None, 0, 2, first)
    assert allocation.budgets == [128] * 30
    # An earlier sweep on other samples is never searched here (the run loaded --search-samples samples).
    with pytest.raises(SystemExit, match="sweep 1 would be searched on 30 samples"):
        reproduce.search_sweep(args, None, None, None, 0, 1, None)
    assert not (tmp_path / "runs").exists()


def test_earlier_sweep_options_that_would_mislead_are_refused(
    search_name: object, capsys: pytest.CaptureFixture[str]
) -> None:
    import reproduce

    refusals = [
        (["--earlier-sweep-samples", "30"], "sets the sweeps before the last"),
        # rows 30-59 of the earlier sweeps' search set would be held out
        (["--sweeps", "2", "--search-samples", "30", "--earlier-sweep-samples", "60"], "would be held out"),
        # with two sweeps "previous" is every earlier sweep: the option would be ignored
        (["--sweeps", "2", "--evaluate-earlier-sweeps", "previous"], "give --sweeps 3 or more"),
    ]
    for argv, message in refusals:
        with pytest.raises(SystemExit):
            reproduce.parse_args(argv)
        assert message in capsys.readouterr().err
    reproduce.parse_args(["--sweeps", "2", "--search-samples", "60", "--earlier-sweep-samples", "30"])


def test_only_the_previous_sweep_is_evaluated_when_asked(tmp_path: Path, search_name: object) -> None:
    import reproduce

    args = reproduce.parse_args(["--sweeps", "3"])
    assert reproduce.evaluated_earlier_sweeps(args) == [1, 2]
    args = reproduce.parse_args(["--sweeps", "3", "--evaluate-earlier-sweeps", "previous"])
    assert reproduce.evaluated_earlier_sweeps(args) == [2]
    # A published run is not replaced by a rerun that scores other sweeps (the run key does not say which).
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"runs": {reproduce.run_key(args): {"settings": {"sweeps": 3}}}}))
    with pytest.raises(SystemExit, match="Rerun with --evaluate-earlier-sweeps all"):
        reproduce.check_published_run(args, summary)
    reproduce.check_published_run(reproduce.parse_args(["--sweeps", "3"]), summary)
    reproduce.check_published_run(args, tmp_path / "missing.json")


def test_the_exact_fitness_weighs_an_exact_answer_as_33_points_of_mean_partial_credit(
    search_name: object,
) -> None:
    import reproduce

    from evolkv_hf.metrics import per_sample_scores

    metric = reproduce.ExactPlusPartial("niah_single")
    references = [["8056020"], ["8056020"], ["8056020"]]
    predictions = ["8056020", "8056021", "1"]
    partial = per_sample_scores("edit_sim", predictions, references)
    result = metric(predictions, references)
    assert result == {metric.name: pytest.approx((100.0 + 0.1 * sum(partial)) / 3)}
    # Each exact answer in 30 samples adds at least 3.3 points; partial credit alone is worth at most 10.
    none_exact = metric(["0"] * 30, [["8056020"]] * 30)[metric.name]
    one_exact = metric(["8056020"] + ["0"] * 29, [["8056020"]] * 30)[metric.name]
    assert one_exact - none_exact >= 100.0 / 30
    assert metric(["8056021"] * 30, [["8056020"]] * 30)[metric.name] < 10.0


def test_exact_fitness_options_that_would_mislead_are_refused(search_name: object) -> None:
    import reproduce

    with pytest.raises(SystemExit):  # --first-sweep-fitness needs a later sweep
        reproduce.parse_args(["--first-sweep-fitness", "partial", "--fitness", "exact+partial"])
    with pytest.raises(SystemExit):  # vt's metric is its partial credit: the sum would double it
        reproduce.parse_args(["--task", "vt", "--fitness", "exact+partial"])
    with pytest.raises(SystemExit):  # the run key names the last sweep's fitness only: an all-partial key
        reproduce.parse_args(["--sweeps", "2", "--first-sweep-fitness", "exact+partial"])
    reproduce.parse_args(["--task", "vt"])


def test_a_saved_search_of_another_metric_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, search_name: object
) -> None:
    import dataclasses

    import reproduce

    # Regression: the provenance check compared samples, sizes and dtype but not the metric searched.
    args = reproduce.parse_args(shlex.split("--fitness exact+partial --dtype float32 --target-budget 77"))
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    directory = tmp_path / "allocations" / reproduce.search_name(args, 0, 1)
    saved = saved_search(
        77,
        "edit_sim",
        {"context_length": 2048, "depth_split": "ordered", "eval_samples": 200, "dtype": "float32"},
    )
    saved.save_pretrained(directory)
    with pytest.raises(SystemExit, match="'metric': 'edit_sim'"):
        reproduce.search_sweep(args, None, None, None, 0, 1, None)
    saved = dataclasses.replace(saved, metric_name="string_match_all+0.1*edit_sim")
    saved.save_pretrained(directory, overwrite=True)
    allocation, _ = reproduce.search_sweep(args, None, None, None, 0, 1, None)
    assert allocation.budgets == [77] * 30


def test_fitness_proxy_rescores_the_best_distinct_schemes_at_the_target(
    tmp_path: Path, search_name: object
) -> None:
    import fitness_proxy  # type: ignore[import-not-found]  # beside reproduce.py

    rows = [
        {"event": "baseline", "budgets": [128, 128], "score": 40.0, "mean_budget": 128.0, "error": None},
        {"event": "candidate", "budgets": [100, 156], "score": 50.0, "mean_budget": 128.0, "error": None},
        {"event": "candidate", "budgets": [100, 156], "score": 50.0, "mean_budget": 128.0, "error": None},
        {"event": "candidate", "budgets": [90, 200], "score": 60.0, "mean_budget": 145.0, "error": None},
        {"event": "candidate", "budgets": [60, 196], "score": 70.0, "mean_budget": 128.0, "error": "boom"},
        {"event": "generation", "best_score": 50.0},
    ]
    log = tmp_path / "search_log.jsonl"
    log.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    picked = fitness_proxy.top_schemes(log, 5, 128)
    # best first, duplicates once, the starting point kept, off-target and failed candidates left out
    assert [row["budgets"] for row in picked] == [[100, 156], [128, 128]]
    # the starting point is kept when it is not among the best
    assert [row["event"] for row in fitness_proxy.top_schemes(log, 1, 128)] == ["candidate", "baseline"]
    with pytest.raises(SystemExit, match="does not exist"):
        fitness_proxy.top_schemes(tmp_path / "missing.jsonl", 5, 128)
    assert fitness_proxy.correlation([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)
    assert fitness_proxy.correlation([1.0, 2.0], [0.0, 0.0]) is None  # exact match flat at zero


def test_penalty_drift_takes_the_best_distinct_candidates(tmp_path: Path, search_name: object) -> None:
    import penalty_drift  # type: ignore[import-not-found]  # beside reproduce.py

    rows = [
        {"event": "baseline", "budgets": [128, 128], "fitness": 90.0, "error": None},
        {"event": "candidate", "budgets": [100, 156], "fitness": 50.0, "error": None},
        {"event": "candidate", "budgets": [100, 156], "fitness": 50.0, "error": None},
        {"event": "candidate", "budgets": [90, 200], "fitness": 60.0, "error": None},
        {"event": "candidate", "budgets": [60, 196], "fitness": 70.0, "error": "boom"},
    ]
    log = tmp_path / "search_log.jsonl"
    log.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    picked = penalty_drift.top_candidates(log, 5)
    assert [row["budgets"] for row in picked] == [[90, 200], [100, 156]]


def test_compare_runs_pairs_two_runs_only_on_the_same_samples(search_name: object) -> None:
    import compare_runs  # type: ignore[import-not-found]  # beside reproduce.py

    run = "niah_single__2048__c128__project__g15+8__s30__stratified__float32"
    # Two bfloat16 runs on the all-depths split scored their heuristics identically: they pair.
    checked = compare_runs.check_same_samples(
        SUMMARY,
        "niah_single__2048__c128__penalty__g15__s30__stratified",
        "niah_single__2048__c128__project__g15__s30__stratified",
    )
    assert "uniform@128" in checked and "full@full" in checked
    # Within one run it gives the run's own paired comparison of its two sweeps.
    item = compare_runs.compare(SUMMARY, (run, "evolkv_seed0"), (run, "evolkv_seed0_sweep1"), 128)
    assert (item["difference"], item["ci_low"], item["ci_high"]) == (-6.0, -9.5, -3.0)
    assert (item["first_only"], item["second_only"]) == (0, 12)
    # The bfloat16 run scored the same samples in another dtype: its heuristics differ, so it is refused.
    with pytest.raises(SystemExit, match="scored differently in the two runs"):
        compare_runs.check_same_samples(
            SUMMARY, run, "niah_single__2048__c128__project__g15__s30__stratified"
        )
    with pytest.raises(SystemExit, match="different held-out samples: task"):
        compare_runs.check_same_samples(SUMMARY, run, "vt__2048__c128__project__g15__s30__e400")
    with pytest.raises(SystemExit, match="before per-sample scores were recorded"):
        compare_runs.check_same_samples(SUMMARY, run, "niah_single__2048__c128__penalty__g15__s30")
    with pytest.raises(argparse.ArgumentTypeError, match="RUN:METHOD"):
        compare_runs.parse_method("evolkv_seed0")


def test_a_sweep_with_a_larger_cap_is_named_apart_and_searched_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, search_name: object, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses
    import types

    import reproduce

    args = reproduce.parse_args(
        shlex.split(
            "--sweeps 2 --generations 15 --sweep-generations 8 --max-budget 2048 --earlier-sweep-max-budget 512"
        )
    )
    assert [reproduce.sweep_max_budget(args, sweep) for sweep in (1, 2)] == [512, 2048]
    # The first sweep has the default cap (4 x 128): its published name stays; the last says both caps ...
    assert reproduce.search_name(args, 0, 1) == "niah_single__c128__penalty__g15__seed0"
    assert reproduce.search_name(args, 0, 2) == "niah_single__c128__penalty__g15+8__cap512+2048__seed0"
    assert reproduce.run_key(args) == "niah_single__2048__c128__penalty__g15+8__s30__cap512+2048"
    assert reproduce.run_key(reproduce.parse_args(["--max-budget", "512"])) == reproduce.run_key(
        reproduce.parse_args([])
    )
    # ... so that it is not named like two sweeps at 2048, nor a run whose only non-default cap is an earlier one
    # like an all-default run (regression: the label once said only the sweep's own cap).
    both = reproduce.parse_args(
        shlex.split("--sweeps 2 --generations 15 --sweep-generations 8 --max-budget 2048")
    )
    assert reproduce.search_name(both, 0, 1) == "niah_single__c128__penalty__g15__cap2048__seed0"
    assert reproduce.run_key(both) == "niah_single__2048__c128__penalty__g15+8__s30__cap2048"
    first_only = reproduce.parse_args(
        shlex.split("--sweeps 2 --generations 15 --sweep-generations 8 --earlier-sweep-max-budget 1024")
    )
    assert reproduce.run_key(first_only) == "niah_single__2048__c128__penalty__g15+8__s30__cap1024+512"
    three = reproduce.parse_args(shlex.split("--sweeps 3 --max-budget 2048 --earlier-sweep-max-budget 1024"))
    assert reproduce.cap_label(three, 3) == "__cap1024+2048"
    # Each sweep is searched with its own cap, which its allocation records.
    searched: list[int] = []

    class FakeSearcher:
        def __init__(self, model, search_args, train, processing_class, metric):
            searched.append(search_args.max_budget)

        def search(self, resume_from_checkpoint=None):
            return types.SimpleNamespace(allocation=saved_search(128, "edit_sim", {}))

    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    monkeypatch.setattr(reproduce, "BudgetSearcher", FakeSearcher)
    first, _ = reproduce.search_sweep(args, None, None, None, 0, 1, None)
    initial = reproduce.search_name(args, 0, 1)
    last, _ = reproduce.search_sweep(args, None, None, None, 0, 2, initial)
    assert searched == [512, 2048]
    assert (first.extra["max_budget"], last.extra["max_budget"]) == (512, 2048)
    # A saved sweep is reused only with the cap it was searched with; one saved before the cap was recorded had
    # the default.
    reproduce.search_sweep(args, None, None, None, 0, 2, initial)
    assert searched == [512, 2048]
    # A saved sweep is refused under a name whose cap it was not searched with ...
    args.max_budget = 1024
    last.save_pretrained(tmp_path / "allocations" / reproduce.search_name(args, 0, 2))
    with pytest.raises(SystemExit, match="'max_budget': 2048"):
        reproduce.search_sweep(args, None, None, None, 0, 2, initial)
    # ... and one saved before the cap was recorded had the default, 4 x --target-budget.
    unrecorded = dataclasses.replace(first, extra={k: v for k, v in first.extra.items() if k != "max_budget"})
    unrecorded.save_pretrained(tmp_path / "allocations" / initial, overwrite=True)
    reproduce.search_sweep(args, None, None, None, 0, 1, None)
    one = reproduce.parse_args(["--max-budget", "2048"])
    unrecorded.save_pretrained(tmp_path / "allocations" / reproduce.search_name(one, 0))
    with pytest.raises(SystemExit, match="'max_budget': 512"):
        reproduce.search_sweep(one, None, None, None, 0, 1, None)
    assert searched == [512, 2048]
    for argv, message in [
        (["--earlier-sweep-max-budget", "512"], "sets the sweeps before the last"),
        (["--max-budget", "100"], "below --target-budget 128"),
        (["--sweeps", "2", "--earlier-sweep-max-budget", "64"], "below --target-budget 128"),
    ]:
        with pytest.raises(SystemExit):
            reproduce.parse_args(argv)
        assert message in capsys.readouterr().err


def test_earlier_sweeps_may_each_have_their_own_search_set_size(
    search_name: object, capsys: pytest.CaptureFixture[str]
) -> None:
    import reproduce

    args = reproduce.parse_args(
        shlex.split(
            "--search-samples 60 --earlier-sweep-samples 30,30,60 --generations 15 --sweeps 4 --sweep-generations 8 "
            "--first-sweep-dtype bfloat16 --first-sweep-fitness partial --fitness exact+partial --dtype float32 "
            "--depth-split stratified --constraint project"
        )
    )
    assert [reproduce.sweep_samples(args, sweep) for sweep in (1, 2, 3, 4)] == [30, 30, 60, 60]
    # The third sweep is the published one (60 samples after two on 30), under its published name ...
    assert (
        reproduce.search_name(args, 0, 3)
        == "niah_single__c128__project__g15+8x2__s30+60__stratified__exactfit__float32__seed0"
    )
    # ... and the fourth is not named like a sweep on 60 after three on 30.
    assert (
        reproduce.search_name(args, 0, 4)
        == "niah_single__c128__project__g15+8x3__s30+30+60+60__stratified__exactfit__float32__seed0"
    )
    args.earlier_sweep_samples = 30
    assert reproduce.search_name(args, 0, 4).startswith("niah_single__c128__project__g15+8x3__s30+60__")
    # One size is kept as the number every published run recorded; several as text that parses back.
    assert (
        reproduce.parse_args(["--sweeps", "2", "--earlier-sweep-samples", "30"]).earlier_sweep_samples == 30
    )
    # The published command of such a run (as reproduce.main writes it) parses back to its settings and key.
    fourth = reproduce.parse_args(
        shlex.split(
            "--search-samples 60 --sweeps 4 --earlier-sweep-samples 30,30,60 --max-budget 2048 "
            "--earlier-sweep-max-budget 512 --depth-split stratified"
        )
    )
    settings = reproduce.published_settings(fourth)
    assert settings["earlier_sweep_samples"] == "30,30,60"
    command = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())
    parsed = reproduce.parse_args(shlex.split(command))
    assert reproduce.published_settings(parsed) == settings
    assert reproduce.run_key(parsed) == reproduce.run_key(fourth)
    assert reproduce.run_key(fourth).endswith("__s30+30+60+60__stratified__cap512+2048")
    # Equal sizes are the one size: the same run, named and recorded the same.
    assert (
        reproduce.parse_args(shlex.split("--sweeps 3 --earlier-sweep-samples 30,30")).earlier_sweep_samples
        == 30
    )
    for argv, message in [
        (
            ["--sweeps", "3", "--search-samples", "60", "--earlier-sweep-samples", "30,30,60"],
            "gives 3 sizes, but --sweeps 3 has 2 before the last",
        ),
        (
            ["--sweeps", "3", "--search-samples", "60", "--earlier-sweep-samples", "30,90"],
            "90 is more than --search-samples 60",
        ),
        (["--sweeps", "3", "--earlier-sweep-samples", "30,0"], "expected an integer >= 1, got 0"),
    ]:
        with pytest.raises(SystemExit):
            reproduce.parse_args(argv)
        assert message in capsys.readouterr().err


def test_cap_probe_raises_one_layer_and_keeps_the_total_and_the_other_proportions(
    tmp_path: Path, search_name: object
) -> None:
    from cap_probe import check_not_replacing, with_layer_budget  # results/cap_probe.py

    budgets = [105, 113, 51, 97, 33, 190, 512, 60]
    raised = with_layer_budget(budgets, 6, 800, 32)
    assert raised[6] == 800 and sum(raised) == sum(budgets)
    others = [b for i, b in enumerate(budgets) if i != 6]
    rest = [b for i, b in enumerate(raised) if i != 6]
    # Proportions kept (within rounding, above the floor): a larger budget never ends up smaller.
    assert all(rest[i] >= rest[j] for i in range(7) for j in range(7) if others[i] > others[j])
    assert rest[5] / rest[0] == pytest.approx(others[5] / others[0], rel=0.02)
    assert min(rest) >= 32
    assert with_layer_budget(budgets, 6, 512, 32) == budgets
    for layer, budget, message in [
        (8, 800, "give 0 to 7"),
        (6, sum(budgets), "less than the floor"),
        (6, 16, "below the floor"),
    ]:
        with pytest.raises(SystemExit, match=message):
            with_layer_budget(budgets, layer, budget, 32)
    # A probe of other schemes is never replaced; a rerun of the same command may rewrite its figures.
    out = tmp_path / "cap_probe__run.json"
    check_not_replacing(out, "python results/cap_probe.py run --layer 6 --budgets 768")
    out.write_text(json.dumps({"command": "python results/cap_probe.py run --layer 6 --budgets 768"}))
    check_not_replacing(out, "python results/cap_probe.py run --layer 6 --budgets 768")
    with pytest.raises(SystemExit, match="move it aside"):
        check_not_replacing(out, "python results/cap_probe.py run --layer 6 --budgets 1024")
    out.write_text("{not json")
    with pytest.raises(SystemExit, match="move it aside"):
        check_not_replacing(out, "python results/cap_probe.py run --layer 6 --budgets 768")


def test_cap_probe_refuses_budgets_that_are_not_positive_integers(
    search_name: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from cap_probe import parse_args

    assert parse_args(["run", "--layer", "18", "--budgets", "768,1024"]).budgets == [768, 1024]
    for text in ("0", "768,x"):
        with pytest.raises(SystemExit):
            parse_args(["run", "--layer", "18", "--budgets", text])
        assert "error: argument --budgets" in capsys.readouterr().err


def test_an_unknown_run_is_refused_with_the_published_ones(search_name: object) -> None:
    import reproduce

    assert reproduce.published_run(RUNS[0]) == SUMMARY["runs"][RUNS[0]]
    with pytest.raises(
        SystemExit, match=f"no-such-run is not a run of results/summary.json; runs: .*{re.escape(RUNS[0])}"
    ):
        reproduce.published_run("no-such-run")
