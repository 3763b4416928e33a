"""Untrusted input: allocation files from any Hub repo or directory, repo ids, checkpoint paths.

An ``allocation.json`` is parsed as strict JSON against the schema of ``BudgetAllocation`` (types, ranges,
lengths) and refused with an error that names the file otherwise. Nothing is ever unpickled from a repo:
allocations are JSON only, and a search's optimiser pickle is only read from a local checkpoint directory.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
from hub_server import FakeHub
from huggingface_hub import HfApi
from test_search import make_searcher
from tiny_models import tiny_model

from evolkv_hf import BudgetAllocation, EvolKVCache
from evolkv_hf.allocation import ALLOCATION_FILE
from evolkv_hf.allocation.allocation import MAX_LAYERS, MAX_STRING_LENGTH, MAX_TOKENS
from evolkv_hf.allocation.hub import MAX_FILE_BYTES
from evolkv_hf.search.checkpoint import OPTIMIZER_FILE, STATE_FILE, CheckpointError, checkpoint_dirs

ALLOCATION_PACKAGE = Path(__file__).parent.parent / "evolkv_hf" / "allocation"
VALID = BudgetAllocation(budgets=[8, 16], window_size=4, created_at="2025-01-01T00:00:00+00:00").to_dict()


def hub_requests(hub: FakeHub, *, unhandled: bool = False) -> list[tuple[str, str]]:
    """What the client asked the Hub, without huggingface_hub's own once-a-day agent-registry lookup."""
    requests = hub.unhandled if unhandled else hub.requests
    return [(method, path) for method, path in requests if not path.startswith("/api/agent-harnesses")]


def valid_json(**changes: Any) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


def raw_json(body: str) -> bytes:
    return ('{"format_version": 1, ' + body + "}").encode()


class Touch:
    """Unpickling this creates ``path``: a harmless stand-in for a malicious pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


# (id, file content, error type, message pattern)
CORRUPT = [
    # wrong types
    ("budgets-string", valid_json(budgets="8,16"), TypeError, "budgets must be a list of ints"),
    ("budgets-object", valid_json(budgets={"0": 8}), TypeError, "budgets must be a list of ints"),
    ("budgets-null", valid_json(budgets=None), TypeError, "budgets must be a list of ints"),
    ("budgets-nested", valid_json(budgets=[[8], [16]]), TypeError, r"budgets\[0\] must be an int"),
    ("budgets-float", valid_json(budgets=[8, 16.0]), TypeError, r"budgets\[1\] must be an int"),
    ("budgets-bool", valid_json(budgets=[True, 16]), TypeError, r"budgets\[0\] must be an int"),
    ("budgets-string-item", valid_json(budgets=["8", 16]), TypeError, r"budgets\[0\] must be an int"),
    ("window-string", valid_json(window_size="4"), TypeError, "window_size must be an integer"),
    ("kernel-float", valid_json(kernel_size=7.5), TypeError, "kernel_size must be an integer"),
    ("pooling-int", valid_json(pooling=3), ValueError, "pooling must be one of"),
    ("policy-object", valid_json(policy={"name": "snapkv"}), TypeError, "policy must be a non-empty string"),
    ("task-list", valid_json(task=["a"]), TypeError, "task must be a string"),
    ("scores-list", valid_json(scores=[1, 2]), TypeError, "scores must be a dict"),
    ("scores-string-value", valid_json(scores={"uniform": "0.4"}), TypeError, r"scores\['uniform'\]"),
    ("extra-list", valid_json(extra=[1]), TypeError, "extra must be a dict"),
    ("versions-nested", valid_json(package_versions={"torch": {"v": 2}}), TypeError, "package_versions"),
    ("format-version-string", valid_json(format_version="1"), TypeError, "format_version"),
    ("format-version-float", valid_json(format_version=1.0), TypeError, "format_version"),
    ("not-an-object", b"[8, 16]", ValueError, "JSON object"),
    ("a-string", b'"budgets"', ValueError, "JSON object"),
    ("missing-budgets", b'{"format_version": 1}', ValueError, "Missing 'budgets'"),
    ("missing-version", b'{"budgets": [8]}', ValueError, "Missing 'format_version'"),
    # ranges
    ("budget-zero", valid_json(budgets=[8, 0]), ValueError, r"budgets\[1\] = 0"),
    ("budget-negative", valid_json(budgets=[-5, 16]), ValueError, r"budgets\[0\] = -5"),
    ("budget-huge", valid_json(budgets=[8, 2**63]), ValueError, r"budgets\[1\] .* larger than the maximum"),
    ("budget-1e400", raw_json('"budgets": [1' + "0" * 400 + "]"), ValueError, "larger than the maximum"),
    ("window-zero", valid_json(window_size=0), ValueError, "window_size must be an integer >= 1"),
    ("window-huge", valid_json(window_size=10**30), ValueError, "window_size = .* larger than the maximum"),
    ("kernel-huge", valid_json(kernel_size=2**40), ValueError, "kernel_size = .* larger than the maximum"),
    ("num-layers-negative", valid_json(num_layers=-1), ValueError, "num_layers must be an integer >= 0"),
    (
        "num-layers-mismatch",
        valid_json(num_layers=10**6),
        ValueError,
        "num_layers is 1000000 but budgets has 2",
    ),
    ("format-version-future", valid_json(format_version=10**30), ValueError, "reads up to version"),
    ("seed-negative", valid_json(search_seed=-1), ValueError, "search_seed must be an integer >= 0"),
    ("sigma-zero", valid_json(search_sigma0=0), ValueError, "search_sigma0 must be > 0"),
    ("created-at-junk", valid_json(created_at="yesterday"), ValueError, "ISO 8601"),
    ("integer-5000-digits", raw_json('"budgets": [' + "9" * 5000 + "]"), ValueError, "not valid JSON.*4300"),
    # NaN and infinities are not JSON
    ("budget-nan", raw_json('"budgets": [NaN, 8]'), ValueError, "NaN is not a JSON number"),
    ("metric-infinity", raw_json('"budgets": [8], "metric_value": Infinity'), ValueError, "Infinity is not"),
    ("score-minus-infinity", raw_json('"budgets": [8], "scores": {"a": -Infinity}'), ValueError, "-Infinity"),
    ("extra-nan", raw_json('"budgets": [8], "extra": {"x": [NaN]}'), ValueError, "NaN is not"),
    (
        "float-overflow",
        raw_json('"budgets": [8], "metric_value": 1e400'),
        ValueError,
        "metric_value must be finite",
    ),
    (  # Regression: float() of a 401-digit integer raised a bare OverflowError that named no file.
        "integer-overflows-a-float",
        raw_json('"budgets": [8], "metric_value": 1' + "0" * 400),
        ValueError,
        "metric_value must be finite",
    ),
    # lengths
    (
        "a-million-layers",
        json.dumps({"format_version": 1, "budgets": [8] * 10**6}).encode(),
        ValueError,
        f"1000000 entries; at most {MAX_LAYERS}",
    ),
    (
        "huge-task-string",
        valid_json(task="x" * 10**6),
        ValueError,
        f"task has 1000000 characters; at most {MAX_STRING_LENGTH}",
    ),
    ("huge-base-model", valid_json(base_model="y" * (MAX_STRING_LENGTH + 1)), ValueError, "base_model has"),
    ("huge-policy", valid_json(policy="p" * 10**5), ValueError, "policy has"),
    (
        "nested-10000-deep",
        raw_json('"budgets": [8], "extra": {"x": ' + "[" * 10**4 + "]" * 10**4 + "}"),
        ValueError,
        "nested too deeply",
    ),
    (
        "bigger-than-16MiB",
        valid_json(extra={"blob": "z" * (MAX_FILE_BYTES + 10)}),
        ValueError,
        "larger than 16 MiB",
    ),
    # not JSON at all, or not strict JSON
    ("empty", b"", ValueError, "not valid JSON"),
    ("truncated", valid_json()[:40], ValueError, "not valid JSON"),
    ("non-utf8", b'{"format_version": 1, "budgets": [8], "task": "\xff\xfe"}', ValueError, "utf-8"),
    ("utf16", valid_json().decode().encode("utf-16"), ValueError, "not valid JSON"),
    ("nul-bytes", b"\x00" * 64, ValueError, "not valid JSON"),
    ("pickle", pickle.dumps({"format_version": 1, "budgets": [8]}), ValueError, "not valid JSON"),
    ("duplicate-key", raw_json('"budgets": [8], "budgets": [4096]'), ValueError, "duplicate key 'budgets'"),
    ("javascript", b"{format_version: 1, budgets: [8]}", ValueError, "not valid JSON"),
]


def corrupt_params() -> list[Any]:
    return [pytest.param(content, error, match, id=name) for name, content, error, match in CORRUPT]


def check_refusal(info: pytest.ExceptionInfo, path: Path) -> None:
    message = str(info.value)
    assert str(path) in message, "the error names the file"
    assert len(message) < 2000, "the error does not echo a huge field back"


@pytest.mark.parametrize(("content", "error", "match"), corrupt_params())
def test_corrupt_local_allocation_is_refused(tmp_path: Path, content: bytes, error: type, match: str) -> None:
    (tmp_path / ALLOCATION_FILE).write_bytes(content)
    with pytest.raises(error, match=match) as info:
        BudgetAllocation.from_pretrained(tmp_path)
    check_refusal(info, tmp_path / ALLOCATION_FILE)


def test_corrupt_allocations_from_a_hub_repo_are_refused(fake_hub: FakeHub, tmp_path: Path) -> None:
    """The same battery served over HTTP by the loopback Hub: one repo per file (the 16 MiB one excepted)."""
    api = HfApi(endpoint=fake_hub.url, token="fake")
    for name, content, error, match in CORRUPT:
        if len(content) > 2**20:
            continue  # the huge ones are covered locally; uploading them only slows the test down
        folder = tmp_path / "upload" / name
        folder.mkdir(parents=True)
        (folder / ALLOCATION_FILE).write_bytes(content)
        api.create_repo(f"evil/{name}")
        api.upload_folder(repo_id=f"evil/{name}", folder_path=folder)
        with pytest.raises(error, match=match) as info:
            BudgetAllocation.from_pretrained(
                f"evil/{name}", cache_dir=tmp_path / "cache", token="fake", endpoint=fake_hub.url
            )
        assert ALLOCATION_FILE in str(info.value) and len(str(info.value)) < 2000, name
    assert hub_requests(fake_hub, unhandled=True) == []


def test_unknown_fields_are_dropped_with_a_bounded_warning(tmp_path: Path) -> None:
    extra_keys = {f"junk{i:03d}" + "k" * 500: "v" * 1000 for i in range(100)}
    (tmp_path / ALLOCATION_FILE).write_bytes(valid_json(**extra_keys))
    with pytest.warns(UserWarning, match="and 80 more") as record:
        loaded = BudgetAllocation.from_pretrained(tmp_path)
    assert loaded.budgets == [8, 16]
    assert len(str(record[0].message)) < 3000


def test_nested_junk_in_extra_is_plain_json(tmp_path: Path) -> None:
    """Free-form provenance stays data: nested containers are kept as JSON, never interpreted."""
    junk = {
        "a": [[[{"b": None, "c": [1, 2.5, "x", True]}]]],
        "__class__": "os.system",
        "py/object": "os.system",
    }
    (tmp_path / ALLOCATION_FILE).write_bytes(valid_json(extra=junk))
    assert BudgetAllocation.from_pretrained(tmp_path).extra == junk


def test_limits_accept_the_boundary_values(tmp_path: Path) -> None:
    edge = BudgetAllocation(
        budgets=[MAX_TOKENS] + [1] * (MAX_LAYERS - 1),
        window_size=MAX_TOKENS,
        kernel_size=MAX_TOKENS,
        task="t" * MAX_STRING_LENGTH,
    )
    (tmp_path / ALLOCATION_FILE).write_text(json.dumps(edge.to_dict()))
    assert BudgetAllocation.from_pretrained(tmp_path) == edge
    assert edge.mean > 0  # no float overflow at the limits


# -- what a local directory may hold --------------------------------------------------------------------------------
def test_symlink_to_etc_passwd_is_refused_without_leaking_it(tmp_path: Path) -> None:
    if not Path("/etc/passwd").is_file():
        pytest.skip("no /etc/passwd here")
    (tmp_path / ALLOCATION_FILE).symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match="not valid JSON") as info:
        BudgetAllocation.from_pretrained(tmp_path)
    assert "root:" not in str(info.value)
    first_line = Path("/etc/passwd").read_text().splitlines()[0]
    assert first_line not in str(info.value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom", "directory", "dangling", "fifo"])
def test_allocation_that_is_not_a_regular_file_is_refused(tmp_path: Path, target: str) -> None:
    """Reading never hangs or grows without bound (a device, a FIFO) and never follows a dangling link."""
    path = tmp_path / ALLOCATION_FILE
    if target == "directory":
        path.mkdir()
    elif target == "dangling":
        path.symlink_to(tmp_path / "nowhere.json")
    elif target == "fifo":
        os.mkfifo(path)
    else:
        if not Path(target).exists():
            pytest.skip(f"no {target} here")
        path.symlink_to(target)
    with pytest.raises(ValueError, match="not a regular file") as info:
        BudgetAllocation.from_pretrained(tmp_path)
    assert str(path) in str(info.value)


def test_symlink_to_a_valid_file_elsewhere_still_loads(tmp_path: Path) -> None:
    """Hub snapshot directories are symlinks into the blob store: following links to regular files is needed."""
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "abc123").write_bytes(valid_json())
    (tmp_path / "snapshot").mkdir()
    (tmp_path / "snapshot" / ALLOCATION_FILE).symlink_to(tmp_path / "blobs" / "abc123")
    assert BudgetAllocation.from_pretrained(tmp_path / "snapshot").budgets == [8, 16]


# -- never unpickle -------------------------------------------------------------------------------------------------
def test_allocation_package_never_unpickles() -> None:
    """No module of evolkv_hf.allocation imports a deserializer that can execute code, or calls .load/.loads
    on anything but json."""
    forbidden = {
        "pickle",
        "_pickle",
        "cPickle",
        "dill",
        "cloudpickle",
        "joblib",
        "marshal",
        "shelve",
        "torch",
        "numpy",
        "safetensors",
        "yaml",
    }
    for source in sorted(ALLOCATION_PACKAGE.glob("*.py")):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                names = []
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{source.name} imports {name}"
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("load", "loads", "unsafe_load", "full_load")
            ):
                owner = node.func.value
                assert isinstance(owner, ast.Name) and owner.id == "json", (
                    f"{source.name}:{node.lineno} calls .{node.func.attr} on something other than json"
                )


def write_malicious_repo(folder: Path, marker: Path) -> None:
    """A valid allocation.json next to pickles that would create ``marker`` if anything unpickled them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ALLOCATION_FILE).write_bytes(valid_json())
    payload = pickle.dumps(Touch(marker))
    for name in ("optimizer.pkl", "pytorch_model.bin", "training_args.bin", "allocation.pt", "budgets.npy"):
        (folder / name).write_bytes(payload)
    (folder / "config.json").write_text('{"auto_map": {"AutoConfig": "evil.Config"}}')


def test_pickles_next_to_a_local_allocation_are_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    write_malicious_repo(tmp_path / "repo", marker)
    assert BudgetAllocation.from_pretrained(tmp_path / "repo").budgets == [8, 16]
    assert not marker.exists()


def test_pickles_in_a_hub_repo_are_never_downloaded_or_loaded(fake_hub: FakeHub, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    write_malicious_repo(tmp_path / "upload", marker)
    api = HfApi(endpoint=fake_hub.url, token="fake")
    api.create_repo("evil/allocation")
    api.upload_folder(repo_id="evil/allocation", folder_path=tmp_path / "upload")
    fake_hub.requests.clear()
    kwargs: dict[str, Any] = {"cache_dir": tmp_path / "cache", "token": "fake"}
    loaded = BudgetAllocation.from_pretrained("evil/allocation", endpoint=fake_hub.url, **kwargs)
    assert loaded.budgets == [8, 16]
    cache = EvolKVCache.from_pretrained("evil/allocation", tiny_model("llama", num_layers=2), **kwargs)
    assert cache.budgets == [8, 16]
    fetched = [path for _, path in hub_requests(fake_hub)]
    assert fetched and all(path.endswith(ALLOCATION_FILE) for path in fetched), fetched
    assert not marker.exists()


# -- repo ids and paths ---------------------------------------------------------------------------------------------
BAD_IDS = [
    "",
    "a/b/c",
    "../../etc",
    "x" * 10_000,
    "user/" + "r" * 200,
    "https://huggingface.co/user/repo",
    "hf://user/repo",
    "user/repo@main",
    "user/repo\x00",
    "~/allocations",
    "user/../repo",
    "-user/repo",
]


@pytest.mark.parametrize("repo_id", BAD_IDS, ids=lambda value: repr(value)[:30])
def test_invalid_repo_ids_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repo_id: str) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # never wait on the network here
    monkeypatch.chdir(tmp_path)  # nothing relative to here exists: "../../etc" is not a local directory
    with pytest.raises(ValueError, match="neither an existing local directory nor a valid Hub repo id"):
        BudgetAllocation.from_pretrained(repo_id, cache_dir=tmp_path / "cache")


def test_invalid_repo_ids_send_no_request(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for repo_id in BAD_IDS:
        with pytest.raises(ValueError, match="nor a valid Hub repo id"):
            BudgetAllocation.from_pretrained(repo_id, cache_dir=tmp_path / "cache", endpoint=fake_hub.url)
    assert hub_requests(fake_hub) == []


def test_a_path_to_a_file_is_refused_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    escape = "../" * len(tmp_path.parts) + "etc/passwd"
    if not Path(escape).is_file():
        pytest.skip("no /etc/passwd here")
    with pytest.raises(NotADirectoryError, match="is a file; pass the directory") as info:
        BudgetAllocation.from_pretrained(escape)
    assert "root:" not in str(info.value)


def test_a_relative_path_that_exists_is_a_local_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``../x`` that exists is the user's own directory: only its allocation.json is read."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(FileNotFoundError, match=r"No allocation\.json in directory '\.\./outside'"):
        BudgetAllocation.from_pretrained("../outside")
    (tmp_path / "outside" / ALLOCATION_FILE).write_bytes(valid_json())
    assert BudgetAllocation.from_pretrained("../outside").budgets == [8, 16]


def test_revision_cannot_escape_the_cache(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = HfApi(endpoint=fake_hub.url, token="fake")
    api.create_repo("me/alloc")
    (tmp_path / "upload").mkdir()
    (tmp_path / "upload" / ALLOCATION_FILE).write_bytes(valid_json())
    api.upload_folder(repo_id="me/alloc", folder_path=tmp_path / "upload")
    cache = tmp_path / "cache"
    with pytest.raises(Exception, match=r"(?i)revision|not found|invalid"):
        BudgetAllocation.from_pretrained(
            "me/alloc", revision="../../../../escaped", cache_dir=cache, token="fake", endpoint=fake_hub.url
        )
    assert not (tmp_path / "escaped").exists() and not list(tmp_path.glob("**/escaped*"))


# -- search checkpoints: optimiser pickles only from a local directory ---------------------------------------------
@pytest.fixture
def searcher_factory(tmp_path: Path):
    return lambda **overrides: make_searcher(tmp_path / "search", **overrides)


@pytest.mark.parametrize(
    "resume",
    ["evil/checkpoint", "https://huggingface.co/evil/checkpoint", "hf://evil/checkpoint", "", "no/such/dir"],
    ids=["repo-id", "url", "hf-url", "empty", "missing-path"],
)
def test_resume_from_a_repo_or_url_is_refused(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, searcher_factory, resume: str
) -> None:
    # The repo exists on the Hub and holds a checkpoint whose optimiser pickle would run code.
    marker = tmp_path / "pwned"
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / STATE_FILE).write_text(json.dumps({"search_state": {}, "args": {}}))
    (folder / OPTIMIZER_FILE).write_bytes(pickle.dumps(Touch(marker)))
    api = HfApi(endpoint=fake_hub.url, token="fake")
    api.create_repo("evil/checkpoint")
    api.upload_folder(repo_id="evil/checkpoint", folder_path=folder)
    fake_hub.requests.clear()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"not an existing local directory.*never loaded from a Hub repo"
    ) as info:
        searcher_factory().search(resume_from_checkpoint=resume)
    assert repr(resume) in str(info.value)  # the value as given, not a normalised path
    assert hub_requests(fake_hub) == [] and not marker.exists()
    assert not (tmp_path / "search" / "run").exists()  # nothing was started


@pytest.mark.parametrize(
    "resume", [3, 1.5, ["checkpoint-1"], b"checkpoint-1"], ids=["int", "float", "list", "bytes"]
)
def test_resume_with_a_wrong_type_is_refused(searcher_factory, resume: Any) -> None:
    with pytest.raises(TypeError, match="resume_from_checkpoint takes True, None or the path"):
        searcher_factory().search(resume_from_checkpoint=resume)


def test_resume_from_a_local_directory_that_is_not_a_checkpoint(tmp_path: Path, searcher_factory) -> None:
    """A local directory with a pickle but no valid state is refused before anything is unpickled."""
    marker = tmp_path / "pwned"
    folder = tmp_path / "looks-like-a-checkpoint"
    folder.mkdir()
    (folder / OPTIMIZER_FILE).write_bytes(pickle.dumps(Touch(marker)))
    with pytest.raises(CheckpointError, match="unreadable or incomplete"):
        searcher_factory().search(resume_from_checkpoint=folder)
    (folder / STATE_FILE).write_text('{"not": "a search state"}')
    with pytest.raises(CheckpointError, match="no search state"):
        searcher_factory().search(resume_from_checkpoint=str(folder))
    assert not marker.exists()


def test_resume_from_a_checkpoint_outside_output_dir_is_the_users_choice(tmp_path: Path) -> None:
    reference = make_searcher(tmp_path / "first").search()
    copied = tmp_path / "elsewhere" / "checkpoint-3"
    shutil.copytree(checkpoint_dirs(tmp_path / "first" / "run")[0], copied)
    resumed = make_searcher(tmp_path / "second").search(resume_from_checkpoint=copied)
    assert resumed.allocation.budgets == reference.allocation.budgets
