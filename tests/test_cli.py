"""Tests of the `evolkv` command line (evolkv_hf.cli)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from tiny_models import tiny_model
from tiny_tokenizer import tiny_rows, tiny_tokenizer

from evolkv_hf import BudgetAllocation, SearchArguments, cli
from evolkv_hf.cli import COMMANDS, main


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama and its word-level tokenizer saved with save_pretrained (loads offline)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", num_layers=3).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def allocation_dir(tmp_path: Path) -> Path:
    path = tmp_path / "alloc"
    BudgetAllocation(
        budgets=[40, 20, 12], window_size=8, base_model="org/tiny", task="niah_single"
    ).save_pretrained(path)
    return path


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_has_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"evolkv {command}" in out


def test_top_level_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS) and "example:" in out
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["evaluate", "--demo", "--task", "niah_single", "--budgets", "0"]) == 2
    assert "budgets must be >= 1" in capsys.readouterr().err


def test_show_prints_table_and_provenance(
    allocation_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "budgets.png"
    assert main(["show", str(allocation_dir), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "layers: 3 | mean: 24 | total: 72 | min: 12 | max: 40" in out
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    assert [line.split()[:2] for line in lines[first + 1 : first + 4]] == [
        ["0", "40"],
        ["1", "20"],
        ["2", "12"],
    ]
    assert "base_model: org/tiny" in out and "window_size: 8" in out
    assert png.stat().st_size > 0


def test_user_errors_exit_1_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: No allocation.json") and "Traceback" not in err and err.count("\n") == 1
    assert main(["push", str(tmp_path / "missing"), "me/repo"]) == 1
    assert "not a local directory" in capsys.readouterr().err
    assert main(["generate", "--budget", "8", "--prompt", "hi"]) == 1
    assert "no model given" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nope"), "--budget", "8", "--prompt", "hi"]) == 1
    assert "could not load model" in capsys.readouterr().err
    assert main(["evaluate", "--demo", "--dataset", str(tmp_path / "x.csv")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_input_errors_are_reported_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regressions: a typo in --task or --methods was reported only after the model had loaded (or a 7B model
    # had downloaded); an empty or malformed --dataset gave "StopIteration" or "DatasetGenerationError".
    def no_model(args: Any) -> Any:
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(cli, "load_model_from_args", no_model)
    empty, malformed = tmp_path / "empty.jsonl", tmp_path / "malformed.jsonl"
    empty.write_text("")
    malformed.write_text('{"context": "a"}\nnot json\n')
    cases = [
        (["evaluate", "--demo", "--task", "niah"], "Unknown task 'niah'; valid tasks:"),
        (["search", "--demo", "--task", "niah", "--output-dir", str(tmp_path / "r")], "Unknown task 'niah'"),
        (["evaluate", "--demo", "--task", "vt", "--methods", "full,unifrom"], "Unknown method 'unifrom'"),
        (["evaluate", "--demo", "--dataset", str(empty)], "is empty: it needs one row per sample"),
        (["evaluate", "--demo", "--dataset", str(malformed)], "could not be read as JSON"),
        (["search", "--demo", "--dataset", str(malformed), "--output-dir", str(tmp_path / "r")], "as JSON"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_conflicting_model_flags_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # --demo silently won over --model, and --revision was dropped with --demo.
    assert main(["generate", "--demo", "--model", "someone/model", "--budget", "8", "--prompt", "hi"]) == 1
    assert "--demo and --model 'someone/model' name two models" in capsys.readouterr().err
    assert main(["generate", "--demo", "--revision", "main", "--budget", "8", "--prompt", "hi"]) == 1
    assert "--revision applies to a Hub --model" in capsys.readouterr().err


def test_context_length_beyond_the_model_is_warned(capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_model("llama", num_layers=2)
    limit = model.config.max_position_embeddings
    cli._warn_past_position_limit(model, limit)
    assert capsys.readouterr().err == ""
    cli._warn_past_position_limit(model, limit + 1)
    assert f"beyond the model's max_position_embeddings ({limit})" in capsys.readouterr().err


def test_debug_shows_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(tmp_path), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert main(["--debug", "show", str(tmp_path)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_keyboard_interrupt_exits_130(
    allocation_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_show", interrupted)
    assert main(["show", str(allocation_dir)]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_evaluate_end_to_end_on_a_saved_tiny_model(
    tiny_checkpoint: Path, allocation_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import datasets

    data = tmp_path / "data.jsonl"
    datasets.Dataset.from_list(tiny_rows(3)).to_json(data)
    out = tmp_path / "results"
    argv = [
        "evaluate", "--model", str(tiny_checkpoint), "--dataset", str(data),
        "--methods", f"full,uniform,{allocation_dir}", "--budgets", "16,24", "--window-size", "8",
        "--metric", "string_match_part", "--n-bootstrap", "100", "--batch-size", "2",
        "--output-dir", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "string_match_part" in table and "alloc" in table and "| 16" in table
    run_dirs = sorted(path.name for path in out.iterdir() if path.is_dir())
    assert len(run_dirs) == 5 and all(
        name.startswith(f"niah_single__{tiny_checkpoint.name}__") for name in run_dirs
    )
    config = json.loads((out / run_dirs[0] / "config.json").read_text())
    assert config["num_samples"] == 3 and config["metric"] == "string_match_part"
    # A rerun reuses everything; an unknown method is a user error found before any work.
    assert main(argv) == 0
    assert main([*argv[:5], "--methods", "full,snapkv", *argv[7:]]) == 1
    assert "Unknown method 'snapkv'" in capsys.readouterr().err


_TWO_SCORES_METRIC = """
import datasets
import evaluate


class TwoScores(evaluate.Metric):
    def _info(self):
        features = datasets.Features(
            {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
        )
        return evaluate.MetricInfo(description="", citation="", inputs_description="", features=features)

    def _compute(self, predictions, references):
        return {"always_one": 1.0, "answer_length": sum(map(len, predictions)) / len(predictions)}
"""


def test_evaluate_metric_key_picks_one_of_several_scores(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: a metric returning several scores needed metric_key=, which the command line could not pass.
    import datasets

    data = tmp_path / "data.jsonl"
    datasets.Dataset.from_list(tiny_rows(2)).to_json(data)
    script = tmp_path / "two_scores" / "two_scores.py"
    script.parent.mkdir()
    script.write_text(_TWO_SCORES_METRIC)
    argv = [
        "evaluate", "--model", str(tiny_checkpoint), "--dataset", str(data), "--methods", "uniform",
        "--budgets", "16", "--window-size", "8", "--metric", str(script), "--n-bootstrap", "10",
        "--output-dir", str(tmp_path / "results"), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 1
    assert "--metric-key" in capsys.readouterr().err
    assert main([*argv, "--metric-key", "always_one"]) == 0
    assert "uniform | 1.0 [1.0, 1.0]" in capsys.readouterr().out
    config = json.loads(
        (
            tmp_path / "results" / f"niah_single__{tiny_checkpoint.name}__uniform__16" / "config.json"
        ).read_text()
    )
    assert config["metric_key"] == "always_one"


def test_generate_prints_answer_and_memory(
    tiny_checkpoint: Path, allocation_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = " ".join(["the sky is blue ."] * 12)
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny_checkpoint),
                "--budget",
                "8",
                "--prompt",
                prompt,
                "--max-new-tokens",
                "3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "K/V memory:" in out and "of the ~" in out and "mean budget 8 tokens/layer" in out
    argv = [
        "generate",
        "--model",
        str(tiny_checkpoint),
        "--allocation",
        str(allocation_dir),
        "--prompt",
        prompt,
    ]
    assert main([*argv, "--max-new-tokens", "2"]) == 0
    assert "mean budget 24 tokens/layer" in capsys.readouterr().out
    assert main([*argv, "--chat"]) == 1
    assert "no chat template" in capsys.readouterr().err


def test_push_to_a_local_hub(allocation_dir: Path, fake_hub: Any, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "push",
        str(allocation_dir),
        "me/tiny-alloc",
        "--private",
        "--token",
        "fake",
        "--endpoint",
        fake_hub.url,
    ]
    assert main(argv) == 0
    assert "me/tiny-alloc" in capsys.readouterr().out
    assert "allocation.json" in fake_hub.files("me/tiny-alloc")
    assert fake_hub.repos["me/tiny-alloc"].private
    fake_hub.fail["commit"] = 403
    assert main([*argv[:2], "me/other", *argv[3:]]) == 1
    assert "error: Pushing the allocation" in capsys.readouterr().err


def test_show_reads_from_the_given_endpoint(
    allocation_dir: Path,
    fake_hub: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Regression: `evolkv show` had no --endpoint, so an allocation pushed with `evolkv push --endpoint` could not
    # be read back from the same (private) Hub.
    import huggingface_hub.constants as hf_constants

    assert main(["push", str(allocation_dir), "me/shown", "--token", "fake", "--endpoint", fake_hub.url]) == 0
    capsys.readouterr()
    # Nothing listens on the default endpoint now: only the explicit one can answer.
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert main(["show", "me/shown", "--token", "fake", "--endpoint", fake_hub.url]) == 0
    assert "layers: 3 | mean: 24 | total: 72" in capsys.readouterr().out


def test_push_uploads_an_edited_card_and_names_the_resolved_repo(
    allocation_dir: Path, fake_hub: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: `evolkv push` regenerated the card, so text the user added (as the publishing tutorial asks)
    # never reached the Hub, without a word.
    argv = ["push", str(allocation_dir), "bare-name", "--token", "fake", "--endpoint", fake_hub.url]
    assert main(argv) == 0  # an unedited card is regenerated for the repo
    out = capsys.readouterr().out
    assert "to user/bare-name:" in out and "uploaded as it is" not in out
    pushed = fake_hub.files("user/bare-name")
    assert b'EvolKVCache.from_pretrained("user/bare-name", model)' in pushed["README.md"]
    assert pushed["budgets.png"] == (allocation_dir / "budgets.png").read_bytes()
    card = allocation_dir / "README.md"
    card.write_text(card.read_text() + "\nOn our data it beats PyramidKV by 3 points.\n")
    assert main(argv) == 0
    assert "uploaded as it is" in capsys.readouterr().out
    pushed_card = fake_hub.files("user/bare-name")["README.md"].decode()
    assert "beats PyramidKV by 3 points" in pushed_card
    assert "<namespace>/<this-repo>" not in pushed_card and "user/bare-name" in pushed_card


def test_show_plot_reports_the_file_it_writes(
    allocation_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # matplotlib appends ".png" to a name without extension; the command printed the name as given.
    assert main(["show", str(allocation_dir), "--plot", str(tmp_path / "chart")]) == 0
    assert f"plot: {tmp_path / 'chart.png'}" in capsys.readouterr().out
    assert (tmp_path / "chart.png").is_file()


def test_search_end_to_end_with_config_and_resume(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import datasets

    data = tmp_path / "data.jsonl"
    datasets.Dataset.from_list(tiny_rows(3)).to_json(data)
    config = tmp_path / "search.yaml"
    config.write_text("target_budget: 16\ngroup_size: 2\npopulation_size: 3\ngenerations_per_group: 1\n")
    out = tmp_path / "run"
    argv = [
        "search", "--model", str(tiny_checkpoint), "--dataset", str(data), "--metric", "edit_sim",
        "--config", str(config), "--window-size", "8", "--output-dir", str(out), "--disable-tqdm", "true",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    allocation = BudgetAllocation.from_pretrained(out / "allocation")
    assert allocation.total == 16 * 3 and allocation.window_size == 8
    assert "mean: 16" in printed
    # A second run into the same directory must not overwrite it silently...
    assert main(argv) == 1
    assert "not empty" in capsys.readouterr().err
    # ...while --resume continues from the checkpoints (here: already complete).
    assert main([*argv, "--resume"]) == 0
    # Bad settings are user errors.
    bad = tmp_path / "bad.json"
    bad.write_text('{"target_budget": 16, "no_such_field": 1}')
    assert main([*argv[:-4], "--config", str(bad), "--output-dir", str(tmp_path / "x")]) == 1
    assert "no_such_field" in capsys.readouterr().err


def test_search_task_held_out_samples_span_every_depth(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: --task with --eval-samples split one generation by position, so the search set held only
    the shallow needles and the held-out set only the deep ones; --eval-dataset was silently dropped."""
    pytest.importorskip("long_context_eval", reason="task data not installed")
    import evolkv_hf.search

    seen: dict[str, Any] = {}

    class Captured(Exception):
        pass

    def capture(model: Any, args: Any, train: Any, *, eval_dataset: Any = None, **kwargs: Any) -> Any:
        seen.update(train=train, held_out=eval_dataset)
        raise Captured

    monkeypatch.setattr(evolkv_hf.search, "BudgetSearcher", capture)
    argv = [
        "search", "--model", str(tiny_checkpoint), "--task", "niah_single", "--context-length", "256",
        "--num-samples", "3", "--eval-samples", "3", "--target-budget", "16", "--window-size", "8",
        "--output-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    assert main(argv) == 1  # the command line reports the exception that stopped it before the search
    assert "Captured" in capsys.readouterr().err
    assert list(seen["train"]["depth"]) == list(seen["held_out"]["depth"]) == [0.0, 0.5, 1.0]
    assert list(seen["held_out"]["index"]) == [3, 4, 5]
    assert main([*argv, "--eval-dataset", str(tmp_path / "held_out.jsonl")]) == 1
    assert "--eval-dataset is the held-out set of a --dataset search" in capsys.readouterr().err


def test_search_num_samples_applies_to_a_dataset_and_optional_ints_take_none(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: with --dataset, --num-samples was silently ignored (every row was searched), --eval-samples
    did nothing, and `int | None` settings could not be set back to None from the command line."""
    import datasets

    data = tmp_path / "data.jsonl"
    datasets.Dataset.from_list(tiny_rows(4)).to_json(data)
    out = tmp_path / "run"
    argv = [
        "search", "--model", str(tiny_checkpoint), "--dataset", str(data), "--metric", "edit_sim",
        "--target-budget", "16", "--group-size", "3", "--population-size", "2", "--generations-per-group", "1",
        "--window-size", "8", "--output-dir", str(out), "--disable-tqdm", "true",
    ]  # fmt: skip
    assert main([*argv, "--num-samples", "2", "--save-total-limit", "none"]) == 0
    assert BudgetAllocation.from_pretrained(out / "allocation").search_num_samples == 2
    capsys.readouterr()
    assert main([*argv[:-4], "--output-dir", str(tmp_path / "x"), "--eval-samples", "2"]) == 1
    assert "--eval-dataset" in capsys.readouterr().err
    assert main([*argv, "--save-total-limit", "few"]) == 2
    assert "integer or 'none'" in capsys.readouterr().err


def test_search_flags_keep_their_types_after_hf_argument_parser_rewrote_the_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: the flags' types were read from ``field.type``, which ``HfArgumentParser(SearchArguments)``
    rewrites in place (``int | None`` becomes ``int``), so after it ``--save-total-limit none`` was refused."""
    for field in dataclasses.fields(
        SearchArguments
    ):  # what HfArgumentParser leaves behind, undone after the test
        monkeypatch.setattr(field, "type", str(field.type).replace(" | None", ""))
    common = ["search", "--demo", "--task", "niah_single", "--output-dir", "x"]
    namespace = cli.build_parser().parse_args(
        [
            *common,
            "--save-total-limit",
            "none",
            "--report-to",
            "tensorboard,wandb",
            "--greater-is-better",
            "no",
        ]
    )
    assert namespace.search_save_total_limit is None
    assert namespace.search_report_to == ["tensorboard", "wandb"]
    assert namespace.search_greater_is_better is False
    namespace = cli.build_parser().parse_args([*common, "--initial-allocation", "runs/a/allocation"])
    assert namespace.search_initial_allocation == "runs/a/allocation"
