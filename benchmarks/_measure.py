"""Timing and memory helpers shared by the benchmark scripts.

Needs only torch and transformers, because ``kvpress_worker.py`` imports it inside kvpress's own virtual
environment (another transformers version, no evolkv_hf).
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--repeats 0`` used to fail only after the model had loaded)."""
    value = int(text)
    if value < 1:
        raise ValueError(f"expected an integer >= 1, got {value}")
    return value


CLEAR_REFS = Path("/proc/self/clear_refs")
# For the one-configuration-per-process memory runs: glibc returns blocks of 64 KiB and more to the system when
# freed (mmap), so the process's resident peak follows what is live rather than what the allocator kept.
MEMORY_RUN_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2"}
STATUS = Path("/proc/self/status")


def prompt_ids(vocab_size: int, length: int) -> torch.Tensor:
    """The benchmark prompt of ``length`` random tokens (seeded by the length: every script measures the same)."""
    generator = torch.Generator().manual_seed(length)
    return torch.randint(100, vocab_size, (1, length), generator=generator)


def run_memory_job(script: str, job: dict[str, Any], arguments: list[str]) -> tuple[int, str]:
    """Run ``script --memory-job JOB ARGUMENTS`` in a fresh process and return its peak bytes and method.

    One configuration per process: CPU allocators keep freed memory, which would hide later peaks. The script
    prints ``{"peak_bytes": ..., "method": ...}`` as its last line.
    """
    command = [sys.executable, script, "--memory-job", json.dumps(job), *arguments]
    environment = {**os.environ, **MEMORY_RUN_ENVIRONMENT}
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout
    result = json.loads(output.strip().splitlines()[-1])
    return int(result["peak_bytes"]), str(result["method"])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_keyword(model: Any) -> str:
    """``"cache"`` where the model's forward takes it (newer transformers), else ``"past_key_values"``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def time_prefill(model: Any, ids: torch.Tensor, cache: Any) -> float:
    """Seconds of one forward over ``ids`` that fills ``cache`` (compression included)."""
    synchronize(ids.device)
    start = time.perf_counter()
    model(input_ids=ids, logits_to_keep=1, **{cache_keyword(model): cache})
    synchronize(ids.device)
    return time.perf_counter() - start


@torch.no_grad()
def time_decode(model: Any, cache: Any, steps: int, start_position: int) -> float:
    """Seconds per token of ``steps`` greedy decoding steps after a prefill of ``start_position`` tokens.

    Positions are passed explicitly, as kvpress's pipeline does (its compressed ``DynamicCache`` no longer
    knows the prompt length).
    """
    device = model.device
    token = torch.tensor([[42]], device=device)
    keyword = cache_keyword(model)
    synchronize(device)
    start = time.perf_counter()
    for step in range(steps):
        position = torch.tensor([[start_position + step]], device=device)
        logits = model(input_ids=token, position_ids=position, logits_to_keep=1, **{keyword: cache}).logits
        token = logits[:, -1:].argmax(-1)
    synchronize(device)
    return (time.perf_counter() - start) / steps


def kv_bytes(cache: Any) -> int:
    """Bytes of keys and values a transformers 5.x cache holds (any layer type with ``keys``/``values``)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


class PeakMemory:
    """Peak memory above the starting point while the ``with`` block runs.

    On CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated at the start. On Linux CPUs: the
    process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) above its resident set at
    the start; run one configuration per process, since freed memory the allocator keeps is reused silently.
    Elsewhere: the process's lifetime peak (``ru_maxrss``) above the resident set at the start.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self.peak_bytes = 0
        self._start = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        self._start = _status_bytes("VmRSS")
        try:
            CLEAR_REFS.write_text("5")
            self.method = "VmHWM reset via /proc/self/clear_refs"
        except OSError:
            self.method = "ru_maxrss (lifetime peak of the process)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self.method.startswith("VmHWM"):
            self.peak_bytes = _status_bytes("VmHWM") - self._start
        else:
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._start


def _status_bytes(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else None."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """Where the figures come from."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        info["transformers"] = transformers.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
