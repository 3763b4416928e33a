"""Turn a task row into a prompt split at the end of the context.

The split serves both evaluation modes with the same tokens:

- query-aware (SnapKV's standard): the whole prompt (``context_ids + question_ids``) is prefilled
  and compressed together, so the question can guide what is kept;
- query-agnostic: ``context_ids`` is prefilled and compressed alone, then ``question_ids`` is fed
  through the compressed cache before generation.

Tokenizing the two parts separately can differ from tokenizing ``full_text`` in one go at the
boundary (a merge across it is not possible). Both modes use the same split tokens, so comparisons
between them, and between cache policies, are fair.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .schema import MODES

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PLAIN_ANSWER_MARKER = "Answer:"
"""Without a chat template the prompt is ``"{context}\\n\\n{question}\\nAnswer: {answer_prefix}"``."""

_SENTINEL = "\ue000evolkv-hf-context\ue000"


@dataclasses.dataclass(frozen=True)
class PromptParts:
    """A prompt split just after the context.

    Attributes
    ----------
    context_text
        Everything up to and including the context (the chat template's header and the start of the
        user turn, if any): what query-agnostic mode prefills and compresses alone.
    question_text
        The rest: the question, the end of the user turn, the assistant generation prompt and the
        answer prefix. Generation continues right after it.
    mode
        ``"query_aware"`` or ``"query_agnostic"`` (from the row's ``mode`` column, if any).
    chat_template
        Whether the tokenizer's chat template was applied.

    Examples
    --------
    >>> parts = PromptParts("Some text.", "\\n\\nWhat?\\nAnswer:")
    >>> parts.full_text
    'Some text.\\n\\nWhat?\\nAnswer:'
    """

    context_text: str
    question_text: str
    mode: str = "query_aware"
    chat_template: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")

    @property
    def full_text(self) -> str:
        """``context_text + question_text``."""
        return self.context_text + self.question_text

    @property
    def query_aware(self) -> bool:
        """Whether the question is part of the compressed prompt."""
        return self.mode == "query_aware"


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer: Any, content: str) -> str:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(rendered, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(rendered).__name__}, not str")
    return rendered


def _split_point(tokenizer: Any, rendered: str, context: str) -> int:
    """Index in ``rendered`` just after the context."""
    start = _render(tokenizer, _SENTINEL).find(_SENTINEL)
    if start >= 0 and rendered.startswith(context, start):
        return start + len(context)
    for candidate in (context, context.strip()):
        position = rendered.find(candidate) if candidate else -1
        if position >= 0:
            return position + len(candidate)
    raise ValueError(
        "The chat template altered the context, so the prompt cannot be split after it; "
        "pass use_chat_template=False."
    )


def build_prompt(
    sample: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase | Any,
    *,
    use_chat_template: bool | None = None,
) -> PromptParts:
    """Build the prompt of one task row, split just after the context.

    With a chat template (used when the tokenizer has one, unless ``use_chat_template=False``): one
    user message ``"{context}\\n\\n{question}"``, the assistant generation prompt, then
    ``answer_prefix``. Without: ``"{context}\\n\\n{question}\\nAnswer: {answer_prefix}"``.

    Parameters
    ----------
    sample
        A row with ``context`` and ``question`` (non-empty context), optionally ``answer_prefix``
        and ``mode``.
    tokenizer
        The model's tokenizer.
    use_chat_template
        ``None``: apply the chat template if the tokenizer has one; ``True``: require one;
        ``False``: plain text.

    Returns
    -------
    PromptParts

    Examples
    --------
    >>> row = {"context": "The sky is blue.", "question": "What colour is the sky?", "answer_prefix": "It is"}
    >>> parts = build_prompt(row, tokenizer)  # doctest: +SKIP
    >>> parts.full_text.endswith("<|im_start|>assistant\\nIt is")  # doctest: +SKIP
    True
    """
    context = sample.get("context")
    question = sample.get("question")
    answer_prefix = sample.get("answer_prefix") or ""
    mode = sample.get("mode") or "query_aware"
    if not isinstance(context, str) or not context:
        raise ValueError(f"sample['context'] must be a non-empty string, got {context!r:.60}")
    if not isinstance(question, str):
        raise ValueError(f"sample['question'] must be a string, got {question!r:.60}")
    if not isinstance(answer_prefix, str):
        raise ValueError(f"sample['answer_prefix'] must be a string, got {answer_prefix!r:.60}")
    if use_chat_template is None:
        use_chat_template = _has_chat_template(tokenizer)
    elif use_chat_template and not _has_chat_template(tokenizer):
        raise ValueError("use_chat_template=True but the tokenizer has no chat template")

    if use_chat_template:
        rendered = _render(tokenizer, f"{context}\n\n{question}") + answer_prefix
        split = _split_point(tokenizer, rendered, context)
        return PromptParts(rendered[:split], rendered[split:], mode=mode, chat_template=True)
    tail = f" {answer_prefix}" if answer_prefix else ""
    return PromptParts(
        context, f"\n\n{question}\n{PLAIN_ANSWER_MARKER}{tail}", mode=mode, chat_template=False
    )


def _special_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (e.g. BOS), none of those after it."""
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []


def encode_prompt(
    parts: PromptParts, tokenizer: PreTrainedTokenizerBase | Any
) -> tuple[list[int], list[int]]:
    """Tokenize the two parts of a prompt separately.

    Special tokens go only at the start: the tokenizer's leading special tokens (e.g. BOS) before
    the context of a plain prompt; none for a chat-template prompt, whose text already holds them
    (as ``apply_chat_template(tokenize=True)`` does). The split may tokenize differently from
    ``full_text`` at the boundary; use the same split for every method compared.

    Parameters
    ----------
    parts
        From :func:`build_prompt`.
    tokenizer
        The same tokenizer.

    Returns
    -------
    tuple of list of int
        ``(context_ids, question_ids)``.

    Examples
    --------
    >>> context_ids, question_ids = encode_prompt(build_prompt(row, tokenizer), tokenizer)  # doctest: +SKIP
    """
    prefix = [] if parts.chat_template else _special_prefix(tokenizer)
    context_ids = tokenizer(parts.context_text, add_special_tokens=False, verbose=False)["input_ids"]
    question_ids = tokenizer(parts.question_text, add_special_tokens=False, verbose=False)["input_ids"]
    return prefix + list(context_ids), list(question_ids)
