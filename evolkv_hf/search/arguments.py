"""``SearchArguments``: the settings of a budget search, usable with ``HfArgumentParser``."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .._validation import POOLINGS, check_positive_int, check_positive_number

CONSTRAINTS = ("penalty", "project")
GROUP_ORDERS = ("bottom_up", "top_down")
SAVE_STRATEGIES = ("generation", "group", "no")
ENGINES = ("prefill_once", "plain")
REPORT_TO = ("tensorboard", "wandb", "all", "none")


def default_population_size(group_size: int) -> int:
    """CMA-ES's default population, ``4 + floor(3 ln n)`` (10 for groups of 8)."""
    return 4 + math.floor(3 * math.log(max(group_size, 1)))


@dataclass
class SearchArguments:
    """Settings of an EvolKV budget search (group-wise CMA-ES over per-layer budgets).

    Example
    -------
    >>> args = SearchArguments(output_dir="runs/smollm2-c128", target_budget=128, generations_per_group=15)
    >>> args.population_size
    10
    """

    output_dir: str = field(
        metadata={"help": "Where checkpoints, logs and the final allocation are written."}
    )
    target_budget: float = field(
        default=128,
        metadata={"help": "Target mean tokens per layer (c); the final allocation has exactly c*L."},
    )
    group_size: int = field(default=8, metadata={"help": "Layers optimised together by one CMA-ES (n_g)."})
    population_size: int | None = field(
        default=None, metadata={"help": "Candidates per generation (default 4 + floor(3 ln group_size))."}
    )
    generations_per_group: int = field(default=15, metadata={"help": "CMA-ES generations per group."})
    sigma0: float = field(default=0.3, metadata={"help": "Initial CMA-ES step size, in units of c."})
    cache_score_lambda: float = field(
        default=0.3,
        metadata={"help": "Weight lambda of the CacheScore in F = f * (1 + lambda * CacheScore)."},
    )
    cache_score_gamma: float = field(
        default=0.2, metadata={"help": "Penalty slope gamma in [0, 1] for schemes below the target mean."}
    )
    constraint: str = field(
        default="penalty",
        metadata={
            "help": "'penalty': the paper's soft CacheScore; 'project': rescale every candidate to the exact "
            "target mean before evaluating it.",
            "choices": list(CONSTRAINTS),
        },
    )
    min_budget: int | None = field(
        default=None, metadata={"help": "Smallest per-layer budget (default: window_size)."}
    )
    max_budget: int | None = field(
        default=None, metadata={"help": "Largest per-layer budget (default: 4 * target_budget)."}
    )
    initial_allocation: str | None = field(
        default=None,
        metadata={
            "help": "Directory or Hub repo id of a saved BudgetAllocation to start from (a warm start, e.g. to "
            "continue an earlier search for more generations); rescaled to target_budget within [min_budget, "
            "max_budget]. Default: uniform budgets."
        },
    )
    window_size: int = field(default=32, metadata={"help": "Observation window of the SnapKV selector."})
    kernel_size: int = field(default=7, metadata={"help": "Pooling kernel of the SnapKV selector."})
    pooling: str = field(
        default="avg", metadata={"help": "'avg' or 'max' pooling.", "choices": list(POOLINGS)}
    )
    group_order: str = field(
        default="bottom_up",
        metadata={"help": "Order in which layer groups are optimised.", "choices": list(GROUP_ORDERS)},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the optimiser (the search is deterministic)."})
    eval_batch_size: int = field(default=8, metadata={"help": "Samples decoded together per candidate."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Cap on generated tokens (default: each sample's max_new_tokens)."}
    )
    engine: str = field(
        default="prefill_once",
        metadata={
            "help": "'prefill_once': prefill each sample once and evaluate candidates by gathering and batched "
            "decoding; 'plain': run generate with a fresh EvolKVCache per candidate.",
            "choices": list(ENGINES),
        },
    )
    engine_storage_device: str | None = field(
        default=None, metadata={"help": "Device holding the prefilled K/V of the prefill-once engine."}
    )
    engine_max_storage_gb: float = field(
        default=8.0,
        metadata={"help": "Memory cap (GiB) for stored prefills; samples beyond it are recomputed."},
    )
    save_strategy: str = field(
        default="generation",
        metadata={"help": "When to write a checkpoint.", "choices": list(SAVE_STRATEGIES)},
    )
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most this many checkpoints (oldest deleted first)."}
    )
    logging_steps: int = field(default=1, metadata={"help": "Log every this many generations."})
    report_to: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Integrations to report to ('tensorboard', 'wandb'; 'all': every one installed; 'none')."
        },
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Push the final allocation to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repo id for push_to_hub."})
    metric_for_best_model: str | None = field(
        default=None, metadata={"help": "Key of the metric dict used as f(S) (default: its only/first key)."}
    )
    greater_is_better: bool | None = field(
        default=None,
        metadata={
            "help": "Whether a larger metric is better (default: True, or False when metric_for_best_model "
            "ends with 'loss', as in TrainingArguments)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow starting a new search in a non-empty output_dir (the previous search's log, checkpoints, "
            "allocation/ and runs/ are deleted; other files stay)."
        },
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bars."})

    def __post_init__(self) -> None:
        # Stored as str: checkpoints record the arguments as JSON.
        if isinstance(self.output_dir, os.PathLike):
            self.output_dir = os.fspath(self.output_dir)
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(f"output_dir must be a non-empty path, got {self.output_dir!r}.")
        for name in ("overwrite_output_dir", "push_to_hub", "disable_tqdm", "greater_is_better"):
            value = getattr(self, name)
            if isinstance(value, np.bool_):  # stored as a plain bool (checkpoints record it as JSON)
                value = bool(value)
                setattr(self, name, value)
            if not isinstance(value, bool) and not (name == "greater_is_better" and value is None):
                raise TypeError(
                    f"{name} must be True or False, got {type(value).__name__} {value!r} (the string 'false' "
                    "would count as true)."
                )
        if self.engine_storage_device is not None and not isinstance(self.engine_storage_device, str):
            import torch

            if not isinstance(self.engine_storage_device, torch.device):
                raise TypeError(
                    "engine_storage_device must be a device name such as 'cpu' or 'cuda:0', got "
                    f"{type(self.engine_storage_device).__name__} {self.engine_storage_device!r}."
                )
            self.engine_storage_device = str(self.engine_storage_device)  # stored by name, as JSON
        if isinstance(self.initial_allocation, os.PathLike):
            self.initial_allocation = os.fspath(self.initial_allocation)
        if self.initial_allocation is not None and not isinstance(self.initial_allocation, str):
            raise TypeError(
                "initial_allocation must be the directory or Hub repo id of a saved BudgetAllocation, got "
                f"{type(self.initial_allocation).__name__} {self.initial_allocation!r}; save a BudgetAllocation "
                "object with save_pretrained(dir) first."
            )
        if self.initial_allocation == "":
            raise ValueError(
                "initial_allocation is empty: pass the directory or Hub repo id of a saved BudgetAllocation, or "
                "None to start from uniform budgets."
            )
        if self.report_to is None:
            self.report_to = []
        elif isinstance(self.report_to, str):
            self.report_to = [] if self.report_to in ("none", "") else [self.report_to]
        if self.greater_is_better is None:
            self.greater_is_better = not (self.metric_for_best_model or "").endswith("loss")
        unknown = [name for name in self.report_to if name not in REPORT_TO]
        if unknown:
            raise ValueError(f"report_to takes {list(REPORT_TO)}, got {unknown!r}.")
        # Check what the user gave before deriving defaults from it, so that a wrong type is reported by name
        # (not as an arithmetic error inside a default). Stored back as plain numbers (numpy ones are accepted)
        # so that checkpoints serialise them as JSON.
        for name in ("group_size", "generations_per_group", "window_size", "kernel_size", "eval_batch_size"):
            setattr(self, name, check_positive_int(name, getattr(self, name)))
        self.logging_steps = check_positive_int("logging_steps", self.logging_steps)
        self.seed = check_positive_int("seed", self.seed, minimum=0)
        for name in ("population_size", "min_budget", "max_budget", "max_new_tokens", "save_total_limit"):
            if getattr(self, name) is not None:
                minimum = 2 if name == "population_size" else 1
                setattr(self, name, check_positive_int(name, getattr(self, name), minimum=minimum))
        self.target_budget = check_positive_number("target_budget", self.target_budget)
        self.sigma0 = check_positive_number("sigma0", self.sigma0)
        self.cache_score_lambda = check_positive_number(
            "cache_score_lambda", self.cache_score_lambda, allow_zero=True
        )
        self.cache_score_gamma = check_positive_number(
            "cache_score_gamma", self.cache_score_gamma, allow_zero=True
        )
        if self.cache_score_gamma > 1:
            raise ValueError(
                f"cache_score_gamma must be in [0, 1], got {self.cache_score_gamma}: above 1 the CacheScore of a "
                "scheme far below the target turns negative, and the fitness would rank a worse score higher."
            )
        self.engine_max_storage_gb = check_positive_number(
            "engine_max_storage_gb", self.engine_max_storage_gb, allow_zero=True
        )
        if self.population_size is None:
            self.population_size = default_population_size(self.group_size)
        if self.min_budget is None:
            self.min_budget = self.window_size
        if self.max_budget is None:
            self.max_budget = max(math.ceil(4 * self.target_budget), self.min_budget)
        if self.target_budget < self.min_budget:
            raise ValueError(
                f"target_budget ({self.target_budget}) is below the per-layer floor min_budget ({self.min_budget}, "
                "by default the window size): no allocation can reach it. Raise target_budget or lower min_budget "
                "(and window_size)."
            )
        if self.max_budget < self.target_budget:
            raise ValueError(
                f"max_budget ({self.max_budget}) must be at least target_budget ({self.target_budget})."
            )
        for name, value, choices in (
            ("constraint", self.constraint, CONSTRAINTS),
            ("group_order", self.group_order, GROUP_ORDERS),
            ("save_strategy", self.save_strategy, SAVE_STRATEGIES),
            ("engine", self.engine, ENGINES),
            ("pooling", self.pooling, POOLINGS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")
        if self.engine == "prefill_once" and self.min_budget < self.window_size:
            raise ValueError(
                f"engine='prefill_once' needs min_budget >= window_size ({self.window_size}); use engine='plain' "
                "for smaller budgets."
            )
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub=True needs hub_model_id (e.g. 'user/model-evolkv-c128').")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
