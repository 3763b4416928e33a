"""BudgetAllocation: arithmetic (property-tested), validation, local round trips, and real Hub pushes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hub_server import FakeHub
from huggingface_hub import ModelCard, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from evolkv_hf.allocation import (
    ALLOCATION_FILE,
    FORMAT_VERSION,
    AllocationPushError,
    BudgetAllocation,
)

PROPERTY = settings(max_examples=200, deadline=None)
SAVED_FILES = {"allocation.json", "README.md", "budgets.png"}


def full_allocation() -> BudgetAllocation:
    """An allocation with every provenance field set to a non-default value."""
    return BudgetAllocation(
        budgets=[300, 180, 96, 64, 48, 40],
        window_size=16,
        kernel_size=5,
        pooling="max",
        policy="snapkv",
        target_mean_budget=121.3333,
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        base_model_revision="0123456789abcdef0123456789abcdef01234567",
        task="needle-in-a-haystack-2k",
        metric_name="digit_accuracy",
        metric_value=0.583,
        scores={"uniform": 0.25, "pyramid": 0.31, "full_cache": 1.0},
        search_group_size=8,
        search_population_size=10,
        search_generations=15,
        search_lambda=0.3,
        search_gamma=0.2,
        search_sigma0=0.3,
        search_seed=1234,
        search_num_samples=30,
        extra={"query_aware": True, "chat_template": True, "notes": ["held-out: 0.55"]},
        package_versions={"evolkv_hf": "0.1.0", "transformers": "5.24.0", "torch": "2.13.0"},
        created_at="2025-09-10T12:00:00+00:00",
    )


def write_json(directory: Path, data: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ALLOCATION_FILE).write_text(json.dumps(data))
    return directory


# -- construction and validation ------------------------------------------------------------------------------
def test_defaults_and_automatic_provenance() -> None:
    alloc = BudgetAllocation(budgets=[64, 128])
    assert alloc.num_layers == 2 and alloc.total == 192 and alloc.mean == 96.0
    assert (alloc.window_size, alloc.kernel_size, alloc.pooling, alloc.policy) == (32, 7, "avg", "snapkv")
    assert alloc.format_version == FORMAT_VERSION
    assert {"evolkv_hf", "transformers", "torch", "huggingface_hub"} <= set(alloc.package_versions)
    assert alloc.created_at is not None
    created = datetime.fromisoformat(alloc.created_at)
    assert created.utcoffset() == timezone.utc.utcoffset(None)
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 60


def test_every_field_documents_itself() -> None:
    for f in dataclasses.fields(BudgetAllocation):
        assert f.metadata.get("help"), f"field {f.name} has no help metadata"


def test_is_immutable_and_copies_input() -> None:
    source = [10, 20]
    alloc = BudgetAllocation(budgets=source)
    source.append(30)
    assert alloc.budgets == [10, 20]
    with pytest.raises(dataclasses.FrozenInstanceError):
        alloc.window_size = 8  # type: ignore[misc]


@pytest.mark.parametrize(
    ("budgets", "error"),
    [
        ([], ValueError),
        ([64, 0], ValueError),
        ([64, -3], ValueError),
        ([64, 32.0], TypeError),
        ([64, True], TypeError),
        ([64, "32"], TypeError),
        ("64", TypeError),
        (None, TypeError),
        (64, TypeError),
    ],
)
def test_bad_budgets_are_rejected(budgets: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="budgets"):
        BudgetAllocation(budgets=budgets)


def test_budgets_from_numpy_and_torch_are_plain_ints() -> None:
    """Regression: arrays were refused, though EvolKVCache accepts them."""
    import numpy as np
    import torch

    for budgets in (np.array([64, 32]), torch.tensor([64, 32])):
        alloc = BudgetAllocation(budgets=budgets)
        assert alloc.budgets == [64, 32] and all(type(b) is int for b in alloc.budgets)
    with pytest.raises(TypeError, match="budgets"):
        BudgetAllocation(budgets=np.array([64.0, 32.0]))
    with pytest.raises(TypeError, match="budgets"):
        BudgetAllocation(budgets=np.array(64))


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"num_layers": 3}, ValueError, "num_layers is 3 but budgets has 2"),
        ({"window_size": 0}, ValueError, "window_size"),
        ({"kernel_size": 2.5}, TypeError, "kernel_size"),
        ({"pooling": "median"}, ValueError, "pooling"),
        ({"policy": ""}, TypeError, "policy"),
        ({"metric_value": float("nan")}, ValueError, "metric_value"),
        ({"metric_value": "high"}, TypeError, "metric_value"),
        ({"scores": {"uniform": "x"}}, TypeError, "scores"),
        ({"search_seed": -1}, ValueError, "search_seed"),
        ({"search_sigma0": 0.0}, ValueError, "search_sigma0"),
        ({"base_model": 3}, TypeError, "base_model"),
        ({"created_at": "yesterday"}, ValueError, "created_at"),
        ({"extra": {"fn": print}}, TypeError, "extra"),
        ({"package_versions": {"torch": 2}}, TypeError, "package_versions"),
        ({"format_version": FORMAT_VERSION + 1}, ValueError, "pip install -U evolkv-hf"),
    ],
)
def test_bad_fields_are_rejected(changes: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        BudgetAllocation(budgets=[64, 128], **changes)


def test_pooling_accepts_snapkv_spelling() -> None:
    assert BudgetAllocation(budgets=[8], pooling="maxpool").pooling == "max"


def test_validate_for_names_both_counts() -> None:
    alloc = BudgetAllocation.uniform(30, 128)
    alloc.validate_for(30)
    with pytest.raises(ValueError, match=r"30 per-layer budgets.*32 decoder layers"):
        alloc.validate_for(32)


def test_compression_ratio() -> None:
    alloc = BudgetAllocation(budgets=[64, 128, 192])
    assert alloc.compression_ratio(1024) == pytest.approx(0.875)
    assert alloc.compression_ratio(100) == pytest.approx(1 - (64 + 100 + 100) / 300)
    assert BudgetAllocation(budgets=[500]).compression_ratio(200) == 0.0
    with pytest.raises(ValueError, match="context_length"):
        alloc.compression_ratio(0)


# -- uniform / pyramid / for_model ----------------------------------------------------------------------------
def test_uniform_total_rounds_half_up() -> None:
    alloc = BudgetAllocation.uniform(3, 10.5)  # 31.5 tokens -> 32
    assert alloc.budgets == [11, 11, 10]
    assert alloc.target_mean_budget == 10.5
    with pytest.raises(ValueError, match="fewer than one token per layer"):
        BudgetAllocation.uniform(4, 0.1)


@PROPERTY
@given(
    num_layers=st.integers(1, 80),
    mean_budget=st.floats(1, 4096, allow_nan=False),
    beta=st.floats(1, 50),
    window=st.integers(1, 64),
)
def test_pyramid_properties(num_layers: int, mean_budget: float, beta: float, window: int) -> None:
    alloc = BudgetAllocation.pyramid(num_layers, mean_budget, beta=beta, window_size=window)
    total = int(mean_budget * num_layers + 0.5)
    assert abs(alloc.total - total) <= 1  # exact rule checked below; float noise aside
    assert alloc.total == BudgetAllocation.uniform(num_layers, mean_budget).total
    floor = min(window, alloc.total // num_layers)
    assert min(alloc.budgets) >= floor
    assert all(
        a >= b for a, b in zip(alloc.budgets, alloc.budgets[1:], strict=False)
    )  # decreasing bottom to top
    assert alloc.target_mean_budget == mean_budget


def test_pyramid_matches_pyramidkv_formula_and_beta_one_is_uniform() -> None:
    # 4 layers, mean 128, window 32, beta 20: top 32 + 96/20 = 36.8, bottom 32 + 192 - 4.8 = 219.2
    assert BudgetAllocation.pyramid(4, 128).budgets == [219, 158, 98, 37]
    assert BudgetAllocation.pyramid(4, 128, beta=1).budgets == [128] * 4
    assert BudgetAllocation.pyramid(1, 100).budgets == [100]
    assert min(BudgetAllocation.pyramid(8, 20).budgets) >= 20  # mean below window: floor capped at the mean


def test_pyramid_rejects_infeasible_floor_and_bad_beta() -> None:
    with pytest.raises(ValueError, match="floor"):
        BudgetAllocation.pyramid(4, 16, floor=32)
    with pytest.raises(ValueError, match="beta"):
        BudgetAllocation.pyramid(4, 128, beta=0.5)


def test_for_model_reads_text_config_and_base_model() -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=3, hidden_size=64, intermediate_size=128, num_attention_heads=4)
    assert BudgetAllocation.for_model(config, 64).budgets == [64, 64, 64]
    model = SimpleNamespace(config=config, name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    alloc = BudgetAllocation.for_model(model, 100, kind="pyramid")
    assert alloc.num_layers == 3 and alloc.total == 300
    assert alloc.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # Composite (e.g. vision-language) configs: the decoder's text config decides.
    text = SimpleNamespace(num_hidden_layers=5)
    composite = SimpleNamespace(get_text_config=lambda decoder=False: text, _name_or_path="/local/ckpt")
    alloc = BudgetAllocation.for_model(composite, 32)
    assert alloc.num_layers == 5 and alloc.base_model is None  # a local path is not a Hub id
    # Regression: the config's commit was recorded as the revision of another base_model given by the caller.
    config._commit_hash = "a" * 40
    model = SimpleNamespace(config=config, name_or_path="org/base-a")
    assert BudgetAllocation.for_model(model, 64).base_model_revision == "a" * 40
    other = BudgetAllocation.for_model(model, 64, base_model="org/other-b")
    assert (other.base_model, other.base_model_revision) == ("org/other-b", None)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        BudgetAllocation.for_model(SimpleNamespace(config=SimpleNamespace()), 32)
    with pytest.raises(ValueError, match="kind"):
        BudgetAllocation.for_model(config, 32, kind="cake")  # type: ignore[arg-type]


# -- rescale ------------------------------------------------------------------------------------------------
budget_lists = st.lists(st.integers(1, 4096), min_size=1, max_size=64)


@PROPERTY
@given(
    budgets=budget_lists,
    mean_budget=st.floats(1, 4096, allow_nan=False),
    floor=st.none() | st.integers(1, 256),
    cap=st.none() | st.integers(1, 8192),
)
def test_rescale_properties(
    budgets: list[int], mean_budget: float, floor: int | None, cap: int | None
) -> None:
    alloc = BudgetAllocation(budgets=budgets, window_size=32)
    num_layers = len(budgets)
    total = BudgetAllocation.uniform(num_layers, mean_budget).total
    floor_used = floor if floor is not None else min(32, total // num_layers)
    if total < floor_used * num_layers or (
        cap is not None and (cap < floor_used or total > cap * num_layers)
    ):
        with pytest.raises(ValueError, match=r"floor|cap"):
            alloc.rescale(mean_budget, floor=floor, cap=cap)
        return
    new = alloc.rescale(mean_budget, floor=floor, cap=cap)
    assert new.total == total
    assert all(b >= floor_used for b in new.budgets)
    if cap is not None:
        assert all(b <= cap for b in new.budgets)
    for i in range(num_layers):
        for j in range(num_layers):
            if budgets[i] > budgets[j]:
                assert new.budgets[i] >= new.budgets[j]
    assert new.target_mean_budget == mean_budget
    assert alloc.budgets == budgets  # the original is untouched


@PROPERTY
@given(budgets=budget_lists, data=st.data())
def test_rescale_is_idempotent_at_target(budgets: list[int], data: st.DataObject) -> None:
    alloc = BudgetAllocation(budgets=budgets)
    floor = data.draw(st.integers(1, min(budgets)))
    assert alloc.rescale(alloc.mean, floor=floor).budgets == budgets
    assume(min(budgets) >= 32)
    assert alloc.rescale(alloc.mean).budgets == budgets  # default floor (the window) is respected already


@settings(max_examples=50, deadline=None)
@given(budget=st.integers(1, 5000), mean_budget=st.floats(1, 5000))
def test_rescale_single_layer(budget: int, mean_budget: float) -> None:
    new = BudgetAllocation(budgets=[budget]).rescale(mean_budget)
    assert new.budgets == [BudgetAllocation.uniform(1, mean_budget).total]


def test_rescale_keeps_provenance_and_expands_proportionally() -> None:
    alloc = full_allocation()
    expanded = alloc.rescale(2 * alloc.mean)
    assert expanded.budgets == [2 * b for b in alloc.budgets]
    assert expanded.target_mean_budget == 2 * alloc.mean
    moved = {"budgets", "target_mean_budget", "metric_value", "scores", "extra", "created_at"}
    for name in {f.name for f in dataclasses.fields(alloc)} - moved:
        assert getattr(expanded, name) == getattr(alloc, name), name


@pytest.mark.parametrize("mean_budget", [2**31, 1e300, 10**5000], ids=["2**31", "1e300", "10**5000"])
def test_rescale_to_a_huge_target_names_the_target(mean_budget: float) -> None:
    # Regression: the error named a layer's budget (or Python's int-to-str limit), not the target.
    with pytest.raises(ValueError, match=r"mean_budget=.* is larger than the maximum budget"):
        BudgetAllocation(budgets=[8, 16]).rescale(mean_budget)


def test_huge_budget_error_is_readable() -> None:
    with pytest.raises(ValueError, match=r"budgets\[0\] = <a 16610-bit integer> is larger than the maximum"):
        BudgetAllocation(budgets=[10**5000])


def test_extra_is_stored_in_its_json_form(tmp_path: Path) -> None:
    # Regression: a tuple in extra came back from save/load as a list, so the two allocations differed.
    alloc = BudgetAllocation(budgets=[8, 16], extra={"pair": (1, 2), "nested": {"t": ("a",)}})
    assert alloc.extra == {"pair": [1, 2], "nested": {"t": ["a"]}}
    alloc.save_pretrained(tmp_path)
    assert BudgetAllocation.from_pretrained(tmp_path) == alloc


def test_rescale_moves_the_old_scores_out_of_the_way(tmp_path: Path) -> None:
    # Regression: a rescaled allocation kept metric_value and scores, so its card showed the scores measured at
    # mean 121 under "Target mean budget 243" as if measured there.
    alloc = full_allocation()
    expanded = alloc.rescale(2 * alloc.mean)
    assert expanded.metric_value is None and expanded.scores == {}
    assert expanded.created_at != alloc.created_at
    origin = expanded.extra["rescaled_from"]
    assert origin == {
        "mean_budget": alloc.mean,
        "target_mean_budget": alloc.target_mean_budget,
        "metric_name": "digit_accuracy",
        "metric_value": 0.583,
        "scores": alloc.scores,
        "created_at": alloc.created_at,
    }
    assert {k: v for k, v in expanded.extra.items() if k != "rescaled_from"} == alloc.extra
    # Rescaling again keeps the first origin (where the scores were measured); a round trip keeps it all.
    assert expanded.rescale(alloc.mean * 3).extra["rescaled_from"] == origin
    expanded.save_pretrained(tmp_path)
    assert BudgetAllocation.from_pretrained(tmp_path) == expanded
    card = (tmp_path / "README.md").read_text()
    scores = card.split("## Scores")[1].split("##")[0]
    assert "No scores were recorded" in scores and "0.583" not in scores
    assert "## Rescaled from" in card and "| Score: digit_accuracy | 0.583 |" in card
    assert "| Score: pyramid | 0.31 |" in card and "rescaled_from" not in card
    # Budgets already at the target: nothing to move, the scores still describe them.
    same = alloc.rescale(alloc.mean)
    assert same.budgets == alloc.budgets and same.scores == alloc.scores and same.metric_value == 0.583


def test_rescale_never_drops_scores() -> None:
    # Scores measured after a rescale move on the next one, with the earlier origin kept inside.
    first = full_allocation().rescale(200)
    remeasured = dataclasses.replace(first, metric_value=0.9, scores={"eval_uniform": 0.4})
    again = remeasured.rescale(300).extra["rescaled_from"]
    assert again["metric_value"] == 0.9 and again["scores"] == {"eval_uniform": 0.4}
    assert again["mean_budget"] == 200 and again["rescaled_from"] == first.extra["rescaled_from"]
    # A user's own value under the key is kept too; an allocation without scores gets no origin record.
    own = BudgetAllocation(budgets=[64, 32], metric_value=0.5, extra={"rescaled_from": "run 7 of a sweep"})
    origin = own.rescale(96).extra["rescaled_from"]
    assert origin["metric_value"] == 0.5 and origin["rescaled_from"] == "run 7 of a sweep"
    assert BudgetAllocation.pyramid(4, 64).rescale(128).extra == {}


def test_rescale_clear_errors() -> None:
    alloc = BudgetAllocation(budgets=[100, 50, 10])
    with pytest.raises(ValueError, match="below the per-layer floor of 16"):
        alloc.rescale(12, floor=16)
    with pytest.raises(ValueError, match="above the per-layer cap of 64"):
        alloc.rescale(80, cap=64)
    with pytest.raises(ValueError, match="cap"):
        alloc.rescale(50, floor=40, cap=20)
    with pytest.raises(ValueError, match="mean_budget"):
        alloc.rescale(0)
    with pytest.raises(ValueError, match="finite"):
        alloc.rescale(float("inf"))
    assert alloc.rescale(8).budgets == [8, 8, 8]  # below the window: default floor capped at the mean


# -- local save / load ----------------------------------------------------------------------------------------
def test_directory_round_trip_preserves_every_field(tmp_path: Path) -> None:
    alloc = full_allocation()
    assert alloc.save_pretrained(tmp_path / "alloc") is None
    assert {p.name for p in (tmp_path / "alloc").iterdir()} == SAVED_FILES  # no config.json, no pickle
    loaded = BudgetAllocation.from_pretrained(tmp_path / "alloc")
    assert loaded == alloc
    for f in dataclasses.fields(alloc):
        assert getattr(loaded, f.name) == getattr(alloc, f.name), f.name
    assert BudgetAllocation.from_dict(alloc.to_dict()) == alloc
    data = json.loads((tmp_path / "alloc" / ALLOCATION_FILE).read_text())
    assert next(iter(data)) == "format_version" and data["budgets"] == alloc.budgets


def test_model_card_metadata_and_content(tmp_path: Path) -> None:
    alloc = full_allocation()
    alloc.save_pretrained(tmp_path, repo_id="me/smollm2-evolkv")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "evolkv_hf"
    assert {"kv-cache", "evolkv"} <= set(card.data.tags)
    assert card.data.to_dict()["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    text = card.text
    assert 'cache = EvolKVCache.from_pretrained("me/smollm2-evolkv", model)' in text
    assert "model.generate(**inputs, cache=cache)" in text
    assert "| digit_accuracy | 0.583 |" in text and "| uniform | 0.25 |" in text
    assert "| 5 | 40 |" in text  # per-layer table, last layer
    assert "![Per-layer budgets](budgets.png)" in text
    bare = BudgetAllocation(budgets=[8, 8], base_model="/some/local/path")
    bare_card = bare.generate_model_card()
    assert "base_model" not in bare_card.data.to_dict()  # only Hub ids go into the metadata
    assert "No scores were recorded" in bare_card.text


def test_plot_uses_a_standalone_figure() -> None:
    import matplotlib
    from matplotlib.figure import Figure

    backend = matplotlib.get_backend()
    alloc = BudgetAllocation(budgets=[30, 20, 10])
    fig = alloc.plot()
    assert isinstance(fig, Figure)
    (axes,) = fig.axes
    assert [patch.get_height() for patch in axes.patches] == [30, 20, 10]  # type: ignore[attr-defined]
    assert [list(line.get_ydata()) for line in axes.lines] == [[20.0, 20.0]]  # type: ignore[arg-type]  # mean
    assert matplotlib.get_backend() == backend


def test_import_is_light() -> None:
    # Load the subpackage without the package __init__ (which imports torch for the cache): fast and focused.
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('evolkv_hf'); pkg.__path__ = [{str(Path(__file__).parents[1] / 'evolkv_hf')!r}]\n"
        "sys.modules['evolkv_hf'] = pkg\n"
        "import evolkv_hf.allocation\n"
        "print(sorted(m for m in ('matplotlib', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_silent_overwrite(tmp_path: Path) -> None:
    first, second = BudgetAllocation(budgets=[10, 20]), BudgetAllocation(budgets=[20, 10])
    first.save_pretrained(tmp_path)
    first.save_pretrained(tmp_path)  # same allocation again: fine
    with pytest.raises(FileExistsError, match="overwrite=True"):
        second.save_pretrained(tmp_path)
    assert BudgetAllocation.from_pretrained(tmp_path) == first
    second.save_pretrained(tmp_path, overwrite=True)
    assert BudgetAllocation.from_pretrained(tmp_path) == second
    other = tmp_path / "model_dir"
    other.mkdir()
    (other / "README.md").write_text("# somebody's model card")
    with pytest.raises(FileExistsError, match=r"README\.md"):
        first.save_pretrained(other)
    assert (other / "README.md").read_text() == "# somebody's model card"


def test_a_hand_edited_card_of_the_same_allocation_is_not_replaced(tmp_path: Path) -> None:
    """Regression: saving the same allocation again silently rewrote a README.md edited by hand."""
    alloc = BudgetAllocation(budgets=[10, 20], task="niah_single")
    alloc.save_pretrained(tmp_path)
    alloc.save_pretrained(tmp_path)  # unchanged files: saving again is still fine
    edited = (tmp_path / "README.md").read_text() + "\n## Notes\nMeasured on my data.\n"
    (tmp_path / "README.md").write_text(edited)
    with pytest.raises(FileExistsError, match=r"README\.md differs .*overwrite=True"):
        alloc.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == edited
    with pytest.raises(FileExistsError, match="edited by hand"):
        alloc.save_pretrained(tmp_path, repo_id="me/other")
    alloc.save_pretrained(tmp_path, overwrite=True)
    assert "Measured on my data" not in (tmp_path / "README.md").read_text()


def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = BudgetAllocation(budgets=[10, 20])
    first.save_pretrained(tmp_path)
    before = (tmp_path / ALLOCATION_FILE).read_bytes()

    def crash(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        BudgetAllocation(budgets=[20, 10]).save_pretrained(tmp_path, overwrite=True)
    monkeypatch.undo()
    assert (tmp_path / ALLOCATION_FILE).read_bytes() == before
    assert {p.name for p in tmp_path.iterdir()} == SAVED_FILES  # no temp files left behind


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"No allocation\.json"):
        BudgetAllocation.from_pretrained(tmp_path)
    (tmp_path / ALLOCATION_FILE).write_text('{"format_version": 1, "budgets": [1, 2')
    with pytest.raises(ValueError, match="not valid JSON"):
        BudgetAllocation.from_pretrained(tmp_path)
    (tmp_path / ALLOCATION_FILE).write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not valid JSON"):
        BudgetAllocation.from_pretrained(tmp_path)
    (tmp_path / ALLOCATION_FILE).write_text("[64, 64]")
    with pytest.raises(ValueError, match="JSON object"):
        BudgetAllocation.from_pretrained(tmp_path)
    with pytest.raises(NotADirectoryError):
        BudgetAllocation.from_pretrained(tmp_path / ALLOCATION_FILE)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"format_version": FORMAT_VERSION + 1}, ValueError, "newer|reads up to"),
        ({"format_version": "1"}, TypeError, "format_version"),
        ({"format_version": None}, TypeError, "format_version"),
        ({"budgets": [64, 0]}, ValueError, r"budgets\[1\]"),
        ({"budgets": [64, 12.5]}, TypeError, r"budgets\[1\]"),
        ({"budgets": [64, 64.0]}, TypeError, r"budgets\[1\]"),
        ({"budgets": [64, True]}, TypeError, r"budgets\[1\]"),
        ({"budgets": {"0": 64}}, TypeError, "list of ints"),
        ({"num_layers": 3}, ValueError, "num_layers is 3 but budgets has 2"),
        ({"window_size": "32"}, TypeError, "window_size"),
    ],
)
def test_invalid_files_are_rejected(
    tmp_path: Path, changes: dict[str, Any], error: type[Exception], match: str
) -> None:
    data = {**BudgetAllocation(budgets=[64, 64]).to_dict(), **changes}
    write_json(tmp_path, data)
    with pytest.raises(error, match=match) as info:
        BudgetAllocation.from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value)  # says which file


@pytest.mark.parametrize(
    "newer",
    [
        {"budgets": {"layers": [1, 2]}},  # a reshaped field
        {"layer_budgets": [1, 2]},  # a renamed field
        {"budgets": [1, 2], "pooling": "snapkv-v2"},  # a new value
    ],
)
def test_newer_format_is_refused_before_its_fields_are_read(newer: dict[str, Any]) -> None:
    # Regression: the version was checked last, so a newer file failed on whichever field had changed.
    data = {"format_version": FORMAT_VERSION + 1, **newer}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even the "unknown fields" warning comes first
        with pytest.raises(ValueError, match="pip install -U evolkv-hf"):
            BudgetAllocation.from_dict(data)


def test_missing_required_keys(tmp_path: Path) -> None:
    write_json(tmp_path, {"budgets": [1, 2]})
    with pytest.raises(ValueError, match="format_version"):
        BudgetAllocation.from_pretrained(tmp_path)
    write_json(tmp_path, {"format_version": 1})
    with pytest.raises(ValueError, match="budgets"):
        BudgetAllocation.from_pretrained(tmp_path)


def test_unknown_keys_are_dropped_with_a_warning(tmp_path: Path) -> None:
    alloc = BudgetAllocation(budgets=[64, 32])
    write_json(tmp_path, {**alloc.to_dict(), "per_head_budgets": [[1, 2]], "zeta": 1})
    with pytest.warns(UserWarning, match=r"\['per_head_budgets', 'zeta'\]"):
        loaded = BudgetAllocation.from_pretrained(tmp_path)
    assert loaded == alloc


def test_missing_provenance_is_not_invented(tmp_path: Path) -> None:
    write_json(tmp_path, {"format_version": 1, "budgets": [8, 8]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = BudgetAllocation.from_pretrained(tmp_path)
    assert loaded.created_at is None and loaded.package_versions == {}


def test_neither_directory_nor_repo_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # never wait on the network here
    with pytest.raises(ValueError, match="neither an existing local directory nor a valid Hub repo id"):
        BudgetAllocation.from_pretrained(str(tmp_path / "does" / "not" / "exist"))
    with pytest.raises(FileNotFoundError, match="not an existing local directory either"):
        BudgetAllocation.from_pretrained("someone/not-cached", cache_dir=tmp_path / "cache")
    with pytest.raises(TypeError, match="Unexpected arguments"):
        BudgetAllocation.from_pretrained(tmp_path, map_location="cpu")


# -- Hub, through a real HTTP server --------------------------------------------------------------------------
def test_push_then_load_through_http(fake_hub: FakeHub, tmp_path: Path) -> None:
    alloc = full_allocation()
    commit_url = alloc.push_to_hub("me/smollm2-evolkv", token="fake", endpoint=fake_hub.url, private=True)
    assert commit_url.startswith(f"{fake_hub.url}/me/smollm2-evolkv/commit/")
    files = fake_hub.files("me/smollm2-evolkv")
    assert set(files) >= SAVED_FILES
    assert "config.json" not in files and not any(name.endswith((".pkl", ".bin", ".pt")) for name in files)
    assert json.loads(files[ALLOCATION_FILE]) == alloc.to_dict()
    assert b'EvolKVCache.from_pretrained("me/smollm2-evolkv", model)' in files["README.md"]
    assert files["budgets.png"].startswith(b"\x89PNG")
    # Regression: a repo id without namespace resolves to the user's; the card used to name the bare id.
    alloc.push_to_hub("bare-name", token="fake", endpoint=fake_hub.url)
    assert (
        b'EvolKVCache.from_pretrained("user/bare-name", model)'
        in fake_hub.files("user/bare-name")["README.md"]
    )
    assert fake_hub.repos["me/smollm2-evolkv"].private

    cache_dir = tmp_path / "cache"
    loaded = BudgetAllocation.from_pretrained(
        "me/smollm2-evolkv", token="fake", cache_dir=cache_dir, endpoint=fake_hub.url
    )
    assert loaded == alloc
    snapshot = snapshot_download(
        "me/smollm2-evolkv", cache_dir=cache_dir, endpoint=fake_hub.url, token="fake"
    )
    assert set(os.listdir(snapshot)) >= SAVED_FILES
    assert BudgetAllocation.from_pretrained(snapshot) == alloc

    # A second push is a new commit; the first stays loadable by revision.
    first_sha = commit_url.rsplit("/", 1)[-1]
    rescaled = alloc.rescale(256)
    rescaled.push_to_hub("me/smollm2-evolkv", token="fake", endpoint=fake_hub.url)
    kwargs: dict[str, Any] = {"token": "fake", "cache_dir": cache_dir, "endpoint": fake_hub.url}
    assert BudgetAllocation.from_pretrained("me/smollm2-evolkv", **kwargs) == rescaled
    assert BudgetAllocation.from_pretrained("me/smollm2-evolkv", revision=first_sha, **kwargs) == alloc
    assert fake_hub.unhandled == []


def test_save_pretrained_with_push(fake_hub: FakeHub, tmp_path: Path) -> None:
    alloc = BudgetAllocation.pyramid(4, 64, task="demo")
    url = alloc.save_pretrained(tmp_path / "me-alloc", repo_id="me/alloc", push_to_hub=True, token="fake")
    assert url is not None and "/me/alloc/commit/" in url  # default endpoint patched to the fake Hub
    assert BudgetAllocation.from_pretrained(tmp_path / "me-alloc") == alloc
    assert json.loads(fake_hub.files("me/alloc")[ALLOCATION_FILE]) == alloc.to_dict()
    assert (tmp_path / "me-alloc" / "README.md").read_bytes() == fake_hub.files("me/alloc")["README.md"]


def test_generated_cards_may_be_rewritten_edited_ones_may_not(fake_hub: FakeHub, tmp_path: Path) -> None:
    # Regression: after save_pretrained(push_to_hub=True) rewrote the local card for the resolved repo id, the
    # same call again raised "README.md differs from the model card this save would write".
    from evolkv_hf.allocation.model_card import is_unedited_card

    alloc = BudgetAllocation.pyramid(4, 64, task="demo")
    directory = tmp_path / "name"
    kwargs: dict[str, Any] = {"push_to_hub": True, "token": "fake", "endpoint": fake_hub.url}
    alloc.save_pretrained(directory, **kwargs)
    alloc.save_pretrained(directory, **kwargs)  # the generated card for "user/name" is rewritten
    card = directory / "README.md"
    assert is_unedited_card(card.read_text())
    card.write_text(card.read_text().replace("## Usage", "## Usage (see our paper)"))
    assert not is_unedited_card(card.read_text())
    with pytest.raises(FileExistsError, match="edited by hand"):
        alloc.save_pretrained(directory)


def test_save_pretrained_with_push_names_the_resolved_repo_in_the_local_card(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    # Regression: without repo_id the local card kept the placeholder repo id while the pushed card named
    # "user/<folder>", so the snippet in the saved README.md did not load anything.
    alloc = BudgetAllocation.pyramid(4, 64, task="demo")
    directory = tmp_path / "my-alloc"
    url = alloc.save_pretrained(directory, push_to_hub=True, token="fake", endpoint=fake_hub.url)
    assert url is not None and "/user/my-alloc/commit/" in url
    local_card = (directory / "README.md").read_bytes()
    assert b'EvolKVCache.from_pretrained("user/my-alloc", model)' in local_card
    assert local_card == fake_hub.files("user/my-alloc")["README.md"]
    # Saving the same allocation again for the same repo is the no-op it was.
    alloc.save_pretrained(directory, repo_id="user/my-alloc")


def test_resaving_keeps_a_hand_made_chart(tmp_path: Path) -> None:
    # Regression: a second save of the same allocation refused an edited README.md but silently replaced an
    # edited budgets.png.
    alloc = BudgetAllocation.pyramid(4, 64)
    alloc.save_pretrained(tmp_path)
    alloc.save_pretrained(tmp_path)  # unchanged files: allowed
    (tmp_path / "budgets.png").write_bytes(b"\x89PNG my own chart")
    with pytest.raises(FileExistsError, match=r"budgets\.png differs from the chart"):
        alloc.save_pretrained(tmp_path)
    assert (tmp_path / "budgets.png").read_bytes() == b"\x89PNG my own chart"
    alloc.save_pretrained(tmp_path, overwrite=True)
    assert (tmp_path / "budgets.png").read_bytes() != b"\x89PNG my own chart"


def test_a_push_without_a_chart_removes_the_old_one(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: without matplotlib nothing new was drawn, and the repo kept the chart of the previous push,
    # which showed other budgets.
    from evolkv_hf.allocation import allocation as allocation_module

    BudgetAllocation(budgets=[40, 20, 12]).push_to_hub("me/a", token="fake", endpoint=fake_hub.url)
    assert "budgets.png" in fake_hub.files("me/a")
    monkeypatch.setattr(allocation_module, "_can_plot", lambda: False)
    BudgetAllocation(budgets=[12, 20, 40]).push_to_hub("me/a", token="fake", endpoint=fake_hub.url)
    assert "budgets.png" not in fake_hub.files("me/a")


def test_missing_repo_and_missing_file_on_hub(fake_hub: FakeHub, tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"token": "fake", "cache_dir": tmp_path, "endpoint": fake_hub.url}
    with pytest.raises(RepositoryNotFoundError, match="not an existing local directory either"):
        BudgetAllocation.from_pretrained("me/nothing-here", **kwargs)
    from huggingface_hub import HfApi

    HfApi(endpoint=fake_hub.url, token="fake").create_repo("me/empty")
    with pytest.raises(FileNotFoundError, match=r"allocation\.json"):
        BudgetAllocation.from_pretrained("me/empty", **kwargs)


@pytest.mark.parametrize("failure", ["commit", "create", "down"])
def test_failed_push_keeps_local_save(fake_hub: FakeHub, tmp_path: Path, failure: str) -> None:
    endpoint = fake_hub.url
    if failure == "commit":
        fake_hub.fail["commit"] = 403
    elif failure == "create":
        fake_hub.fail["create"] = 500
    else:
        down = FakeHub().start()
        endpoint = down.url
        down.stop()  # nothing listens there any more
    alloc = full_allocation()
    directory = tmp_path / "alloc"
    with pytest.raises(AllocationPushError, match="Nothing local was changed") as info:
        alloc.save_pretrained(
            directory, repo_id="me/alloc", push_to_hub=True, token="fake", endpoint=endpoint
        )
    assert info.value.__cause__ is not None
    assert {p.name for p in directory.iterdir()} == SAVED_FILES
    assert BudgetAllocation.from_pretrained(directory) == alloc
    assert "me/alloc" not in fake_hub.repos or ALLOCATION_FILE not in fake_hub.files("me/alloc")
