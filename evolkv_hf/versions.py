"""Versions of the packages that matter for reproducing a result (read from metadata, nothing imported)."""

from __future__ import annotations

import importlib.metadata
import platform

__all__ = ["package_versions"]

_DISTRIBUTIONS = {
    "evolkv_hf": "evolkv-hf",
    "transformers": "transformers",
    "torch": "torch",
    "huggingface_hub": "huggingface-hub",
    "accelerate": "accelerate",
    "datasets": "datasets",
    "evaluate": "evaluate",
    "cma": "cma",
    "numpy": "numpy",
}


def package_versions() -> dict[str, str]:
    """``{"python": ..., "evolkv_hf": ..., "transformers": ..., ...}`` for the installed packages.

    A package that is not installed is left out, except ``evolkv_hf`` itself (``"0+unknown"`` when run from
    a source tree without being installed).

    Example
    -------
    >>> "torch" in package_versions()
    True
    """
    versions = {"python": platform.python_version()}
    for key, distribution in _DISTRIBUTIONS.items():
        try:
            versions[key] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            if key == "evolkv_hf":
                versions[key] = "0+unknown"
    return versions
