"""Faults during a search: SIGKILL at several points, torn checkpoint writes, full or unwritable disks.

The basic cases (one kill between candidates, KeyboardInterrupt, a failing os.replace) are in
tests/test_search.py; this file tries harder. A killed run is a real subprocess killed with SIGKILL at a
chosen point; the four kill points run in parallel, overlapping with the uninterrupted reference run.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_search import make_searcher

from evolkv_hf import BudgetAllocation
from evolkv_hf.search import SearchCallback
from evolkv_hf.search import checkpoint as checkpoint_module
from evolkv_hf.search.checkpoint import (
    OPTIMIZER_FILE,
    STATE_FILE,
    CheckpointError,
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

TESTS = Path(__file__).parent
LOG_FILE = "search_log.jsonl"

# What the child does before it dies. The reference timeline (tests/test_search.py::small_args): 3 layers in
# 2 groups, 2 generations per group, 4 candidates each; checkpoint-1 .. checkpoint-4, at most 2 kept.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_search import make_searcher
    from evolkv_hf.search import BudgetSearcher, SearchCallback

    point, workdir = sys.argv[1], Path(sys.argv[2])

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class Arm(SearchCallback):
        armed = False

        def on_group_begin(self, args, state, control, **kwargs):
            Arm.armed = state.group_index == 1

        def on_generation_end(self, args, state, control, **kwargs):
            if point == "after_log" and state.global_generation == 3:
                die()  # its candidates are in search_log.jsonl, checkpoint-3 is not written yet

    if point == "rename":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if Path(dst).name == "checkpoint-3":
                die()  # the temporary directory is complete, the rename never happens
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif point == "finish":
        BudgetSearcher.save_allocation = lambda self, *args, **kwargs: die()

    searcher = make_searcher(workdir, callbacks=[Arm()])
    if point == "forward":
        calls = []

        def hook(module, inputs, output):
            if Arm.armed:
                calls.append(1)
                if len(calls) == 3:
                    die()  # in the middle of decoding the first candidate of the second group

        searcher.model.lm_head.register_forward_hook(hook)
    searcher.search()
    sys.exit("the search finished although it should have been killed")
    """
).format(tests=str(TESTS))

KILL_POINTS = {
    # point: (latest complete checkpoint after the kill, what else is left on disk)
    "forward": ("checkpoint-2", None),
    "after_log": ("checkpoint-2", None),
    "rename": ("checkpoint-2", ".checkpoint-3.tmp-"),
    "finish": ("checkpoint-4", None),
}


def strip(history: list[dict]) -> list[dict]:
    """A history without its timing fields and the fitness-cache flag."""
    return [{k: v for k, v in entry.items() if k not in ("seconds", "cached")} for entry in history]


def logged(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory: pytest.TempPathFactory):
    """Start one child per kill point at once; each test waits for its own."""
    root = tmp_path_factory.mktemp("killed")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    env.setdefault("OMP_NUM_THREADS", "1")
    runs = {}
    for point in KILL_POINTS:
        workdir = root / point
        workdir.mkdir()
        process = subprocess.Popen(
            [sys.executable, "-c", CHILD, point, str(workdir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        runs[point] = (process, workdir)
    yield runs
    for process, _ in runs.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, killed_runs):
    """The uninterrupted search (computed while the children run)."""
    return make_searcher(tmp_path_factory.mktemp("reference")).search()


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume_equals_uninterrupted(point, killed_runs, reference):
    process, workdir = killed_runs[point]
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, stderr
    run_dir = workdir / "run"
    expected_latest, leftover = KILL_POINTS[point]
    assert latest_checkpoint(run_dir).name == expected_latest
    if leftover is not None:
        assert any(path.name.startswith(leftover) for path in run_dir.iterdir())
    load_checkpoint(latest_checkpoint(run_dir))  # the latest checkpoint always loads

    resumed = make_searcher(workdir).search(resume_from_checkpoint=True)

    assert resumed.allocation.budgets == reference.allocation.budgets
    assert resumed.best_fitness == reference.best_fitness and resumed.best_score == reference.best_score
    assert strip(resumed.history) == strip(reference.history)
    # The JSONL log holds each entry once: what the killed run logged after its last checkpoint is dropped.
    assert strip(logged(run_dir)) == strip(reference.history)
    saved = BudgetAllocation.from_pretrained(run_dir / "allocation")
    assert saved.budgets == reference.allocation.budgets
    # Stale temporary directories of the killed write are cleaned up by the next checkpoint.
    assert not [path.name for path in run_dir.iterdir() if ".tmp-" in path.name]
    assert [path.name for path in checkpoint_dirs(run_dir)] == ["checkpoint-3", "checkpoint-4"]


def test_crash_before_the_first_checkpoint(tmp_path):
    class Crash(SearchCallback):
        def on_candidate_evaluated(self, args, state, control, **kwargs):
            raise RuntimeError("power cut during the baseline")

    with pytest.raises(RuntimeError, match="power cut"):
        make_searcher(tmp_path, callbacks=[Crash()]).search()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        make_searcher(tmp_path).search(resume_from_checkpoint=True)
    result = make_searcher(tmp_path, overwrite_output_dir=True).search()
    assert len(logged(tmp_path / "run")) == len(result.history)


def test_overwrite_output_dir_removes_the_previous_search_only(tmp_path):
    # Regression: overwrite_output_dir deleted the old log and checkpoints but kept the old allocation/ and
    # TensorBoard runs/, so a new search stopped early left the previous search's allocation beside its own
    # checkpoints (and mixed both searches' curves in TensorBoard).
    run = tmp_path / "run"
    make_searcher(tmp_path).search()
    (run / "runs").mkdir()
    (run / "runs" / "events.out.tfevents.old").write_text("old curves")
    (run / "notes.txt").write_text("the user's own file")

    class CrashAfterTheFirstCheckpoint(SearchCallback):
        def on_save(self, args, state, control, **kwargs):
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        make_searcher(
            tmp_path, overwrite_output_dir=True, callbacks=[CrashAfterTheFirstCheckpoint()]
        ).search()
    assert not (run / "allocation").exists() and not (run / "runs").exists()
    assert (run / "notes.txt").read_text() == "the user's own file"
    assert [path.name for path in checkpoint_dirs(run)] == ["checkpoint-1"]


# -- torn writes -------------------------------------------------------------------------------------------------
def test_torn_checkpoint_write_is_ignored_and_resume_works(tmp_path):
    """A kill in the middle of a write leaves only a temporary directory (or, after an interrupted rotation,
    an incomplete checkpoint-<n>): never the latest checkpoint, and resuming works."""
    reference = make_searcher(tmp_path / "ref").search()

    class StopAfterTwo(SearchCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_generation == 2:
                control.should_search_stop = True

    run = tmp_path / "torn" / "run"
    make_searcher(tmp_path / "torn", callbacks=[StopAfterTwo()]).search()
    good = latest_checkpoint(run)
    assert good.name == "checkpoint-2"
    good_state, _ = load_checkpoint(good)
    # A write of checkpoint-3 torn while writing the state file: a partial JSON, no optimiser state.
    torn = run / ".checkpoint-3.tmp-k1ll3d"
    torn.mkdir()
    full = json.dumps(good_state)
    (torn / STATE_FILE).write_text(full[: len(full) // 2])
    # A torn rotation or copy: checkpoint-<n> directories missing one of their files.
    (run / "checkpoint-7").mkdir()
    (run / "checkpoint-7" / STATE_FILE).write_text(full[:100])
    (run / "checkpoint-9").mkdir()
    (run / "checkpoint-9" / OPTIMIZER_FILE).write_bytes(b"\x80\x04")
    # Not checkpoints at all.
    (run / "checkpoint-11").write_text("a file")
    (run / "checkpoint-x").mkdir()

    assert latest_checkpoint(run) == good
    assert [path.name for path in checkpoint_dirs(run)] == ["checkpoint-1", "checkpoint-2"]
    resumed = make_searcher(tmp_path / "torn").search(resume_from_checkpoint=True)
    assert resumed.allocation.budgets == reference.allocation.budgets
    assert strip(resumed.history) == strip(reference.history)
    assert not (run / torn.name).exists()


def test_unreadable_latest_checkpoint_gives_a_clear_error(tmp_path):
    """If a complete-looking latest checkpoint is corrupt anyway (disk corruption), the error names it and
    an earlier checkpoint can still be resumed explicitly."""
    make_searcher(tmp_path).search()
    run = tmp_path / "run"
    latest = latest_checkpoint(run)
    (latest / STATE_FILE).write_text('{"search_state": {"group_')
    with pytest.raises(CheckpointError, match=rf"{latest.name}.*unreadable"):
        make_searcher(tmp_path).search(resume_from_checkpoint=True)
    (latest / STATE_FILE).write_text('["not", "a", "state"]')
    with pytest.raises(CheckpointError, match="no search state"):
        make_searcher(tmp_path).search(resume_from_checkpoint=True)
    earlier = checkpoint_dirs(run)[0]
    assert make_searcher(tmp_path).search(resume_from_checkpoint=str(earlier)).allocation.num_layers == 3


def test_checkpoint_files_are_synced_before_the_rename(tmp_path, monkeypatch):
    """Regression: the JSON state was not fsynced, so after a power cut a renamed checkpoint-<n> could hold
    an empty search_state.json (a rename is atomic, the data behind it is not durable without fsync)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to map file descriptors to paths")
    synced, events = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", sorted(synced)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    checkpoint_module.save_checkpoint(tmp_path, 1, {"search_state": {}}, b"optimizer")
    assert events == [("replace", sorted([STATE_FILE, OPTIMIZER_FILE]))]


# -- full or unwritable disks --------------------------------------------------------------------------------------
class FailSavesFrom(SearchCallback):
    """Arms a write failure once ``global_generation`` reaches ``start``."""

    def __init__(self, start: int) -> None:
        self.start, self.armed = start, False

    def on_generation_end(self, args, state, control, **kwargs):
        self.armed = state.global_generation >= self.start


def test_full_disk_keeps_the_last_good_checkpoint_and_resume_completes(tmp_path, monkeypatch):
    reference = make_searcher(tmp_path / "ref").search()
    trigger = FailSavesFrom(3)
    real_fsync = os.fsync

    def fsync(fd):
        if trigger.armed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    run = tmp_path / "full" / "run"
    with pytest.raises(CheckpointError) as info:
        make_searcher(tmp_path / "full", callbacks=[trigger]).search()
    message = str(info.value)
    assert "No space left on device" in message and "checkpoint-3" in message
    assert "checkpoint-2 is intact" in message and "resume_from_checkpoint=True" in message
    assert isinstance(info.value, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert latest_checkpoint(run).name == "checkpoint-2"
    load_checkpoint(latest_checkpoint(run))
    assert not [path.name for path in run.iterdir() if ".tmp-" in path.name]
    assert not (run / "allocation").exists()

    monkeypatch.undo()  # space freed
    resumed = make_searcher(tmp_path / "full").search(resume_from_checkpoint=True)
    assert resumed.allocation.budgets == reference.allocation.budgets
    assert strip(resumed.history) == strip(reference.history)
    assert strip(logged(run)) == strip(reference.history)


def test_unwritable_output_dir_mid_run_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """The tests run as root, so chmod cannot make a directory read-only: the temporary directory of the
    checkpoint cannot be created, as on a read-only file system."""
    trigger = FailSavesFrom(2)
    real_mkdtemp = checkpoint_module.tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        if trigger.armed:
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module.tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(CheckpointError, match=r"Read-only file system.*checkpoint-1 is intact.*writable"):
        make_searcher(tmp_path, callbacks=[trigger]).search()
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint-1"


def test_output_dir_that_is_a_file_gives_a_clear_error(tmp_path):
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(NotADirectoryError, match=r"output_dir .*run is a file"):
        make_searcher(tmp_path).search()
    assert (tmp_path / "run").read_text() == "not a directory"
    with pytest.raises(NotADirectoryError, match=r"output_dir .*run is a file"):
        make_searcher(tmp_path).search(resume_from_checkpoint=True)


def test_output_dir_under_a_file_gives_a_clear_error(tmp_path):
    (tmp_path / "blocker").write_text("a file where a directory is expected")
    with pytest.raises(NotADirectoryError, match="blocker"):
        make_searcher(tmp_path / "blocker").search()


def test_checkpoint_optimizer_pickle_is_not_loaded_before_the_arguments_match(tmp_path):
    """A checkpoint written with other arguments is refused before its optimiser pickle is unpickled."""
    make_searcher(tmp_path).search()
    latest = latest_checkpoint(tmp_path / "run")
    marker = tmp_path / "unpickled"
    (latest / OPTIMIZER_FILE).write_bytes(pickle.dumps(_Touch(marker)))
    with pytest.raises(ValueError, match="seed"):
        make_searcher(tmp_path, seed=5).search(resume_from_checkpoint=True)
    assert not marker.exists()


class _Touch:
    """Unpickling this creates ``path``: a harmless stand-in for a malicious pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_history_has_no_nan_so_equality_checks_are_meaningful(reference):
    # strip(...) == strip(...) would fail on NaN; make sure the comparisons above compare real numbers.
    for entry in reference.history:
        for value in entry.values():
            assert not (isinstance(value, float) and math.isnan(value))


def test_rewriting_a_checkpoint_keeps_the_old_copy_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    # Regression: a second checkpoint of the same generation (Ctrl-C) deleted checkpoint-<n> before renaming
    # the new one into place; with save_total_limit=1 a kill during that delete left no checkpoint at all.
    save_checkpoint(tmp_path, 3, {"search_state": {"copy": "old"}}, b"old", save_total_limit=1)
    seen_while_deleting: list[Any] = []
    real_rmtree = checkpoint_module.shutil.rmtree

    def watching_rmtree(path, *args, **kwargs):
        seen_while_deleting.append(load_checkpoint(tmp_path / "checkpoint-3")[0]["search_state"])
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", watching_rmtree)
    save_checkpoint(tmp_path, 3, {"search_state": {"copy": "new"}}, b"new", save_total_limit=1)
    assert seen_while_deleting and all(state == {"copy": "new"} for state in seen_while_deleting)
    assert load_checkpoint(tmp_path / "checkpoint-3") == ({"search_state": {"copy": "new"}}, b"new")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-3"]
