"""BudgetSearcher: determinism, optimisation, checkpoints and resume, callbacks, clear errors."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from evolkv_hf import BudgetAllocation
from evolkv_hf.search import BudgetSearcher, SearchArguments, SearchCallback
from evolkv_hf.search.checkpoint import checkpoint_dirs, latest_checkpoint, save_checkpoint
from evolkv_hf.search.fitness import cache_score, combined_fitness
from evolkv_hf.search.strategy import GroupStrategy

TESTS = Path(__file__).parent


def dataset(count: int = 3) -> list[dict]:
    rows = []
    for index in range(count):
        context = (
            " ".join(f"w{(index * 7 + j) % 60}" for j in range(40)) + f" the number is {index}4{index} ."
        )
        rows.append(
            {
                "context": context,
                "question": "what is the number ?",
                "answer_prefix": "the number is",
                "answers": [f"{index}4{index}"],
                "max_new_tokens": 3,
                "task": "toy",
            }
        )
    return rows


def digit_overlap(predictions, references):
    """A cheap partial-credit metric: share of reference characters found in the prediction."""
    scores = [
        max(sum(ch in p for ch in r) / len(r) for r in refs)
        for p, refs in zip(predictions, references, strict=False)
    ]
    return {"overlap": 100.0 * sum(scores) / len(scores)}


def small_args(tmp_path, **overrides) -> SearchArguments:
    settings = dict(
        output_dir=str(tmp_path / "run"),
        target_budget=12,
        group_size=2,
        population_size=4,
        generations_per_group=2,
        window_size=4,
        kernel_size=3,
        eval_batch_size=3,
        disable_tqdm=True,
    )
    settings.update(overrides)
    return SearchArguments(**settings)


def make_searcher(tmp_path, callbacks=None, metric=digit_overlap, **overrides) -> BudgetSearcher:
    return BudgetSearcher(
        tiny_model("llama", num_layers=3),
        small_args(tmp_path, **overrides),
        dataset(),
        processing_class=tiny_tokenizer(),
        metric=metric,
        callbacks=callbacks,
    )


def test_strategy_resumes_exactly_from_its_state_bytes():
    # Regression: pickling np.random.randn froze a copy of NumPy's generator into the optimiser.
    strategy = GroupStrategy([12, 12], 12, 0.3, 4, 48, 4, seed=5)
    strategy.ask()
    strategy.tell([1.0, 2.0, 3.0, 4.0])
    restored = GroupStrategy.from_state_bytes(strategy.state_bytes())
    assert restored.ask() == strategy.ask()


class TestFitness:
    def test_cache_score_matches_the_paper(self):
        assert cache_score([128, 128], 128) == 1.0
        assert cache_score([192, 192], 128) == pytest.approx(0.5)
        assert cache_score([256, 256], 128) == 0.0
        assert cache_score([300, 300], 128) == 0.0
        assert cache_score([64, 64], 128, gamma=0.2) == pytest.approx(0.9)

    def test_combined_fitness(self):
        assert combined_fitness(50.0, [128], 128, lam=0.3) == pytest.approx(65.0)
        assert combined_fitness(math.nan, [128], 128) == -math.inf
        assert combined_fitness(2.0, [128], 128, lam=0.3, greater_is_better=False) == pytest.approx(
            -2.0 / 1.3
        )


def test_search_is_deterministic_and_writes_allocation(tmp_path):
    first = make_searcher(tmp_path / "a").search()
    second = make_searcher(tmp_path / "b").search()
    assert first.allocation.budgets == second.allocation.budgets
    strip = lambda history: [{k: v for k, v in e.items() if k != "seconds"} for e in history]
    assert strip(first.history) == strip(second.history)
    assert first.allocation.total == 12 * 3
    assert all(b >= 4 for b in first.allocation.budgets)
    saved = BudgetAllocation.from_pretrained(tmp_path / "a" / "run" / "allocation")
    assert saved.budgets == first.allocation.budgets
    assert saved.search_group_size == 2 and saved.metric_name == "overlap"
    candidates = [e for e in first.history if e["event"] == "candidate"]
    assert len(candidates) == 2 * 2 * 4  # groups x generations x population
    assert {"budgets", "score", "cache_score", "fitness", "seconds"} <= set(candidates[0])
    log_lines = (tmp_path / "a" / "run" / "search_log.jsonl").read_text().splitlines()
    assert len(log_lines) == len(first.history)


class SyntheticEngine:
    """Answers encode the budgets; the metric rewards budget on layers 1 and 2 only."""

    def answers(self, budgets, progress=None):
        return [json.dumps(list(budgets))] * 3


def synthetic_metric(predictions, references):
    if not predictions[0].startswith("["):  # the searcher probes the metric's keys with a reference answer
        return {"score": 0.0}
    budgets = json.loads(predictions[0])
    return {"score": (budgets[1] + budgets[2]) / 4.0}


class SyntheticSearcher(BudgetSearcher):
    def create_engine(self):
        return SyntheticEngine()


def synthetic_searcher(tmp_path, metric=synthetic_metric, **overrides) -> BudgetSearcher:
    """Four layers, target 32, every candidate projected onto the target; answers from :class:`SyntheticEngine`."""
    settings = dict(
        output_dir=str(tmp_path / "run"),
        target_budget=32,
        group_size=2,
        window_size=4,
        min_budget=4,
        disable_tqdm=True,
        constraint="project",
    )
    settings.update(overrides)
    return SyntheticSearcher(
        tiny_model("llama", num_layers=4),
        SearchArguments(**settings),
        dataset(),
        processing_class=tiny_tokenizer(),
        metric=metric,
    )


def test_search_moves_budget_to_the_layers_that_matter(tmp_path):
    searcher = synthetic_searcher(tmp_path, population_size=8, generations_per_group=12, max_budget=96)
    result = searcher.search()
    budgets = result.allocation.budgets
    assert sum(budgets) == 4 * 32
    assert budgets[1] + budgets[2] > 2 * 32 + 40, budgets
    assert budgets[0] < 32 and budgets[3] < 32


def flat_metric(predictions, references):
    return {"score": 1.0}


@pytest.mark.parametrize("rewarded", [True, False])
def test_the_allocation_records_its_bounds_and_a_layer_at_the_cap_is_reported(tmp_path, caplog, rewarded):
    # Layers 1 and 2 earn score for every token, so a cap of 40 (target 32) stops them; a flat metric does not
    # move any layer, so nothing is at the cap and nothing is reported.
    searcher = synthetic_searcher(
        tmp_path,
        metric=synthetic_metric if rewarded else flat_metric,
        population_size=6,
        generations_per_group=4,
        max_budget=40,
    )
    with caplog.at_level(logging.WARNING, logger="evolkv_hf.search.searcher"):
        result = searcher.search()
    saved = BudgetAllocation.from_pretrained(tmp_path / "run" / "allocation")
    assert saved.extra["min_budget"] == 4 and saved.extra["max_budget"] == 40
    warnings = [record.getMessage() for record in caplog.records if "max_budget" in record.getMessage()]
    if rewarded:
        assert result.allocation.budgets[1] == result.allocation.budgets[2] == 40, result.allocation.budgets
        assert len(warnings) == 1
        assert "layer(s) [1, 2] at max_budget (40 tokens)" in warnings[0]
        assert str(tmp_path / "run" / "allocation") in warnings[0]
    else:
        assert result.allocation.budgets == [32] * 4
        assert warnings == []


@pytest.mark.parametrize(
    ("target", "cap", "top", "warned"),
    [
        (128, 512, 512, True),
        (128, 512, 511, True),
        (128, 512, 507, True),
        (128, 512, 506, False),
        (32, 40, 40, True),
        (32, 40, 39, True),
        (32, 40, 38, False),
        (128, 129, 128, False),
    ],
)
def test_a_layer_trimmed_below_the_cap_by_the_projection_is_still_at_the_cap(
    tmp_path, caplog, target, cap, top, warned
):
    # Regression for the published third-sweep needle searches: layer 18 ended at 511 of 512, the candidate's
    # clipped 512 trimmed by the projection onto the target mean. A layer at the target is never "at the cap".
    searcher = make_searcher(tmp_path, target_budget=target, max_budget=cap)
    with caplog.at_level(logging.WARNING, logger="evolkv_hf.search.searcher"):
        searcher._warn_at_cap([top, 8, 8])
    expected = f"layer(s) [0] at max_budget ({cap} tokens)"
    assert any(expected in r.getMessage() for r in caplog.records) == warned


def test_a_layer_the_penalty_search_held_at_the_cap_is_reported_although_the_completion_lowered_it(
    tmp_path, caplog
):
    # Under "penalty" the best scheme may drift over the target: a layer it held at the cap (512) ends at 441
    # once the completion rescales the scheme to the target (the published 15-generation penalty searches).
    searcher = make_searcher(tmp_path, target_budget=128, max_budget=512, constraint="penalty")
    searcher.state.best_budgets = [100, 512, 100]
    with caplog.at_level(logging.WARNING, logger="evolkv_hf.search.searcher"):
        searcher._warn_at_cap([86, 441, 86])
    assert any("layer(s) [1] at max_budget (512 tokens)" in r.getMessage() for r in caplog.records)


def test_callbacks_fire_in_order_and_can_stop(tmp_path):
    events = []

    class Recorder(SearchCallback):
        def __getattribute__(self, name):
            if name.startswith("on_"):

                def record(args, state, control, **kwargs):
                    events.append(name)
                    if name == "on_generation_end" and state.global_generation == 3:
                        control.should_search_stop = True

                return record
            return super().__getattribute__(name)

    make_searcher(tmp_path, callbacks=[Recorder()]).search()
    assert events[0] == "on_search_begin" and events[-1] == "on_search_end"
    assert events.count("on_generation_end") == 3
    first_group = events[: events.index("on_group_end") + 1]
    assert first_group[1:3] == ["on_candidate_evaluated", "on_log"]  # the uniform baseline
    assert "on_group_begin" in first_group and first_group.count("on_generation_end") == 2
    assert events.index("on_save") > events.index("on_generation_end")


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    reference = make_searcher(tmp_path / "ref").search()
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(TESTS)!r})
        from test_search import make_searcher
        from evolkv_hf.search import SearchCallback
        from pathlib import Path

        class Killer(SearchCallback):
            def on_candidate_evaluated(self, args, state, control, **kwargs):
                # die in the middle of the second generation of the first group (the optimiser is mid-group)
                if state.global_generation == 1:
                    self.count = getattr(self, "count", 0) + 1
                    if self.count == 2:
                        os.kill(os.getpid(), signal.SIGKILL)

        make_searcher(Path({str(tmp_path / "killed")!r}), callbacks=[Killer()]).search()
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    process = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert process.returncode == -signal.SIGKILL, process.stderr
    run_dir = tmp_path / "killed" / "run"
    assert latest_checkpoint(run_dir).name == "checkpoint-1"
    resumed = make_searcher(tmp_path / "killed").search(resume_from_checkpoint=True)
    assert resumed.allocation.budgets == reference.allocation.budgets
    strip = lambda history: [{k: v for k, v in e.items() if k != "seconds"} for e in history]
    assert strip(resumed.history) == strip(reference.history)


def test_keyboard_interrupt_writes_a_checkpoint_then_resume_matches(tmp_path):
    reference = make_searcher(tmp_path / "ref", save_strategy="no").search()

    class Interrupt(SearchCallback):
        calls = 0

        def on_candidate_evaluated(self, args, state, control, **kwargs):
            Interrupt.calls += 1
            if Interrupt.calls == 7:  # inside the second generation
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_searcher(tmp_path / "int", callbacks=[Interrupt()], save_strategy="no").search()
    assert latest_checkpoint(tmp_path / "int" / "run").name == "checkpoint-1"
    resumed = make_searcher(tmp_path / "int", save_strategy="no").search(resume_from_checkpoint=True)
    assert resumed.allocation.budgets == reference.allocation.budgets


def test_failing_candidate_gets_worst_fitness_and_search_continues(tmp_path):
    calls = {"n": 0}

    def flaky(predictions, references):
        calls["n"] += 1
        if calls["n"] in (3, 4):
            raise RuntimeError("metric exploded")
        if calls["n"] == 5:
            return {"overlap": float("nan")}
        return digit_overlap(predictions, references)

    searcher = BudgetSearcher(
        tiny_model("llama", num_layers=3),
        small_args(tmp_path),
        dataset(),
        processing_class=tiny_tokenizer(),
        metric=flaky,
    )
    result = searcher.search()
    failures = [e for e in result.history if e.get("event") == "candidate" and e["fitness"] == -math.inf]
    assert len(failures) >= 2
    assert any("metric exploded" in (e["error"] or "") for e in failures)
    assert math.isfinite(result.best_fitness)


def test_checkpoint_rotation_and_atomic_write(tmp_path):
    make_searcher(tmp_path, save_total_limit=2).search()
    names = [p.name for p in checkpoint_dirs(tmp_path / "run")]
    assert names == ["checkpoint-3", "checkpoint-4"]


def test_checkpoint_write_failure_keeps_last_good(tmp_path, monkeypatch):
    make_searcher(tmp_path).search()
    run = tmp_path / "run"
    before = latest_checkpoint(run)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match=r"No space left on device.*intact"):
        save_checkpoint(run, 99, {"search_state": {}}, b"state")
    monkeypatch.undo()
    assert latest_checkpoint(run) == before
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]


def test_engine_setup_errors_surface_instead_of_scoring_every_candidate(tmp_path):
    # Regression: an engine that cannot be built (here: Gemma2's sliding layers) used to give every
    # candidate the worst fitness and end on the uniform scheme.
    searcher = BudgetSearcher(
        tiny_model("gemma2", num_layers=2), small_args(tmp_path), dataset(), processing_class=tiny_tokenizer(),
        metric=digit_overlap,
    )  # fmt: skip
    with pytest.raises(ValueError, match="engine='plain'"):
        searcher.search()


def test_non_finite_scores_do_not_lose_the_allocation(tmp_path):
    calls = {"n": 0}

    def nan_after_probe(predictions, references):
        calls["n"] += 1
        return {"overlap": 50.0 if calls["n"] <= 2 else float("nan")}  # probe + baseline are finite

    searcher = BudgetSearcher(
        tiny_model("llama", num_layers=3), small_args(tmp_path), dataset(), eval_dataset=dataset(2),
        processing_class=tiny_tokenizer(), metric=nan_after_probe,
    )  # fmt: skip
    result = searcher.search()
    saved = BudgetAllocation.from_pretrained(tmp_path / "run" / "allocation")
    assert saved.budgets == result.allocation.budgets
    assert all(math.isfinite(v) for v in saved.scores.values())


class TestClearErrors:
    def test_existing_output_dir_is_not_overwritten(self, tmp_path):
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "precious.txt").write_text("keep me")
        with pytest.raises(FileExistsError, match="not empty"):
            make_searcher(tmp_path).search()
        assert (tmp_path / "run" / "precious.txt").read_text() == "keep me"

    def test_empty_dataset(self, tmp_path):
        with pytest.raises(ValueError):
            BudgetSearcher(
                tiny_model("llama"),
                small_args(tmp_path),
                [],
                processing_class=tiny_tokenizer(),
                metric=digit_overlap,
            )

    def test_missing_columns(self, tmp_path):
        rows = [{k: v for k, v in row.items() if k != "answers"} for row in dataset()]
        with pytest.raises(ValueError, match="answers"):
            BudgetSearcher(
                tiny_model("llama"),
                small_args(tmp_path),
                rows,
                processing_class=tiny_tokenizer(),
                metric=digit_overlap,
            )

    def test_target_below_floor(self, tmp_path):
        with pytest.raises(ValueError, match="below the per-layer floor"):
            small_args(tmp_path, target_budget=3)

    def test_group_size(self, tmp_path):
        with pytest.raises(ValueError, match="group_size"):
            small_args(tmp_path, group_size=0)

    def test_metric_key(self, tmp_path):
        with pytest.raises(ValueError, match="not produced by the metric"):
            make_searcher(tmp_path, metric_for_best_model="accuracy")

    def test_resume_without_checkpoint(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            make_searcher(tmp_path).search(resume_from_checkpoint=True)

    def test_resume_with_other_arguments(self, tmp_path):
        make_searcher(tmp_path).search()
        with pytest.raises(ValueError, match="seed"):
            make_searcher(tmp_path, seed=5).search(resume_from_checkpoint=True)

    def test_resume_with_another_metric_or_model_is_refused(self, tmp_path):
        # Regression: only the arguments and the samples were compared, so resuming with another metric (or
        # another model of the same depth) mixed its scores with the cached ones of the first.
        make_searcher(tmp_path).search()

        def other_overlap(predictions, references):
            return digit_overlap(predictions, references)

        with pytest.raises(ValueError, match=r"metric='digit_overlap', now 'other_overlap'"):
            make_searcher(tmp_path, metric=other_overlap).search(resume_from_checkpoint=True)
        other_model = make_searcher(tmp_path)
        other_model.model.name_or_path = other_model.model.config._name_or_path = "someone/another-model"
        with pytest.raises(
            ValueError,
            match=r"model='LlamaForCausalLM', now 'someone/another-model'.*same model \(and dtype\)",
        ):
            other_model.search(resume_from_checkpoint=True)
        # Regression: the same model in another dtype resumed, mixing its scores with the cached ones.
        other_dtype = make_searcher(tmp_path)
        other_dtype.model.to(torch.float64)
        with pytest.raises(ValueError, match=r"model_dtype='torch.float32', now 'torch.float64'"):
            other_dtype.search(resume_from_checkpoint=True)
        make_searcher(tmp_path).search(resume_from_checkpoint=True)  # the same model and metric still resume


def test_hf_argument_parser_and_numpy_state_untouched(tmp_path):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(SearchArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path / "x"), "--target_budget", "64", "--group_size", "4"]
    )
    assert args.population_size == 8 and args.min_budget == 32
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    make_searcher(tmp_path).search()
    assert np.random.rand() == expected


class TestFailureModes:
    """Regressions found by review: each used to lose work or fail without saying why."""

    def test_a_metric_that_returns_nan_for_the_baseline_is_an_error(self, tmp_path):
        searcher = BudgetSearcher(
            tiny_model("llama", num_layers=3),
            small_args(tmp_path),
            dataset(),
            processing_class=tiny_tokenizer(),
            metric=lambda predictions, references: {"m": float("nan")},
        )
        # Used to search on, rank every candidate -inf and save the untouched uniform allocation.
        with pytest.raises(RuntimeError, match=r"NaN .*uniform baseline"):
            searcher.search()
        assert not (tmp_path / "run" / "allocation").exists()

    @staticmethod
    def with_held_out(tmp_path, metric):
        """A searcher with 3 search samples and 2 held-out ones."""
        return BudgetSearcher(
            tiny_model("llama", num_layers=3),
            small_args(tmp_path),
            dataset(),
            eval_dataset=dataset(2),
            processing_class=tiny_tokenizer(),
            metric=metric,
        )

    def test_the_allocation_is_saved_before_the_held_out_comparison(self, tmp_path):
        def fails_on_held_out(predictions, references):
            if len(predictions) == 2:  # the held-out set has 2 samples, the search set 3
                raise MemoryError("held-out prompts too long")
            return digit_overlap(predictions, references)

        with pytest.raises(MemoryError):
            self.with_held_out(tmp_path, fails_on_held_out).search()
        saved = BudgetAllocation.from_pretrained(tmp_path / "run" / "allocation")
        assert saved.total == 12 * 3 and "search_completed_score" in saved.scores
        assert not any(name.startswith("eval_") for name in saved.scores)

    def test_held_out_scores_are_added_to_the_saved_allocation(self, tmp_path):
        self.with_held_out(tmp_path, digit_overlap).search()
        saved = BudgetAllocation.from_pretrained(tmp_path / "run" / "allocation")
        assert {"eval_evolkv", "eval_uniform", "eval_pyramid"} <= set(saved.scores)

    def test_a_stop_requested_by_a_callback_does_not_end_the_next_call(self, tmp_path):
        class StopOnce(SearchCallback):
            active = True

            def on_generation_end(self, args, state, control, **kwargs):
                if self.active:
                    control.should_search_stop = True

        stopper = StopOnce()
        searcher = make_searcher(tmp_path, callbacks=[stopper])
        searcher.search()
        assert searcher.state.global_generation == 1
        stopper.active = False
        searcher.search(resume_from_checkpoint=True)
        assert searcher.state.global_generation == 2 * 2  # groups x generations: the search went on

    def test_resuming_with_other_search_samples_is_refused(self, tmp_path):
        make_searcher(tmp_path, generations_per_group=1).search()
        other = BudgetSearcher(
            tiny_model("llama", num_layers=3),
            small_args(tmp_path, generations_per_group=1),
            dataset(4),
            processing_class=tiny_tokenizer(),
            metric=digit_overlap,
        )
        # Used to resume silently, reusing the scores cached for the first samples.
        with pytest.raises(ValueError, match="other search samples"):
            other.search(resume_from_checkpoint=True)
        make_searcher(tmp_path, generations_per_group=1).search(resume_from_checkpoint=True)

    def test_a_checkpoint_from_elsewhere_only_continues_into_a_directory_without_a_search(self, tmp_path):
        make_searcher(tmp_path / "a", generations_per_group=1).search()
        make_searcher(tmp_path / "b", generations_per_group=1).search()
        foreign = latest_checkpoint(tmp_path / "a" / "run")
        before = sorted(p.name for p in (tmp_path / "b" / "run").iterdir())
        # Used to truncate b's log with a's byte count and let rotation delete checkpoints.
        with pytest.raises(FileExistsError, match="holds another search"):
            make_searcher(tmp_path / "b", generations_per_group=1).search(resume_from_checkpoint=foreign)
        assert sorted(p.name for p in (tmp_path / "b" / "run").iterdir()) == before
        result = make_searcher(tmp_path / "c", generations_per_group=1).search(resume_from_checkpoint=foreign)
        assert result.allocation.total == 12 * 3

    def test_an_infinite_completed_score_does_not_fail_the_allocation(self, tmp_path):
        searcher = BudgetSearcher(
            tiny_model("llama", num_layers=3),
            small_args(tmp_path, generations_per_group=1),
            dataset(),
            processing_class=tiny_tokenizer(),
            metric=lambda predictions, references: {"m": math.inf},
        )
        result = searcher.search()
        assert result.allocation.metric_value is None
        assert BudgetAllocation.from_pretrained(tmp_path / "run" / "allocation").total == 12 * 3

    @pytest.mark.parametrize("empty", [[], "dataset"])
    def test_an_empty_dataset_is_named(self, tmp_path, empty):
        from datasets import Dataset

        data = [] if empty == [] else Dataset.from_list(dataset()).select([])
        with pytest.raises(ValueError, match="train_dataset is empty"):
            BudgetSearcher(
                tiny_model("llama", num_layers=3),
                small_args(tmp_path),
                data,
                processing_class=tiny_tokenizer(),
                metric=digit_overlap,
            )


@pytest.mark.parametrize("score", [-3.0, -0.5, 0.0, 0.5, 40.0])
@pytest.mark.parametrize("greater_is_better", [True, False])
def test_holding_the_target_never_lowers_the_fitness(score, greater_is_better):
    """Regression: for a negative score, F = f * (1 + lambda CacheScore) rewarded overshooting the target."""
    at_target = combined_fitness(score, [128, 128], 128, greater_is_better=greater_is_better)
    over = combined_fitness(score, [192, 192], 128, greater_is_better=greater_is_better)
    far_over = combined_fitness(score, [256, 256], 128, greater_is_better=greater_is_better)
    assert at_target >= over >= far_over
    if score != 0.0:
        assert at_target > far_over


class TestReportTo:
    def test_unknown_integration_is_refused_by_the_arguments(self, tmp_path):
        with pytest.raises(ValueError, match=r"report_to takes .*'tensorbord'"):
            small_args(tmp_path, report_to=["tensorbord"])
        assert small_args(tmp_path, report_to="none").report_to == []
        assert small_args(tmp_path, report_to=None).report_to == []

    def test_all_means_every_installed_integration(self, tmp_path, monkeypatch):
        """Regression: report_to=["all"] enabled nothing, silently (transformers: every installed one)."""
        import importlib.util

        from evolkv_hf.search import callbacks

        made = []
        monkeypatch.setattr(callbacks, "TensorBoardCallback", lambda log_dir: made.append(log_dir) or "tb")
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: object() if name == "tensorboard" else None
        )
        assert callbacks.integration_callbacks(["all"], str(tmp_path)) == ["tb"]
        assert callbacks.integration_callbacks(["tensorboard", "all"], str(tmp_path)) == ["tb"]  # once
        assert made == [str(tmp_path / "runs")] * 2
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
        assert callbacks.integration_callbacks(["all"], str(tmp_path)) == []


@pytest.mark.parametrize(
    "key, given, expected",
    [(None, None, True), ("overlap", None, True), ("eval_loss", None, False), ("eval_loss", True, True)],
)
def test_greater_is_better_follows_training_arguments(tmp_path, key, given, expected):
    """A metric key ending in 'loss' is minimised unless said otherwise (it used to be maximised)."""
    args = small_args(tmp_path, metric_for_best_model=key, greater_is_better=given)
    assert args.greater_is_better is expected


def test_the_baseline_of_a_non_integer_target_is_the_completed_uniform_scheme(tmp_path):
    """Regression: round(12.5) == 12 gave every layer 12, a baseline below the target mean."""
    result = make_searcher(tmp_path, target_budget=12.5, generations_per_group=1).search()
    baseline = next(entry for entry in result.history if entry["event"] == "baseline")
    assert baseline["budgets"] == [13, 13, 12]
    assert baseline["budgets"] == BudgetAllocation.uniform(3, 12.5, window_size=4).budgets
    assert result.allocation.total == 38


@pytest.mark.parametrize("source", ["memory", "local_dir", "hub_id"])
def test_base_model_is_only_a_hub_repo_id(tmp_path, source):
    """Regression: a model from a local directory (or built in memory) was recorded as base_model under its
    directory (or class) name, and the model card then told users to load a repo that does not exist."""
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama", num_layers=3)
    if source == "local_dir":
        model.save_pretrained(tmp_path / "my-finetuned-llama")
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "my-finetuned-llama")
    elif source == "hub_id":
        model.config._name_or_path = "org/tiny-llama"
    args = small_args(tmp_path, generations_per_group=1)
    searcher = BudgetSearcher(model, args, dataset(), processing_class=tiny_tokenizer(), metric=digit_overlap)
    allocation = searcher.search().allocation
    card = (tmp_path / "run" / "allocation" / "README.md").read_text()
    if source == "hub_id":
        assert allocation.base_model == "org/tiny-llama"
        assert "base_model: org/tiny-llama" in card
    else:
        assert allocation.base_model is None and "base_model:" not in card
        assert "AutoModelForCausalLM.from_pretrained(...)  # the base model" in card
        expected = "my-finetuned-llama" if source == "local_dir" else "LlamaForCausalLM"
        assert allocation.extra["model"] == expected


class TestArgumentTypes:
    """Regressions: arguments of the wrong type were accepted and failed late, or silently meant the opposite."""

    def test_a_path_output_dir_is_stored_as_a_string(self, tmp_path):
        # A pathlib.Path was kept and crashed the first checkpoint ("Cannot serialise PosixPath"), after the
        # baseline and a whole generation had run.
        args = small_args(tmp_path, output_dir=tmp_path / "run")
        assert args.output_dir == str(tmp_path / "run")
        assert json.loads(json.dumps(args.to_dict()))["output_dir"] == str(tmp_path / "run")

    @pytest.mark.parametrize(
        "name", ["overwrite_output_dir", "push_to_hub", "disable_tqdm", "greater_is_better"]
    )
    def test_yes_no_settings_must_be_booleans(self, tmp_path, name):
        # The string "false" counted as true: overwrite_output_dir="false" deleted the previous search.
        with pytest.raises(TypeError, match=rf"{name} must be True or False, got str 'false'"):
            small_args(tmp_path, **{name: "false"})

    def test_numpy_bools_are_accepted(self, tmp_path):
        args = small_args(tmp_path, overwrite_output_dir=np.bool_(True), greater_is_better=np.bool_(False))
        assert args.overwrite_output_dir is True and args.greater_is_better is False

    def test_storage_device(self, tmp_path):
        assert small_args(tmp_path, engine_storage_device=torch.device("cpu")).engine_storage_device == "cpu"
        with pytest.raises(TypeError, match="engine_storage_device must be a device name"):
            small_args(tmp_path, engine_storage_device=1)

    def test_gamma_above_one_is_refused(self, tmp_path):
        # With gamma > 1 the CacheScore far below the target is negative: lam=1, gamma=5 ranked a score of 10
        # above a score of 60, and a factor of exactly 0 divided by zero.
        with pytest.raises(ValueError, match=r"cache_score_gamma must be in \[0, 1\]"):
            small_args(tmp_path, cache_score_gamma=5.0)
        with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
            combined_fitness(-1.0, [64] * 4, 128, lam=1, gamma=4)
        assert small_args(tmp_path, cache_score_gamma=1.0).cache_score_gamma == 1.0


class TestInitialAllocation:
    """A warm start: the search starts from a saved allocation instead of uniform budgets."""

    def test_starts_from_the_allocation_and_records_it(self, tmp_path):
        BudgetAllocation(budgets=[20, 8, 8], window_size=4).save_pretrained(tmp_path / "start")
        result = make_searcher(
            tmp_path, generations_per_group=1, initial_allocation=str(tmp_path / "start")
        ).search()
        baseline = next(entry for entry in result.history if entry["event"] == "baseline")
        assert baseline["scheme"] == "initial"
        assert baseline["budgets"] == [20, 8, 8]
        # Every candidate of the first group keeps the start's budget for the layer outside the group.
        first = [e for e in result.history if e["event"] == "candidate" and e["group"] == 0]
        assert first and all(e["budgets"][2] == 8 for e in first)
        assert result.allocation.extra["initial_allocation"] == str(tmp_path / "start")
        assert result.allocation.extra["initial_budgets"] == [20, 8, 8]
        assert result.allocation.total == 36
        uniform = make_searcher(tmp_path / "uniform", generations_per_group=1).search()
        assert next(e for e in uniform.history if e["event"] == "baseline")["scheme"] == "uniform"
        assert "initial_allocation" not in uniform.allocation.extra

    def test_the_start_is_rescaled_to_the_target_within_the_bounds(self, tmp_path):
        BudgetAllocation(budgets=[40, 10, 10], window_size=4).save_pretrained(tmp_path / "start")
        result = make_searcher(
            tmp_path, generations_per_group=1, max_budget=18, initial_allocation=tmp_path / "start"
        ).search()
        baseline = next(entry for entry in result.history if entry["event"] == "baseline")
        # 40:10:10 scaled to a total of 36 is 24:6:6; the first is capped at 18 and the excess goes to the rest.
        assert baseline["scheme"] == "initial" and baseline["budgets"] == [18, 9, 9]

    def test_continuing_a_search_from_its_own_allocation_with_overwrite(self, tmp_path):
        make_searcher(tmp_path, generations_per_group=1).search()
        # Stand-in for a first search's non-uniform result, in the place the search writes it.
        BudgetAllocation(budgets=[16, 10, 10], window_size=4).save_pretrained(
            tmp_path / "run" / "allocation", overwrite=True
        )
        again = make_searcher(
            tmp_path,
            generations_per_group=1,
            overwrite_output_dir=True,
            initial_allocation=str(tmp_path / "run" / "allocation"),
        ).search()
        baseline = next(entry for entry in again.history if entry["event"] == "baseline")
        assert baseline["budgets"] == [16, 10, 10]
        # The start is recorded by value: its directory now holds the new result.
        assert again.allocation.extra["initial_budgets"] == [16, 10, 10]
        assert BudgetAllocation.from_pretrained(tmp_path / "run" / "allocation") == again.allocation

    def test_wrong_layer_count_is_refused_before_output_dir_is_touched(self, tmp_path):
        BudgetAllocation(budgets=[12, 12], window_size=4).save_pretrained(tmp_path / "two")
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "search_log.jsonl").write_text("{}\n")
        searcher = make_searcher(
            tmp_path, overwrite_output_dir=True, initial_allocation=str(tmp_path / "two")
        )
        with pytest.raises(ValueError, match="has 2 budgets but the model has 3 decoder layers"):
            searcher.search()
        assert (tmp_path / "run" / "search_log.jsonl").read_text() == "{}\n"

    def test_a_missing_allocation_is_a_clear_error(self, tmp_path):
        searcher = make_searcher(tmp_path, initial_allocation=str(tmp_path / "nowhere"))
        with pytest.raises(ValueError, match=r"initial_allocation .*nowhere.* could not be loaded"):
            searcher.search()
        assert not (tmp_path / "run").exists()

    def test_resume_must_start_from_the_same_budgets(self, tmp_path):
        start = BudgetAllocation(budgets=[20, 8, 8], window_size=4)
        start.save_pretrained(tmp_path / "start")
        make_searcher(tmp_path, initial_allocation=str(tmp_path / "start")).search()
        with pytest.raises(ValueError, match=r"started from \[20, 8, 8\].*gives uniform budgets"):
            make_searcher(tmp_path).search(resume_from_checkpoint=True)
        # Another path to the same allocation resumes (the budgets are compared, not the path).
        start.save_pretrained(tmp_path / "moved")
        resumed = make_searcher(tmp_path, initial_allocation=str(tmp_path / "moved")).search(
            resume_from_checkpoint=True
        )
        assert resumed.allocation.extra["initial_budgets"] == [20, 8, 8]

    def test_non_path_values_are_refused(self, tmp_path):
        with pytest.raises(TypeError, match="save_pretrained"):
            small_args(tmp_path, initial_allocation=BudgetAllocation(budgets=[12, 12, 12]))
        with pytest.raises(ValueError, match="None to start from uniform"):
            small_args(tmp_path, initial_allocation="")
