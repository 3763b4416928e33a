"""File and Hub plumbing for allocations: atomic writes, JSON reading, locating ``allocation.json``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

__all__ = [
    "ALLOCATION_FILE",
    "AllocationPushError",
    "atomic_write",
    "locate_allocation_file",
    "read_json_file",
]

ALLOCATION_FILE = "allocation.json"
MAX_FILE_BYTES = 16 * 2**20
"""Largest ``allocation.json`` read (16 MiB); the file of a 4096-layer allocation takes well under 1 MiB."""


class AllocationPushError(OSError):
    """Pushing an allocation to the Hub failed; any local save is left as it was."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory, then ``os.replace``.

    Readers see either the old or the new content, never a partial file. The file mode of an existing
    ``path`` is kept; new files get ``0o644``.
    """
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:  # parsers disagree on which copy wins: refuse rather than guess
            raise ValueError(f"duplicate key {key[:100]!r}")
        data[key] = value
    return data


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_json_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON object from ``path``, raising ``ValueError`` with a fix when it is corrupt.

    The file is untrusted (it may come from any Hub repo): it must be a regular file of at most
    ``MAX_FILE_BYTES`` holding strict JSON (UTF-8, no ``NaN``/``Infinity``, no duplicate keys).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file (a directory, a device, a FIFO or a broken symlink).")
    with open(path, "rb") as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(
            f"{path} is larger than {MAX_FILE_BYTES // 2**20} MiB; an allocation.json takes a few kB. Refusing to "
            "parse it."
        )
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        # ValueError covers json.JSONDecodeError, the checks above and integers of more than 4300 digits.
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise ValueError(
            f"{path} is not valid JSON ({reason}); the file is corrupt or truncated. Save the allocation again, "
            "or re-download it with `force_download=True`."
        ) from err
    if not isinstance(data, dict):
        raise ValueError(  # a wrongly shaped file is as corrupt as invalid JSON
            f"{path} must contain a JSON object with the allocation fields, got a JSON {type(data).__name__}."
        )
    return data


def locate_allocation_file(
    model_id: str,
    *,
    revision: str | None,
    cache_dir: str | Path | None,
    force_download: bool,
    local_files_only: bool,
    token: str | bool | None,
    endpoint: str | None,
) -> Path:
    """Return the local path of ``allocation.json`` for a directory or a Hub repo id (downloading it).

    Raises
    ------
    FileNotFoundError
        The directory or the repo has no ``allocation.json`` (or it is not cached in offline mode).
    NotADirectoryError
        ``model_id`` is an existing file rather than a directory.
    ValueError
        ``model_id`` is neither an existing directory nor a valid repo id.
    """
    if os.path.isdir(model_id):
        path = Path(model_id) / ALLOCATION_FILE
        if not path.is_file() and not os.path.lexists(path):
            raise FileNotFoundError(
                f"No {ALLOCATION_FILE} in directory {model_id!r}. Point to a directory written by "
                "BudgetAllocation.save_pretrained, or to a Hub repo id."
            )
        return path
    if os.path.exists(model_id):
        raise NotADirectoryError(
            f"{model_id!r} is a file; pass the directory that contains {ALLOCATION_FILE}, or a Hub repo id."
        )
    try:
        validate_repo_id(model_id)
    except HFValidationError as err:
        raise ValueError(
            f"{model_id!r} is neither an existing local directory nor a valid Hub repo id "
            f"('name' or 'namespace/name'): {err}"
        ) from err
    not_local = f"Note: {model_id!r} is not an existing local directory either."
    try:
        return Path(
            hf_hub_download(
                repo_id=model_id,
                filename=ALLOCATION_FILE,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                local_files_only=local_files_only,
                token=token,
                endpoint=endpoint,
            )
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        err.append_to_message(f"\n{not_local}")
        raise
    except EntryNotFoundError as err:
        raise FileNotFoundError(
            f"Could not get {ALLOCATION_FILE} of Hub repo {model_id!r} (revision {revision or 'main'}): {err}\n"
            f"{not_local} If you are offline, the file must already be in the cache."
        ) from err
