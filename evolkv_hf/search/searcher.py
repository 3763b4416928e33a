"""``BudgetSearcher``: learn per-layer KV budgets for a model, a dataset and a metric (EvolKV)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..allocation import BudgetAllocation
from ..inference import EncodedSample, encode_samples, generate_answers, hub_model_id, model_name
from ..versions import package_versions
from .arguments import SearchArguments
from .callbacks import (
    TENSORBOARD_DIR,
    CallbackHandler,
    JsonlLoggerCallback,
    ProgressCallback,
    SearchCallback,
    SearchControl,
    SearchState,
    integration_callbacks,
)
from .checkpoint import CheckpointError, checkpoint_dirs, latest_checkpoint, load_checkpoint, save_checkpoint
from .engine import CacheOptions, FitnessEngine, PlainEngine, PrefillOnceEngine
from .fitness import cache_score, combined_fitness
from .strategy import GroupStrategy

logger = logging.getLogger(__name__)

ALLOCATION_DIR = "allocation"
# Settings that change which candidates are proposed or how they are scored: a resume must keep them.
_RESUME_MUST_MATCH = (
    "target_budget",
    "group_size",
    "population_size",
    "generations_per_group",
    "sigma0",
    "cache_score_lambda",
    "cache_score_gamma",
    "constraint",
    "min_budget",
    "max_budget",
    "window_size",
    "kernel_size",
    "pooling",
    "group_order",
    "seed",
    "max_new_tokens",
    "metric_for_best_model",
    "greater_is_better",
)
LOG_FILE = "search_log.jsonl"
STATE_VERSION = 1


@dataclass
class SearchResult:
    """What a search returns.

    Attributes
    ----------
    allocation:
        The best scheme, completed to exactly ``target_budget`` tokens per layer on average.
    best_fitness:
        Fitness F of the best (uncompleted) scheme.
    best_score:
        Its metric value f on the search samples.
    history:
        The log: one entry per evaluated candidate and per generation.
    """

    allocation: BudgetAllocation
    best_fitness: float
    best_score: float
    history: list[dict[str, Any]] = field(default_factory=list)
    output_dir: str | None = None


class BudgetSearcher:
    """Learn an allocation of KV budgets with group-wise CMA-ES, the way a ``Trainer`` trains a model.

    Parameters
    ----------
    model:
        A decoder-only transformers model (frozen; only its cache is configured).
    args:
        :class:`SearchArguments`.
    train_dataset:
        The search samples: a ``datasets.Dataset`` (or list of dicts) with the task columns ``context``,
        ``question``, ``answer_prefix``, ``answers``, ``max_new_tokens``.
    eval_dataset:
        Held-out samples for :meth:`evaluate` and the model card.
    processing_class:
        The tokenizer.
    metric:
        An ``evaluate`` module, a ``CombinedEvaluations``, a metric name of :mod:`evolkv_hf.metrics`, or a
        callable ``(predictions, references) -> dict``; ``args.metric_for_best_model`` picks the key used
        as the score f.
    callbacks:
        Extra :class:`SearchCallback` objects.

    Example
    -------
    >>> args = SearchArguments(output_dir="runs/c128", target_budget=128, generations_per_group=4)
    >>> searcher = BudgetSearcher(
    ...     model, args, train, eval_dataset=held_out, processing_class=tokenizer, metric="edit_sim"
    ... )  # doctest: +SKIP
    >>> result = searcher.search()  # doctest: +SKIP
    >>> cache = EvolKVCache(model, result.allocation)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        args: SearchArguments,
        train_dataset: Any,
        eval_dataset: Any = None,
        processing_class: Any = None,
        metric: Any = None,
        callbacks: Sequence[SearchCallback] | None = None,
    ) -> None:
        if not isinstance(args, SearchArguments):
            raise TypeError(f"args must be a SearchArguments, got {type(args).__name__}.")
        if processing_class is None:
            raise ValueError("processing_class (the tokenizer) is required to build the prompts.")
        self.model, self.args, self.tokenizer = model, args, processing_class
        config = model.config.get_text_config(decoder=True)
        self.num_layers = int(config.num_hidden_layers)
        self.train_dataset = _validated(train_dataset, "train_dataset")
        self.eval_dataset = _validated(eval_dataset, "eval_dataset") if eval_dataset is not None else None
        self.metric = _resolve_metric(metric, self.train_dataset)
        self.metric_key = self._check_metric_key()
        self.options = CacheOptions(
            window_size=args.window_size, kernel_size=args.kernel_size, pooling=args.pooling, policy="snapkv"
        )
        self.train_samples = self._encode(self.train_dataset)
        self.references = [list(sample["answers"]) for sample in self.train_dataset]
        self.is_main_process, self.process_index, self.num_processes = _process_info()
        handlers: list[SearchCallback] = []
        if not args.disable_tqdm and self.is_main_process:
            handlers.append(ProgressCallback())
        if self.is_main_process:
            handlers.append(JsonlLoggerCallback(Path(args.output_dir) / LOG_FILE))
            handlers.extend(integration_callbacks(args.report_to, args.output_dir))
        handlers.extend(callbacks or [])
        self.callback_handler = CallbackHandler(handlers)
        self.control = SearchControl()
        self.state = SearchState()
        self._fitness_cache: dict[str, dict[str, Any]] = {}
        self._engine: FitnessEngine | None = None
        self._result: SearchResult | None = None

    # ------------------------------------------------------------------ setup helpers
    def _encode(self, dataset: Any) -> list[EncodedSample]:
        samples = encode_samples(dataset, self.tokenizer)
        if self.args.max_new_tokens is not None:
            samples = [
                dataclasses.replace(s, max_new_tokens=min(s.max_new_tokens, self.args.max_new_tokens))
                for s in samples
            ]
        return samples

    @functools.cached_property
    def _samples_fingerprint(self) -> str:
        """Digest of the search samples as the model sees them (token ids, answers, decoding length)."""
        digest = hashlib.sha256()
        for sample, references in zip(self.train_samples, self.references, strict=True):
            row = [sample.context_ids, sample.question_ids, sample.max_new_tokens, sample.mode, references]
            digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8"))
        return digest.hexdigest()[:16]

    def _check_metric_key(self) -> str:
        from ..metrics import compute_metric

        first = self.train_dataset[0]
        probe = compute_metric(self.metric, [str(first["answers"][0])], [list(first["answers"])])
        wanted = self.args.metric_for_best_model
        if wanted is None:
            if not probe:
                raise ValueError("The metric returned an empty dict.")
            return next(iter(probe))
        if wanted not in probe:
            raise ValueError(
                f"metric_for_best_model={wanted!r} is not produced by the metric, which returns {sorted(probe)}."
            )
        return wanted

    def create_engine(self) -> FitnessEngine:
        """Build the fitness engine (override to plug in another way of answering the search samples)."""
        args = self.args
        if args.engine == "plain":
            return PlainEngine(
                self.model, self.tokenizer, self.train_samples, self.options, batch_size=args.eval_batch_size
            )
        return PrefillOnceEngine(
            self.model,
            self.tokenizer,
            self.train_samples,
            self.options,
            batch_size=args.eval_batch_size,
            storage_device=args.engine_storage_device,
            max_storage_bytes=int(args.engine_max_storage_gb * 2**30),
        )

    # ------------------------------------------------------------------ fitness
    def _score(self, predictions: list[str], references: list[list[str]]) -> float:
        from ..metrics import compute_metric

        values = compute_metric(self.metric, predictions, references)
        if self.metric_key not in values:
            raise ValueError(f"The metric did not return {self.metric_key!r} (got {sorted(values)}).")
        return float(values[self.metric_key])

    def _project(self, budgets: list[int]) -> list[int]:
        allocation = BudgetAllocation(budgets=budgets, window_size=self.args.window_size)
        return allocation.rescale(
            self.args.target_budget, floor=self.args.min_budget, cap=self.args.max_budget
        ).budgets

    def _evaluated_budgets(self, budgets: list[int]) -> list[int]:
        """The scheme a candidate is scored as (projected onto the target mean under ``constraint="project"``)."""
        return self._project(budgets) if self.args.constraint == "project" else list(budgets)

    def _evaluate_candidate(self, budgets: list[int]) -> dict[str, Any]:
        """Fitness record of one scheme (computed once; later calls hit the cache)."""
        args = self.args
        evaluated = self._evaluated_budgets(budgets)
        key = _cache_key(evaluated)
        if key in self._fitness_cache:
            return {**self._fitness_cache[key], "cached": True}
        start = time.perf_counter()
        error = None
        if self._engine is None:  # setup errors (unsupported model, memory) must surface, not score -inf
            self._engine = self.create_engine()
        try:
            predictions = self._engine.answers(evaluated)
            score = self._score(predictions, self.references)
        except Exception as exc:  # a failing candidate must not end the search
            logger.warning("Candidate %s failed: %s: %s", evaluated, type(exc).__name__, exc)
            score, error = math.nan, f"{type(exc).__name__}: {exc}"
        if math.isnan(score):
            fitness = -math.inf
        else:
            fitness = combined_fitness(
                score,
                evaluated,
                args.target_budget,
                lam=args.cache_score_lambda,
                gamma=args.cache_score_gamma,
                greater_is_better=bool(args.greater_is_better),
            )
        record = {
            "budgets": evaluated,
            "mean_budget": sum(evaluated) / len(evaluated),
            "score": score,
            "cache_score": cache_score(evaluated, args.target_budget, args.cache_score_gamma),
            "fitness": fitness,
            "seconds": round(time.perf_counter() - start, 3),
            "error": error,
        }
        self._fitness_cache[key] = record
        return {**record, "cached": False}

    def _evaluate_population(self, candidates: list[list[int]]) -> list[dict[str, Any]]:
        if self.num_processes == 1:
            records = []
            for budgets in candidates:
                records.append(self._evaluate_candidate(budgets))
                self._fire("on_candidate_evaluated", record=records[-1], population=len(candidates))
            return records
        return self._evaluate_distributed(candidates)

    def _evaluate_distributed(self, candidates: list[list[int]]) -> list[dict[str, Any]]:
        from accelerate import PartialState
        from accelerate.utils import gather_object

        state = PartialState()
        # Each scheme not scored yet is scored once, by one process; repeats (rounding makes them common) and
        # schemes of earlier generations then come from the cache, as in a single process.
        first: dict[str, tuple[int, list[int]]] = {}
        for index, budgets in enumerate(candidates):
            key = _cache_key(self._evaluated_budgets(budgets))
            if key not in self._fitness_cache and key not in first:
                first[key] = (index, budgets)
        with state.split_between_processes(list(first.values())) as mine:
            local = [(index, self._evaluate_candidate(budgets)) for index, budgets in mine]
        fresh = dict(gather_object(local))
        for record in fresh.values():
            self._fitness_cache.setdefault(
                _cache_key(record["budgets"]), {k: v for k, v in record.items() if k != "cached"}
            )
        records = [
            fresh.get(index) or self._evaluate_candidate(budgets) for index, budgets in enumerate(candidates)
        ]
        for record in records:
            self._fire("on_candidate_evaluated", record=record, population=len(candidates))
        return records

    # ------------------------------------------------------------------ the search
    def _groups(self) -> list[list[int]]:
        size = self.args.group_size
        groups = [list(range(i, min(i + size, self.num_layers))) for i in range(0, self.num_layers, size)]
        return groups if self.args.group_order == "bottom_up" else groups[::-1]

    def _group_seed(self, group_index: int) -> int:
        return (self.args.seed * 1_000_003 + group_index * 7919 + 1) % (2**31 - 1) or 1

    def search(self, resume_from_checkpoint: bool | str | os.PathLike[str] | None = None) -> SearchResult:
        """Run the search (or resume it) and return the completed best allocation.

        Parameters
        ----------
        resume_from_checkpoint:
            ``True`` resumes from the latest checkpoint in ``output_dir``; a path resumes from that
            ``checkpoint-<n>`` directory; ``None`` starts fresh (``output_dir`` must then be empty unless
            ``overwrite_output_dir``).
        """
        args = self.args
        output_dir = Path(args.output_dir)
        if output_dir.exists() and not output_dir.is_dir():
            raise NotADirectoryError(
                f"output_dir {output_dir} is a file, not a directory: choose another output_dir (checkpoints, the "
                "log and the allocation are written into it)."
            )
        # A stop requested by a callback during an earlier call must not end this one at once (as in Trainer).
        self.control = SearchControl()
        groups = self._groups()
        # The uniform scheme completed to the target total, as the final allocation will be (for a target
        # such as 12.5 some layers get 13; Python's round() would give every layer 12, below the target).
        uniform = self._project([max(1, round(args.target_budget))] * self.num_layers)
        strategy: GroupStrategy | None = None
        snapshot: tuple[dict[str, Any], bytes] | None = None
        checkpoint_path = self._resolve_resume(resume_from_checkpoint, output_dir)
        # Read before output_dir is cleared: the allocation may be an earlier search's in this directory.
        initial = self._initial_budgets()
        start = uniform if initial is None else initial
        if checkpoint_path is not None:
            self._check_foreign_resume(checkpoint_path, output_dir)
            strategy = self._restore(checkpoint_path, groups)
            if initial != self.state.initial_budgets:
                started, given = (
                    "uniform budgets" if b is None else b for b in (self.state.initial_budgets, initial)
                )
                raise ValueError(
                    f"Cannot resume {checkpoint_path}: that search started from {started}, and "
                    f"initial_allocation={args.initial_allocation!r} gives {given}. "
                    "Resume with the initial_allocation the search started from."
                )
            if self.is_main_process:  # resuming a checkpoint from elsewhere into a new output_dir
                output_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._check_output_dir(output_dir)
            self.state = SearchState(
                num_groups=len(groups),
                generations_per_group=args.generations_per_group,
                base_budgets=list(start),
                best_budgets=list(start),
                initial_budgets=initial,
            )
        if self.num_processes > 1:
            # Every process has checked output_dir before the main one writes into it (log, integrations).
            from accelerate import PartialState

            PartialState().wait_for_everyone()
        self._fire("on_search_begin")
        if checkpoint_path is None:
            scheme = "uniform" if initial is None else "initial"
            baseline = self._evaluate_population([start])[0]
            if baseline["error"] is not None:
                raise RuntimeError(
                    f"The {scheme} baseline scheme could not be evaluated ({baseline['error']}); fix the model, the "
                    "data or the metric before searching."
                )
            if math.isnan(baseline["score"]):
                raise RuntimeError(
                    f"The metric returned NaN ({self.metric_key!r}) for the {scheme} baseline scheme, so no "
                    "candidate could be ranked; check that the metric returns a number for these predictions and "
                    "references (e.g. that the references are not empty)."
                )
            self._update_best(baseline)
            self._log({"event": "baseline", "scheme": scheme, **baseline})
        try:
            while self.state.group_index < len(groups) and not self.control.should_search_stop:
                group = groups[self.state.group_index]
                if strategy is None:
                    strategy = GroupStrategy(
                        [self.state.base_budgets[i] for i in group],
                        args.target_budget,
                        args.sigma0,
                        args.min_budget or 1,
                        args.max_budget or int(4 * args.target_budget),
                        args.population_size or 2,
                        seed=self._group_seed(self.state.group_index),
                    )
                    self._fire("on_group_begin", group=group)
                while (
                    self.state.generation < args.generations_per_group and not self.control.should_search_stop
                ):
                    # What an interrupt saves: the state before this generation, so a resume redoes it exactly.
                    snapshot = (copy.deepcopy(self._state_dict()), strategy.state_bytes())
                    self._run_generation(strategy, group)
                    if self.state.generation == args.generations_per_group:
                        # Freeze the group at the best scheme found so far, then move on.
                        self.state.base_budgets = list(self.state.best_budgets)
                        self.state.group_index += 1
                        self.state.generation = 0
                        self._fire("on_group_end", group=group)
                        strategy_to_save = None
                    else:
                        strategy_to_save = strategy
                    if self._should_save():
                        self._save(strategy_to_save)
                    if strategy_to_save is None:
                        strategy = None
                        break
        except KeyboardInterrupt:
            if self.is_main_process and snapshot is not None:
                logger.warning(
                    "Interrupted: writing a checkpoint of the last complete generation before exiting."
                )
                state, optimizer_state = snapshot
                number = state["search_state"]["global_generation"]
                if number > 0 or state["search_state"]["generation"] > 0 or state["fitness_cache"]:
                    save_checkpoint(args.output_dir, number, state, optimizer_state, save_total_limit=None)
            raise
        result = self._finish()
        self._fire("on_search_end")
        return result

    def _initial_budgets(self) -> list[int] | None:
        """``args.initial_allocation``'s budgets rescaled to the target (``None`` without one: uniform).

        With several processes the main one reads the allocation (a Hub download once, not once per process) and
        hands the budgets, or the error, to the others, so that all of them start alike or fail alike.
        """
        if self.args.initial_allocation is None:
            return None
        if self.num_processes == 1:
            return self._read_initial_budgets()
        from accelerate.utils import broadcast_object_list

        message: list[Any] = [None]
        if self.is_main_process:
            try:
                message[0] = self._read_initial_budgets()
            except Exception as error:  # re-raised on every process below
                message[0] = error
        broadcast_object_list(message, from_process=0)
        if isinstance(message[0], Exception):
            raise message[0]
        return list(message[0])

    def _read_initial_budgets(self) -> list[int]:
        source = self.args.initial_allocation
        if source is None:  # pragma: no cover - checked by the caller
            raise ValueError("initial_allocation is not set.")
        try:
            allocation = BudgetAllocation.from_pretrained(source)
        except Exception as error:
            raise ValueError(
                f"initial_allocation {source!r} could not be loaded as a BudgetAllocation ({type(error).__name__}: "
                f"{error}). Pass the directory written by save_pretrained (an earlier search's output_dir/allocation) "
                "or a Hub repo id holding allocation.json."
            ) from error
        if len(allocation.budgets) != self.num_layers:
            raise ValueError(
                f"initial_allocation {source!r} has {len(allocation.budgets)} budgets but the model has "
                f"{self.num_layers} decoder layers: start from an allocation searched for this model."
            )
        if allocation.window_size != self.args.window_size:
            logger.warning(
                "initial_allocation %r was searched with window_size=%d; this search uses window_size=%d.",
                source,
                allocation.window_size,
                self.args.window_size,
            )
        return self._project(list(allocation.budgets))

    def _run_generation(self, strategy: GroupStrategy, group: list[int]) -> None:
        candidates = []
        for group_budgets in strategy.ask():
            scheme = list(self.state.base_budgets)
            for layer, budget in zip(group, group_budgets, strict=False):
                scheme[layer] = budget
            candidates.append(scheme)
        records = self._evaluate_population(candidates)
        strategy.tell([r["fitness"] if math.isfinite(r["fitness"]) else -1e12 for r in records])
        for record in records:
            self._update_best(record)
            self._log(
                {
                    "event": "candidate",
                    "group": self.state.group_index,
                    "generation": self.state.generation,
                    **record,
                }
            )
        self.state.generation += 1
        self.state.global_generation += 1
        self.state.evaluations = len(self._fitness_cache)
        finite = [r["fitness"] for r in records if math.isfinite(r["fitness"])]
        summary = {
            "event": "generation",
            "group": self.state.group_index,
            "generation": self.state.generation,
            "global_generation": self.state.global_generation,
            "generation_best_fitness": max(finite) if finite else None,
            "generation_mean_fitness": sum(finite) / len(finite) if finite else None,
            "best_fitness": self.state.best_fitness,
            "best_score": self.state.best_score,
            "best_budgets": list(self.state.best_budgets),
            "evaluations": self.state.evaluations,
        }
        if self.state.global_generation % self.args.logging_steps == 0:
            self._log(summary)
        else:
            self.state.log_history.append(summary)
        self._fire("on_generation_end")

    def _update_best(self, record: dict[str, Any]) -> None:
        if record["fitness"] > self.state.best_fitness:
            self.state.best_fitness = float(record["fitness"])
            self.state.best_score = float(record["score"])
            self.state.best_budgets = list(record["budgets"])

    def _should_save(self) -> bool:
        strategy = self.args.save_strategy
        if self.control.should_save:
            self.control.should_save = False
            return True
        if strategy == "generation":
            return True
        return strategy == "group" and self.state.generation == 0

    # ------------------------------------------------------------------ end of search
    def _finish(self) -> SearchResult:
        args = self.args
        completed = BudgetAllocation(budgets=self.state.best_budgets, window_size=args.window_size).rescale(
            args.target_budget, floor=args.min_budget, cap=args.max_budget
        )
        # The score recorded with the allocation is that of the completed budgets it holds (one evaluation).
        completed_score = float(self._evaluate_candidate(completed.budgets)["score"])
        allocation = self._with_provenance(completed.budgets, completed_score)
        self._warn_at_cap(allocation.budgets)
        self._result = SearchResult(
            allocation=allocation,
            best_fitness=self.state.best_fitness,
            best_score=self.state.best_score,
            history=list(self.state.log_history),
            output_dir=str(args.output_dir),
        )
        if self.is_main_process:
            scores = {"search_best_score": self.state.best_score, "search_completed_score": completed_score}
            self._save_scores(self._result, scores)
            if self.eval_dataset is not None:
                # Saved first: a failing held-out comparison (memory, metric) must not lose the search's result.
                held_out = self.evaluate()
                scores.update({f"eval_{name}": value for name, value in held_out.items()})
                self._save_scores(self._result, scores)
            if args.push_to_hub and args.hub_model_id:
                self.push_to_hub(args.hub_model_id)
        return self._result

    def _warn_at_cap(self, budgets: list[int]) -> None:
        """Warn when a layer ended at ``max_budget``: the cap, not the fitness, may have stopped it.

        Both the completed allocation and the best scheme the search scored are checked: under ``"penalty"`` the
        completion rescales a scheme that drifted over the target, so a layer the search held at the cap ends
        below it. "At" is within 1% (at least one token): projecting a candidate clipped at the cap onto the
        target mean trims it a little (511 of 512)."""
        args = self.args
        cap = args.max_budget
        if cap is None or cap <= args.target_budget or not self.is_main_process:
            return
        threshold = cap - max(1.0, 0.01 * cap)
        schemes = [budgets, self.state.best_budgets]  # best_budgets: a list, empty before any evaluation
        at_cap = sorted(
            {
                layer
                for scheme in schemes
                for layer, b in enumerate(scheme)
                if b >= threshold and b > args.target_budget
            }
        )
        if at_cap:
            logger.warning(
                "The search ended with layer(s) %s at max_budget (%d tokens): the cap may have held the search "
                "back there. Consider searching again with a larger max_budget (starting from this "
                "allocation: initial_allocation=%r).",
                at_cap,
                cap,
                str(Path(args.output_dir) / ALLOCATION_DIR),
            )

    def _save_scores(self, result: SearchResult, scores: dict[str, float]) -> None:
        finite = {name: value for name, value in scores.items() if math.isfinite(value)}
        result.allocation = dataclasses.replace(result.allocation, scores=finite)
        self.save_allocation(Path(self.args.output_dir) / ALLOCATION_DIR, overwrite=True)

    def _with_provenance(self, budgets: list[int], score: float) -> BudgetAllocation:
        args = self.args
        task = None
        if "task" in getattr(self.train_dataset, "column_names", []):
            task = str(self.train_dataset[0]["task"])
        # base_model only holds a Hub repo id (the model card turns it into metadata and a loading snippet); a
        # model from another local directory is named in `extra` instead.
        base_model = hub_model_id(self.model)
        extra: dict[str, Any] = {
            "constraint": args.constraint,
            "group_order": args.group_order,
            "engine": args.engine,
            # The bounds every candidate was clipped to: a layer at max_budget may have wanted more.
            "min_budget": args.min_budget,
            "max_budget": args.max_budget,
        }
        if self.state.initial_budgets is not None:
            # The budgets too: the source may be a path that later holds something else (or this very result).
            extra["initial_allocation"] = args.initial_allocation
            extra["initial_budgets"] = list(self.state.initial_budgets)
        if base_model is None:
            extra["model"] = model_name(self.model)
        commit = getattr(self.model.config, "_commit_hash", None)
        return BudgetAllocation(
            budgets=list(budgets),
            window_size=args.window_size,
            kernel_size=args.kernel_size,
            pooling=args.pooling,
            policy="snapkv",
            target_mean_budget=float(args.target_budget),
            base_model=base_model,
            base_model_revision=commit
            if base_model is not None and isinstance(commit, str) and commit
            else None,
            task=task,
            metric_name=self.metric_key,
            metric_value=float(score) if math.isfinite(score) else None,
            search_group_size=args.group_size,
            search_population_size=args.population_size,
            search_generations=args.generations_per_group,
            search_seed=args.seed,
            search_num_samples=len(self.train_samples),
            search_lambda=args.cache_score_lambda,
            search_gamma=args.cache_score_gamma,
            search_sigma0=args.sigma0,
            extra=extra,
        )

    def evaluate(self, allocation: BudgetAllocation | None = None, dataset: Any = None) -> dict[str, float]:
        """Score an allocation on held-out samples, alongside uniform and pyramid at the same mean budget.

        Returns ``{"evolkv": ..., "uniform": ..., "pyramid": ...}`` (the metric key of the search).
        """
        if allocation is None:
            if self._result is None:
                raise ValueError("No allocation: run search() first or pass allocation=.")
            allocation = self._result.allocation
        data = _validated(dataset, "dataset") if dataset is not None else self.eval_dataset
        if data is None:
            raise ValueError("No eval_dataset was given: pass dataset=.")
        samples = self._encode(data)
        references = [list(sample["answers"]) for sample in data]
        mean = allocation.mean
        methods = {
            "evolkv": allocation.budgets,
            "uniform": BudgetAllocation.uniform(
                self.num_layers, mean, window_size=self.args.window_size
            ).budgets,
            "pyramid": BudgetAllocation.pyramid(
                self.num_layers, mean, window_size=self.args.window_size
            ).budgets,
        }
        from ..cache import EvolKVCache

        results = {}
        options = self.options.as_kwargs()
        for name, budgets in methods.items():

            def factory(budgets: list[int] = budgets) -> EvolKVCache:
                return EvolKVCache(self.model, budgets, **options)

            answers = generate_answers(
                self.model, self.tokenizer, samples, factory, batch_size=self.args.eval_batch_size
            )
            results[name] = self._score(answers, references)
        return results

    def save_allocation(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save the completed best allocation (with its model card) to ``directory``."""
        if self._result is None:
            raise ValueError("No allocation yet: run search() first.")
        self._result.allocation.save_pretrained(directory, overwrite=overwrite)
        return Path(directory)

    def push_to_hub(self, repo_id: str | None = None, **kwargs: Any) -> str:
        """Push the completed allocation and its model card to the Hub."""
        if self._result is None:
            raise ValueError("No allocation yet: run search() first.")
        repo = repo_id or self.args.hub_model_id
        if not repo:
            raise ValueError("Pass repo_id or set SearchArguments.hub_model_id.")
        return str(self._result.allocation.push_to_hub(repo, **kwargs))

    # ------------------------------------------------------------------ checkpoints
    def _check_output_dir(self, output_dir: Path) -> None:
        if output_dir.is_dir() and any(output_dir.iterdir()) and not self.args.overwrite_output_dir:
            raise FileExistsError(
                f"output_dir {output_dir} is not empty. Resume with search(resume_from_checkpoint=True), choose a "
                "new output_dir, or set overwrite_output_dir=True to start over (the previous search's log, "
                "checkpoints, allocation/ and runs/ are deleted)."
            )
        if self.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            # overwrite_output_dir: a new search must not be mixed with an old one's log, checkpoints, final
            # allocation (it would sit beside the new checkpoints if this search stopped early) or TensorBoard
            # events. Other files in output_dir are not the search's and stay.
            log = output_dir / LOG_FILE
            if log.exists():
                log.unlink()
            for old in [
                *checkpoint_dirs(output_dir),
                output_dir / ALLOCATION_DIR,
                output_dir / TENSORBOARD_DIR,
            ]:
                if old.is_dir():
                    shutil.rmtree(old)

    def _check_foreign_resume(self, checkpoint: Path, output_dir: Path) -> None:
        """A checkpoint from another directory may only continue into an ``output_dir`` without a search."""
        if checkpoint.resolve().parent == output_dir.resolve() or not output_dir.is_dir():
            return
        if checkpoint_dirs(output_dir) or (output_dir / LOG_FILE).exists():
            raise FileExistsError(
                f"Cannot resume {checkpoint} into {output_dir}: that directory holds another search (its log or "
                "checkpoints would be mixed with this one's, and rotation could delete them). Resume into the "
                "checkpoint's own directory or into an empty output_dir."
            )

    def _resolve_resume(self, resume: bool | str | os.PathLike[str] | None, output_dir: Path) -> Path | None:
        if resume is None or resume is False:
            return None
        if resume is True:
            path = latest_checkpoint(output_dir)
            if path is None:
                raise FileNotFoundError(f"resume_from_checkpoint=True but {output_dir} holds no checkpoint.")
            return path
        if isinstance(resume, bool) or not isinstance(resume, (str, os.PathLike)):
            raise TypeError(
                "resume_from_checkpoint takes True, None or the path of a checkpoint-<n> directory, got "
                f"{type(resume).__name__} {resume!r}."
            )
        text = os.fspath(resume)
        if not text or not os.path.isdir(text):
            # A checkpoint holds a pickled optimiser state: it is only ever read from a local directory.
            raise CheckpointError(
                f"resume_from_checkpoint={text!r} is not an existing local directory. It takes True (the latest "
                "checkpoint in output_dir) or the path of a checkpoint-<n> directory written by a search; "
                "checkpoints are never loaded from a Hub repo or a URL."
            )
        return Path(text)

    def _state_dict(self) -> dict[str, Any]:
        log = Path(self.args.output_dir) / LOG_FILE
        return {
            "version": STATE_VERSION,
            "search_state": dataclasses.asdict(self.state),
            "fitness_cache": self._fitness_cache,
            "args": self.args.to_dict(),
            "search_samples_fingerprint": self._samples_fingerprint,
            "search_identity": self._search_identity(),
            "versions": package_versions(),
            # How much of the JSONL log this state accounts for; a resume drops what was logged after it.
            "log_bytes": log.stat().st_size if self.is_main_process and log.is_file() else 0,
        }

    def _search_identity(self) -> dict[str, Any]:
        """What the cached scores depend on besides the samples and the arguments: the model and the metric."""
        from ..metrics import metric_label

        return {
            "model": model_name(self.model),  # the Hub id when there is one, else the folder name
            "model_revision": getattr(self.model.config, "_commit_hash", None),
            "model_dtype": str(getattr(self.model, "dtype", None)),  # bfloat16 and float32 answers differ
            "metric": metric_label(self.metric),
            "metric_key": self.metric_key,
        }

    def _save(self, strategy: GroupStrategy | None) -> None:
        if not self.is_main_process:
            return
        optimizer_state = strategy.state_bytes() if strategy is not None else b""
        path = save_checkpoint(
            self.args.output_dir,
            self.state.global_generation,
            self._state_dict(),
            optimizer_state,
            save_total_limit=self.args.save_total_limit,
        )
        self._fire("on_save", checkpoint=str(path))

    def _restore(self, path: Path, groups: list[list[int]]) -> GroupStrategy | None:
        payload, optimizer_state = load_checkpoint(path)
        saved_args = payload.get("args", {})
        for name in _RESUME_MUST_MATCH:
            if name in saved_args and saved_args[name] != getattr(self.args, name):
                raise ValueError(
                    f"Cannot resume: the checkpoint was written with {name}={saved_args[name]!r}, now "
                    f"{getattr(self.args, name)!r}. Use the same SearchArguments to resume."
                )
        saved_fingerprint = payload.get("search_samples_fingerprint")  # absent in older checkpoints
        if saved_fingerprint is not None and saved_fingerprint != self._samples_fingerprint:
            raise ValueError(
                f"Cannot resume {path}: it was written for other search samples (its cached scores would be "
                "reused for these). Resume with the same train_dataset, tokenizer and max_new_tokens, or start a "
                "new search in another output_dir."
            )
        saved_identity = payload.get("search_identity")  # absent in older checkpoints
        if isinstance(saved_identity, dict):
            current = self._search_identity()
            changed = [
                key for key in current if key in saved_identity and saved_identity[key] != current[key]
            ]
            if changed:
                differences = ", ".join(
                    f"{key}={saved_identity[key]!r}, now {current[key]!r}" for key in changed
                )
                raise ValueError(
                    f"Cannot resume {path}: it was written with {differences} (its cached scores and best "
                    "allocation were measured that way). Resume with the same model (and dtype) and metric, or "
                    "start a new search in another output_dir."
                )
        self.state = SearchState(**payload["search_state"])
        self._fitness_cache = dict(payload.get("fitness_cache", {}))
        if len(self.state.base_budgets) != self.num_layers or self.state.num_groups != len(groups):
            raise ValueError(
                "Cannot resume: the checkpoint was written for a model with a different layer count."
            )
        self._truncate_log(payload.get("log_bytes"))
        return GroupStrategy.from_state_bytes(optimizer_state) if optimizer_state else None

    def _truncate_log(self, log_bytes: Any) -> None:
        """Drop the log entries a killed run wrote after the checkpoint being resumed (they are redone)."""
        log = Path(self.args.output_dir) / LOG_FILE
        if not self.is_main_process or isinstance(log_bytes, bool) or not isinstance(log_bytes, int):
            return
        if log.is_file() and log.stat().st_size > log_bytes:
            with open(log, "r+b") as handle:
                handle.truncate(log_bytes)

    # ------------------------------------------------------------------ events
    def _fire(self, event: str, **kwargs: Any) -> None:
        self.callback_handler.fire(event, self.args, self.state, self.control, **kwargs)

    def _log(self, logs: dict[str, Any]) -> None:
        self.state.log_history.append(logs)
        self._fire("on_log", logs=logs)


def _validated(dataset: Any, name: str) -> Any:
    from ..tasks import validate_task_dataset

    if dataset is None:
        raise ValueError(f"{name} is required.")
    try:
        empty = len(dataset) == 0
    except TypeError:
        empty = False
    if empty:
        raise ValueError(f"{name} is empty: it needs at least one sample.")
    if isinstance(dataset, list):
        from datasets import Dataset

        dataset = Dataset.from_list(dataset)
    validate_task_dataset(dataset)
    return dataset


def _resolve_metric(metric: Any, dataset: Any) -> Any:
    """The search metric; ``None`` picks the task's partial-credit metric for a built-in task."""
    from ..metrics import resolve_metric
    from ..tasks import TASKS

    task = str(dataset[0]["task"]) if "task" in dataset.column_names else None
    default = TASKS[task].partial_credit_metric if task in TASKS else None
    if metric is None and default is None:
        raise ValueError("metric is required for a dataset without a built-in `task` column.")
    return resolve_metric(metric, default)[0]


def _process_info() -> tuple[bool, int, int]:
    """(is main process, process index, number of processes) under ``accelerate launch`` / torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return True, 0, 1
    import torch
    from accelerate import PartialState

    # On a machine without accelerators the processes talk over gloo (accelerate's MULTI_CPU).
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.is_main_process, state.process_index, state.num_processes


def _cache_key(budgets: Sequence[int]) -> str:
    """Key of a scheme in the fitness cache."""
    return ",".join(map(str, budgets))
