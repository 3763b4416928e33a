"""Search callbacks in the style of transformers' ``TrainerCallback``: events, a state and a control."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .arguments import SearchArguments

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "runs"
"""Where ``report_to=["tensorboard"]`` writes its events, inside ``output_dir`` (as ``Trainer`` does)."""


@dataclass
class SearchState:
    """Where a search stands; saved in every checkpoint as JSON.

    Attributes
    ----------
    group_index:
        Index (in search order) of the group being optimised.
    generation:
        Generations completed within the current group.
    global_generation:
        Generations completed over the whole search (checkpoint numbers).
    num_groups, generations_per_group:
        The search's shape.
    base_budgets:
        The current scheme outside the optimised group (earlier groups frozen at their best).
    best_budgets, best_fitness, best_score:
        Global best scheme so far, its fitness F and its metric f.
    evaluations:
        Distinct candidates evaluated (the fitness cache size).
    initial_budgets:
        The scheme the search started from when ``SearchArguments.initial_allocation`` was given (rescaled to
        the target), else ``None`` (uniform).
    log_history:
        One entry per evaluated candidate and per generation summary.
    """

    group_index: int = 0
    generation: int = 0
    global_generation: int = 0
    num_groups: int = 0
    generations_per_group: int = 0
    base_budgets: list[int] = field(default_factory=list)
    best_budgets: list[int] = field(default_factory=list)
    best_fitness: float = -math.inf
    best_score: float = math.nan
    evaluations: int = 0
    initial_budgets: list[int] | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_generations(self) -> int:
        return self.num_groups * self.generations_per_group


@dataclass
class SearchControl:
    """Flags a callback can set to steer the search."""

    should_search_stop: bool = False
    should_save: bool = False
    should_log: bool = False


class SearchCallback:
    """Base class: override the events you need. Each receives ``(args, state, control, **kwargs)``.

    Events, in order: ``on_search_begin``; per group ``on_group_begin``; per candidate
    ``on_candidate_evaluated`` (kwargs ``record``); ``on_generation_end``; ``on_log`` (kwargs ``logs``);
    ``on_save`` (kwargs ``checkpoint``); ``on_group_end``; and ``on_search_end``.

    Example
    -------
    >>> class StopAtPerfect(SearchCallback):
    ...     def on_generation_end(self, args, state, control, **kwargs):
    ...         if state.best_score >= 100:
    ...             control.should_search_stop = True
    """

    def on_search_begin(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        pass

    def on_group_begin(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        pass

    def on_candidate_evaluated(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        pass

    def on_generation_end(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        pass

    def on_group_end(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        pass

    def on_log(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        pass

    def on_save(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        pass

    def on_search_end(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        pass


class CallbackHandler:
    """Calls every callback for each event, in order."""

    def __init__(self, callbacks: list[SearchCallback]) -> None:
        self.callbacks = list(callbacks)

    def add(self, callback: SearchCallback) -> None:
        self.callbacks.append(callback)

    def fire(
        self, event: str, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(args, state, control, **kwargs)


class ProgressCallback(SearchCallback):
    """tqdm bars: generations over the whole search and candidates of the current generation."""

    def __init__(self) -> None:
        self._generations: Any = None
        self._candidates: Any = None

    def on_search_begin(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        from tqdm.auto import tqdm

        self._generations = tqdm(
            total=state.total_generations,
            initial=state.global_generation,
            desc="search",
            unit="gen",
            dynamic_ncols=True,
        )

    def on_group_begin(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        if self._generations is not None:
            self._generations.set_description(f"search group {state.group_index + 1}/{state.num_groups}")

    def on_candidate_evaluated(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        from tqdm.auto import tqdm

        total = kwargs.get("population", args.population_size)
        if self._candidates is None:
            self._candidates = tqdm(
                total=total, desc="candidates", leave=False, unit="cand", dynamic_ncols=True
            )
        self._candidates.update(1)
        if self._candidates.n >= self._candidates.total:  # the population (or the baseline) is done
            self._candidates.close()
            self._candidates = None

    def on_generation_end(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        if self._candidates is not None:
            self._candidates.close()
            self._candidates = None
        if self._generations is not None:
            self._generations.update(1)
            self._generations.set_postfix(
                best_F=f"{state.best_fitness:.2f}", best_f=f"{state.best_score:.2f}"
            )

    def on_search_end(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        for bar in (self._candidates, self._generations):
            if bar is not None:
                bar.close()
        self._candidates = self._generations = None


class JsonlLoggerCallback(SearchCallback):
    """Appends every log entry to ``<output_dir>/search_log.jsonl`` (main process only)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def on_log(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        logs = kwargs.get("logs")
        if logs is None:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(logs, sort_keys=True, default=float) + "\n")


class TensorBoardCallback(SearchCallback):
    """Writes the generation summaries to TensorBoard (needs the ``tensorboard`` package)."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # fail early (ImportError) when not installed

        self.log_dir = os.fspath(log_dir)
        self._writer_class = SummaryWriter
        self.writer: Any = None

    def on_search_begin(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        # Created here, not in __init__: the writer makes its directory at once, and a fresh search
        # refuses a non-empty output_dir.
        self.writer = self._writer_class(log_dir=self.log_dir)

    def on_log(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        logs = kwargs.get("logs") or {}
        if logs.get("event") != "generation" or self.writer is None:
            return
        for key in ("best_fitness", "best_score", "generation_best_fitness", "mean_budget"):
            if isinstance(logs.get(key), (int, float)):
                self.writer.add_scalar(f"search/{key}", logs[key], state.global_generation)

    def on_search_end(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        self.writer.close()


class WandbCallback(SearchCallback):
    """Logs generation summaries to Weights & Biases (needs ``wandb``)."""

    def __init__(self) -> None:
        import wandb

        self.wandb = wandb

    def on_search_begin(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        if self.wandb.run is None:
            self.wandb.init(config=args.to_dict())

    def on_log(
        self, args: SearchArguments, state: SearchState, control: SearchControl, **kwargs: Any
    ) -> None:
        logs = kwargs.get("logs") or {}
        if logs.get("event") == "generation":
            self.wandb.log({k: v for k, v in logs.items() if isinstance(v, (int, float))})


def integration_callbacks(report_to: list[str], output_dir: str) -> list[SearchCallback]:
    """Callbacks for ``report_to``; an integration whose package is missing is skipped with a warning.

    ``"all"`` means every supported integration whose package is installed (as in transformers'
    ``TrainingArguments``); missing ones are then skipped silently.
    """
    import importlib.util

    callbacks: list[SearchCallback] = []
    names = list(report_to)
    if "all" in names:
        installed = [
            name
            for name, module in (("tensorboard", "tensorboard"), ("wandb", "wandb"))
            if importlib.util.find_spec(module) is not None
        ]
        names = [name for name in names if name != "all"] + installed
    for name in dict.fromkeys(names):  # each once, in order
        try:
            if name == "tensorboard":
                callbacks.append(TensorBoardCallback(os.path.join(output_dir, TENSORBOARD_DIR)))
            elif name == "wandb":
                callbacks.append(WandbCallback())
            elif name != "none":
                raise ValueError(
                    f"Unknown report_to integration {name!r}; use 'tensorboard', 'wandb', 'all' or 'none'."
                )
        except ImportError:
            logger.warning("report_to=%r skipped: its package is not installed.", name)
    return callbacks
