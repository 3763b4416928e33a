"""Atomic checkpoints of a search: ``output_dir/checkpoint-<n>/`` with a JSON state and the optimiser state.

A checkpoint is written into a temporary sibling directory and renamed into place, so a crash or a full
disk never leaves a half-written ``checkpoint-<n>``; the previous checkpoints stay untouched until the new
one is complete. The optimiser state is a pickle and is only ever read back from the user's own
``output_dir``, never from a Hub repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

STATE_FILE = "search_state.json"
OPTIMIZER_FILE = "optimizer.pkl"
PREFIX = "checkpoint-"
_PATTERN = re.compile(rf"^{PREFIX}(\d+)$")


class CheckpointError(OSError):
    """A checkpoint could not be written or read; the message says which and what is intact."""


def checkpoint_dirs(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _PATTERN.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file() and (child / OPTIMIZER_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    dirs = checkpoint_dirs(output_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(
    output_dir: str | os.PathLike[str],
    number: int,
    state: dict[str, Any],
    optimizer_state: bytes,
    *,
    save_total_limit: int | None = None,
) -> Path:
    """Write ``checkpoint-<number>`` atomically and rotate old ones; returns its path."""
    root = Path(output_dir)
    target = root / f"{PREFIX}{number}"
    temporary: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{PREFIX}{number}.tmp-", dir=root))
        payload = (json.dumps(state, indent=1, default=_json_default) + "\n").encode("utf-8")
        # Both files reach the disk before the rename: after a power cut the renamed directory is complete.
        for name, data in ((STATE_FILE, payload), (OPTIMIZER_FILE, optimizer_state)):
            with open(temporary / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        replaced: Path | None = None
        # The same generation again (Ctrl-C): the old copy goes only once the new one is in place.
        if target.exists():
            replaced = Path(tempfile.mkdtemp(prefix=f".{PREFIX}{number}.tmp-replaced-", dir=root))
            os.replace(target, replaced / target.name)
        os.replace(temporary, target)
        temporary = None
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
    except OSError as error:
        last = latest_checkpoint(root)
        intact = f"the last good checkpoint {last} is intact" if last else "no earlier checkpoint exists"
        raise CheckpointError(
            f"Could not write checkpoint {target} ({error.strerror or error}); {intact}. Free disk space or "
            "make output_dir writable, then resume with resume_from_checkpoint=True."
        ) from error
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    # Temporary directories of writes that a killed process never finished.
    for stale in root.glob(f".{PREFIX}*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if save_total_limit is not None:
        for old in checkpoint_dirs(root)[:-save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes]:
    """Read a checkpoint directory written by :func:`save_checkpoint`."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(
            f"Checkpoint {directory} is not a local directory. resume_from_checkpoint takes True (the latest "
            "checkpoint in output_dir) or the path of a checkpoint-<n> directory written by a search."
        )
    try:
        state = json.loads((directory / STATE_FILE).read_text())
        optimizer_state = (directory / OPTIMIZER_FILE).read_bytes()
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"Checkpoint {directory} is unreadable or incomplete: {error}") from error
    if not isinstance(state, dict) or "search_state" not in state:
        raise CheckpointError(f"Checkpoint {directory} has no search state; was it written by evolkv_hf?")
    return state, optimizer_state


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float):
        return value
    raise TypeError(f"Cannot serialise {type(value).__name__} in a checkpoint.")
