"""``BudgetAllocation``: per-layer KV-cache token budgets with provenance, saved as JSON and shared on the Hub."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import io
import json
import math
import numbers
import os
import reprlib
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelHubMixin

from .._validation import POOLINGS, check_positive_int
from ..versions import package_versions
from .arithmetic import distribute, pyramid_weights, resolve_floor, target_total
from .hub import ALLOCATION_FILE, AllocationPushError, atomic_write, locate_allocation_file, read_json_file
from .model_card import (
    PAPER_URL,
    PLACEHOLDER_REPO,
    PLOT_FILE,
    RESCALED_FROM,
    is_unedited_card,
    looks_like_repo_id,
    render_model_card,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from typing_extensions import Self

__all__ = ["FORMAT_VERSION", "POOLING_CHOICES", "BudgetAllocation"]

FORMAT_VERSION = 1
"""Version of the ``allocation.json`` layout written by this release; files with a higher one are refused."""

POOLING_CHOICES = POOLINGS
"""Accepted ``pooling`` values (the cache's)."""
_POOLING_ALIASES = {"avgpool": "avg", "maxpool": "max"}  # SnapKV spelling
_CARD_FILE = "README.md"
_OWN_FILES = (ALLOCATION_FILE, _CARD_FILE, PLOT_FILE)


def _check_format_version(value: object) -> int:
    """Return the format version, refusing one newer than this release reads (with how to upgrade)."""
    version = check_positive_int("format_version", value)
    if version > FORMAT_VERSION:
        raise ValueError(
            f"This allocation uses format version {version}, but this evolkv_hf release reads up to version "
            f"{FORMAT_VERSION}. Upgrade with `pip install -U evolkv-hf`."
        )
    return version


def _show_number(value: object) -> str:
    """``value`` for an error message; a huge integer (which ``str`` refuses past 4300 digits) by its size."""
    if isinstance(value, numbers.Integral) and abs(int(value)).bit_length() > 64:
        return f"<a {abs(int(value)).bit_length()}-bit integer>"
    return f"{value!r}" if isinstance(value, float) else f"{value}"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


# Ranges of the schema. Allocation files come from anywhere (any Hub repo): values outside them are refused
# when loaded rather than failing later (float overflow in `mean`, torch overflow in pooling, huge cards).
MAX_LAYERS = 4096
MAX_TOKENS = 2**31 - 1  # budgets, window_size, kernel_size
MAX_STRING_LENGTH = 4096  # base_model, base_model_revision, task, metric_name, policy, created_at


# -- field validators (raise TypeError for wrong types, ValueError for wrong values) --------------------------
def _opt_str(name: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string or None, got {type(value).__name__} {value!r}.")
    if value is not None and len(value) > MAX_STRING_LENGTH:
        raise ValueError(f"{name} has {len(value)} characters; at most {MAX_STRING_LENGTH} are allowed.")


def _token_count(name: str, value: object) -> int:
    number = check_positive_int(name, value)
    if number > MAX_TOKENS:
        raise ValueError(f"{name} = {number} is larger than the maximum of {MAX_TOKENS} tokens.")
    return number


def _opt_int(name: str, value: object, minimum: int) -> int | None:
    return None if value is None else check_positive_int(name, value, minimum=minimum)


def _opt_float(
    name: str, value: object, *, minimum: float | None = None, strict: bool = False
) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or None, got {type(value).__name__} {value!r}.")
    try:
        number = float(value)
    except OverflowError:  # an int with hundreds of digits
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {reprlib.repr(value)}.")
    if minimum is not None and (number <= minimum if strict else number < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}.")
    return number


def _str_dict(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise TypeError(f"{name} must be a dict with string keys, got {value!r}.")
    return dict(value)


def _can_plot() -> bool:
    """Whether matplotlib is installed, so that ``budgets.png`` is written and the model card shows it."""
    return importlib.util.find_spec("matplotlib") is not None


@dataclass(frozen=True)
class BudgetAllocation(
    ModelHubMixin,
    library_name="evolkv_hf",
    tags=["kv-cache", "evolkv"],
    paper_url=PAPER_URL,
):
    """Per-layer KV-cache token budgets for one decoder model, with the provenance needed to reproduce them.

    ``budgets[i]`` is the number of prompt tokens layer ``i`` keeps after prefill, **observation window
    included** (SnapKV convention). Allocations are immutable: :meth:`rescale` and friends return new ones.
    Saved as ``allocation.json`` (JSON only, never pickle) plus a model card and a bar chart.

    Parameters
    ----------
    budgets : list of int
        One positive integer budget per decoder layer, bottom layer first.
    **provenance
        Every other field is optional provenance; see the field list (each has ``metadata["help"]``).

    Example
    -------
    >>> from evolkv_hf.allocation import BudgetAllocation
    >>> alloc = BudgetAllocation.pyramid(num_layers=4, mean_budget=128)
    >>> alloc.budgets, alloc.total
    ([219, 158, 98, 37], 512)
    >>> alloc.rescale(256).mean
    256.0
    >>> BudgetAllocation(budgets=[64, 128, 192]).compression_ratio(context_length=1024)
    0.875
    """

    budgets: list[int] = field(
        metadata=_help(
            "Token budget per decoder layer (bottom first), observation window included; ints >= 1."
        )
    )
    num_layers: int = field(
        default=0,
        metadata=_help("Number of decoder layers; 0 (default) infers it from `budgets`, else must match."),
    )
    window_size: int = field(
        default=32,
        metadata=_help("Observation window: last prompt tokens always kept and used to score the prefix."),
    )
    kernel_size: int = field(
        default=7, metadata=_help("Pooling kernel size applied to the attention scores.")
    )
    pooling: str = field(
        default="avg",
        metadata=_help(
            f"Pooling of attention scores: one of {POOLING_CHOICES} ('avgpool'/'maxpool' accepted)."
        ),
    )
    policy: str = field(
        default="snapkv",
        metadata=_help("Name of the in-layer token selection policy the budgets were found with."),
    )
    target_mean_budget: float | None = field(
        default=None, metadata=_help("Mean budget per layer this allocation was made for (tokens).")
    )
    base_model: str | None = field(default=None, metadata=_help("Hub id (or path) of the model searched on."))
    base_model_revision: str | None = field(
        default=None, metadata=_help("Commit / revision of the base model.")
    )
    task: str | None = field(default=None, metadata=_help("Task or dataset the budgets were optimised on."))
    metric_name: str | None = field(default=None, metadata=_help("Name of the metric optimised (e.g. 'f1')."))
    metric_value: float | None = field(
        default=None, metadata=_help("Value of that metric with these budgets.")
    )
    scores: dict[str, float] = field(
        default_factory=dict,
        metadata=_help("Other named scores, e.g. baselines at the same mean budget: {'uniform': 0.41}."),
    )
    search_group_size: int | None = field(default=None, metadata=_help("Layers per group optimised jointly."))
    search_population_size: int | None = field(default=None, metadata=_help("CMA-ES population size."))
    search_generations: int | None = field(default=None, metadata=_help("CMA-ES generations per group."))
    search_lambda: float | None = field(
        default=None, metadata=_help("Weight of the cache-size score (lambda).")
    )
    search_gamma: float | None = field(
        default=None, metadata=_help("Under-budget penalty of the cache score (gamma).")
    )
    search_sigma0: float | None = field(default=None, metadata=_help("Initial CMA-ES step size (sigma0)."))
    search_seed: int | None = field(default=None, metadata=_help("Random seed of the search."))
    search_num_samples: int | None = field(
        default=None, metadata=_help("Number of samples scored per candidate.")
    )
    extra: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help(
            "Free-form JSON-serialisable provenance (e.g. {'query_aware': True, 'chat_template': True})."
        ),
    )
    package_versions: dict[str, str] = field(
        default_factory=package_versions,
        metadata=_help(
            "Versions of python, evolkv_hf, transformers, torch, huggingface_hub (filled in if omitted)."
        ),
    )
    created_at: str | None = field(
        default_factory=_utc_now, metadata=_help("Creation time, UTC ISO 8601 (filled in if omitted).")
    )
    format_version: int = field(
        default=FORMAT_VERSION, metadata=_help("Version of the allocation.json layout.")
    )

    # ModelHubMixin builds a config from __init__ arguments in __new__ (and would write it as config.json);
    # everything lives in allocation.json instead, and a frozen dataclass cannot take the extra attribute.
    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        return object.__new__(cls)

    def __post_init__(self) -> None:
        # First: a file from a newer release may change any other field, and "upgrade" is the useful answer.
        _check_format_version(self.format_version)
        budgets = self.budgets
        # A 1-d numpy array or torch tensor becomes a list (of plain ints when its dtype is an integer one).
        if getattr(budgets, "ndim", None) == 1 and hasattr(budgets, "tolist"):
            budgets = budgets.tolist()
        if isinstance(budgets, (str, bytes)) or not isinstance(budgets, (list, tuple)):
            raise TypeError(f"budgets must be a list of ints, got {type(budgets).__name__} {budgets!r}.")
        if not budgets:
            raise ValueError("budgets must contain one budget per decoder layer, got an empty list.")
        if len(budgets) > MAX_LAYERS:
            raise ValueError(
                f"budgets has {len(budgets)} entries; at most {MAX_LAYERS} decoder layers are supported."
            )
        clean: list[int] = []
        for i, budget in enumerate(budgets):
            if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
                raise TypeError(
                    f"budgets[{i}] must be an int (number of tokens), got {type(budget).__name__} {budget!r}."
                )
            if budget < 1:
                raise ValueError(
                    f"budgets[{i}] = {budget}: every layer needs a budget >= 1 token (a layer cannot be evicted "
                    "entirely). Use rescale(mean_budget) to rebalance."
                )
            if budget > MAX_TOKENS:
                raise ValueError(
                    f"budgets[{i}] = {_show_number(budget)} is larger than the maximum of {MAX_TOKENS} tokens."
                )
            clean.append(int(budget))
        set_ = object.__setattr__
        set_(self, "budgets", clean)
        num_layers = check_positive_int("num_layers", self.num_layers, minimum=0)
        if num_layers not in (0, len(clean)):
            raise ValueError(
                f"num_layers is {num_layers} but budgets has {len(clean)} entries; they must agree "
                "(omit num_layers to infer it)."
            )
        set_(self, "num_layers", len(clean))
        set_(self, "window_size", _token_count("window_size", self.window_size))
        set_(self, "kernel_size", _token_count("kernel_size", self.kernel_size))
        pooling = _POOLING_ALIASES.get(self.pooling, self.pooling) if isinstance(self.pooling, str) else None
        if pooling not in POOLING_CHOICES:
            raise ValueError(f"pooling must be one of {POOLING_CHOICES}, got {self.pooling!r}.")
        set_(self, "pooling", pooling)
        if not isinstance(self.policy, str) or not self.policy:
            raise TypeError(f"policy must be a non-empty string, got {self.policy!r}.")
        for name in ("policy", "base_model", "base_model_revision", "task", "metric_name", "created_at"):
            _opt_str(name, getattr(self, name))
        if self.created_at is not None:
            try:
                datetime.fromisoformat(self.created_at)
            except ValueError as err:
                raise ValueError(
                    f"created_at must be an ISO 8601 timestamp, got {self.created_at!r}."
                ) from err
        set_(
            self,
            "target_mean_budget",
            _opt_float("target_mean_budget", self.target_mean_budget, minimum=0, strict=True),
        )
        set_(self, "metric_value", _opt_float("metric_value", self.metric_value))
        scores = _str_dict("scores", self.scores)
        set_(self, "scores", {key: _opt_float(f"scores[{key!r}]", value) for key, value in scores.items()})
        if any(value is None for value in self.scores.values()):
            raise TypeError(f"scores values must be numbers, got {scores!r}.")
        for name in (
            "search_group_size",
            "search_population_size",
            "search_generations",
            "search_num_samples",
        ):
            set_(self, name, _opt_int(name, getattr(self, name), minimum=1))
        set_(self, "search_seed", _opt_int("search_seed", self.search_seed, minimum=0))
        set_(self, "search_lambda", _opt_float("search_lambda", self.search_lambda, minimum=0))
        set_(self, "search_gamma", _opt_float("search_gamma", self.search_gamma, minimum=0))
        set_(self, "search_sigma0", _opt_float("search_sigma0", self.search_sigma0, minimum=0, strict=True))
        extra = _str_dict("extra", self.extra)
        try:
            # Stored as its JSON form (tuples become lists), so a saved and reloaded allocation compares equal.
            extra = json.loads(json.dumps(extra, allow_nan=False))
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"extra must be JSON-serialisable (finite numbers, str, list, dict): {err}"
            ) from err
        set_(self, "extra", extra)
        versions = _str_dict("package_versions", self.package_versions)
        if not all(isinstance(value, str) for value in versions.values()):
            raise TypeError(f"package_versions values must be strings, got {versions!r}.")
        set_(self, "package_versions", versions)

    # -- constructors ----------------------------------------------------------------------------------------
    @classmethod
    def uniform(cls, num_layers: int, mean_budget: float, **provenance: Any) -> Self:
        """Same budget in every layer (SnapKV's allocation).

        The total is ``round(mean_budget * num_layers)`` (halves up); when it is not a multiple of
        ``num_layers`` the lowest layers get one token more.

        Parameters
        ----------
        num_layers : int
            Number of decoder layers.
        mean_budget : float
            Tokens per layer on average.
        **provenance
            Other fields (``window_size``, ``base_model``, ...).
        """
        total = target_total(mean_budget, num_layers)
        budgets = distribute([1] * num_layers, total)
        provenance.setdefault("target_mean_budget", mean_budget)
        return cls(budgets=budgets, **provenance)

    @classmethod
    def pyramid(
        cls,
        num_layers: int,
        mean_budget: float,
        *,
        beta: float = 20.0,
        floor: int | None = None,
        **provenance: Any,
    ) -> Self:
        """PyramidKV's allocation: budgets decrease linearly from the bottom layer to the top, same mean.

        Following PyramidKV (Cai et al., 2024, arXiv:2406.02069), every layer keeps a base of ``floor`` tokens
        (default: the window size, capped at the mean so small targets still work) and the surplus
        ``m = mean - floor`` is tilted: the top layer gets ``floor + m / beta``, the bottom layer
        ``floor + 2m - m / beta``, linear in between. Shares are rounded by largest remainder so the total is
        exactly ``round(mean_budget * num_layers)``; no layer goes below ``floor``.

        Parameters
        ----------
        num_layers : int
            Number of decoder layers (1 gives a single layer with the whole budget).
        mean_budget : float
            Tokens per layer on average.
        beta : float, default 20
            PyramidKV's steepness (``>= 1``); 1 is uniform, larger keeps fewer tokens in the top layer.
        floor : int, optional
            Minimum (base) budget of every layer; default ``min(window_size, total // num_layers)``.
        **provenance
            Other fields (``window_size``, ``base_model``, ...).
        """
        total = target_total(mean_budget, num_layers)
        window_size = provenance.get("window_size", cls.__dataclass_fields__["window_size"].default)
        base = resolve_floor(floor, check_positive_int("window_size", window_size), total, num_layers)
        if total < base * num_layers:
            raise ValueError(
                f"Infeasible pyramid: mean_budget={mean_budget} is below the floor of {base} tokens per layer; "
                "raise the mean budget or pass a smaller floor."
            )
        weights = pyramid_weights(num_layers, total, base=base, beta=beta)
        budgets = distribute(weights, total, floor=base)
        provenance.setdefault("target_mean_budget", mean_budget)
        return cls(budgets=budgets, **provenance)

    @classmethod
    def for_model(
        cls, model: Any, mean_budget: float, kind: Literal["uniform", "pyramid"] = "uniform", **kwargs: Any
    ) -> Self:
        """Allocation sized for ``model`` (a ``PreTrainedModel`` or its ``PretrainedConfig``).

        The layer count is ``config.get_text_config(decoder=True).num_hidden_layers``. ``base_model`` (and
        ``base_model_revision`` when the config records a commit hash) are filled in when the model's
        ``name_or_path`` is a Hub repo id. Remaining ``kwargs`` go to :meth:`uniform` or :meth:`pyramid`.
        """
        config = getattr(model, "config", model)
        name = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None)
        text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        num_layers = getattr(text_config, "num_hidden_layers", None)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(
                f"Cannot read the number of decoder layers from {type(model).__name__}: expected a positive "
                f"`num_hidden_layers` on its (text) config, got {num_layers!r}. Pass a model or config, or use "
                "BudgetAllocation.uniform(num_layers, mean_budget)."
            )
        if isinstance(name, str) and looks_like_repo_id(name) and kwargs.get("base_model") in (None, name):
            # The config's commit is this model's: it is recorded only for this model, not for another
            # base_model given by the caller.
            kwargs["base_model"] = name
            commit = getattr(config, "_commit_hash", None)
            if isinstance(commit, str) and commit:
                kwargs.setdefault("base_model_revision", commit)
        if kind == "uniform":
            return cls.uniform(num_layers, mean_budget, **kwargs)
        if kind == "pyramid":
            return cls.pyramid(num_layers, mean_budget, **kwargs)
        raise ValueError(f"kind must be 'uniform' or 'pyramid', got {kind!r}.")

    # -- arithmetic ------------------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        """Total number of KV tokens kept over all layers."""
        return sum(self.budgets)

    @property
    def mean(self) -> float:
        """Mean budget per layer."""
        return self.total / self.num_layers

    def rescale(self, mean_budget: float, *, floor: int | None = None, cap: int | None = None) -> Self:
        """Rescale proportionally to ``mean_budget`` tokens per layer (EvolKV's budget completion/expansion).

        The new total is exactly ``round(mean_budget * num_layers)`` (halves rounded up). Each layer gets
        ``b_i * T / sum(b)``, clamped to ``[floor, cap]`` with the excess redistributed proportionally among
        the other layers, then rounded by largest remainder. Order is preserved (a larger budget never ends
        up smaller), and an allocation already at the target within the bounds is returned unchanged.

        Parameters
        ----------
        mean_budget : float
            Target mean tokens per layer.
        floor : int, optional
            Minimum per-layer budget. Default: ``min(window_size, total // num_layers)``, i.e. the window size
            unless the target is too small for it. An explicit floor is strict.
        cap : int, optional
            Maximum per-layer budget (e.g. the context length); default none.

        Returns
        -------
        BudgetAllocation
            A new allocation with ``target_mean_budget`` set to ``mean_budget`` and the search provenance kept.
            When the budgets change, ``created_at`` is now, and scores measured at the old budgets
            (``metric_value``, ``scores``) move to ``extra["rescaled_from"]`` with the old mean, target and
            ``created_at`` (an earlier ``rescaled_from`` is kept inside the new one): the model card then never
            shows old scores as if measured at the new budgets.

        Raises
        ------
        ValueError
            If the target is infeasible: below ``floor`` or above ``cap`` on average, or under 1 token per layer.
        """
        total = target_total(mean_budget, self.num_layers)
        if total > MAX_TOKENS * self.num_layers:
            raise ValueError(
                f"mean_budget={_show_number(mean_budget)} is larger than the maximum budget of {MAX_TOKENS} tokens "
                "per layer."
            )
        floor_value = resolve_floor(floor, self.window_size, total, self.num_layers)
        budgets = distribute(self.budgets, total, floor=floor_value, cap=cap)
        if budgets == self.budgets:
            return dataclasses.replace(self, target_mean_budget=float(mean_budget))
        extra = dict(self.extra)
        if self.metric_value is not None or self.scores:
            origin: dict[str, Any] = {
                "mean_budget": self.mean,
                "target_mean_budget": self.target_mean_budget,
                "metric_name": self.metric_name,
                "metric_value": self.metric_value,
                "scores": dict(self.scores),
                "created_at": self.created_at,
            }
            if RESCALED_FROM in extra:  # an earlier origin (or a value of the user's): kept, one level down
                origin[RESCALED_FROM] = extra[RESCALED_FROM]
            extra[RESCALED_FROM] = origin
        return dataclasses.replace(
            self,
            budgets=budgets,
            target_mean_budget=float(mean_budget),
            metric_value=None,
            scores={},
            extra=extra,
            created_at=_utc_now(),
        )

    def compression_ratio(self, context_length: int) -> float:
        """Fraction of the prompt's KV cache evicted for a ``context_length``-token prompt (kvpress convention).

        ``1 - sum(min(b_i, n)) / (L * n)``: 0 means nothing evicted; layers whose budget exceeds the prompt
        keep all of it.
        """
        n = check_positive_int("context_length", context_length)
        kept = sum(min(budget, n) for budget in self.budgets)
        return float(1 - Fraction(kept, self.num_layers * n))

    def validate_for(self, num_layers: int) -> None:
        """Raise ``ValueError`` unless this allocation has exactly ``num_layers`` budgets (one per layer)."""
        num_layers = check_positive_int("num_layers", num_layers)
        if num_layers != self.num_layers:
            raise ValueError(
                f"This allocation has {self.num_layers} per-layer budgets but the model has {num_layers} decoder "
                f"layers. Use an allocation made for this model, e.g. BudgetAllocation.for_model(model, "
                f"mean_budget={self.mean:g}), or one searched on it."
            )

    # -- serialisation ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (``format_version`` first); a deep copy."""
        data: dict[str, Any] = {"format_version": self.format_version}
        for f in dataclasses.fields(self):
            if f.name != "format_version":
                data[f.name] = json.loads(json.dumps(getattr(self, f.name)))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build an allocation from :meth:`to_dict` output, validating it.

        Unknown keys (written by a newer release) are dropped with a ``UserWarning``. Missing provenance
        (``created_at``, ``package_versions``) stays empty rather than being filled with today's values.
        """
        if not isinstance(data, dict):
            raise TypeError(f"An allocation must be a dict of fields, got {type(data).__name__}.")
        if "format_version" not in data:
            raise ValueError("Missing 'format_version': this is not an evolkv_hf allocation.")
        _check_format_version(data["format_version"])  # before the rest: a newer layout may reshape any field
        if "budgets" not in data:
            raise ValueError("Missing 'budgets': an allocation needs one budget per decoder layer.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            # Bounded: the keys and the version come from a file that may be hostile.
            shown = f"{[key[:100] for key in unknown[:20]]}" + (
                f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
            )
            warnings.warn(
                f"Ignoring unknown allocation fields {shown} (format version "
                f"{reprlib.repr(data['format_version'])}); they were probably written by a newer evolkv_hf. "
                "Upgrade with `pip install -U evolkv-hf` to keep them.",
                UserWarning,
                stacklevel=2,
            )
        kwargs = {key: value for key, value in data.items() if key in names}
        kwargs.setdefault("created_at", None)
        kwargs.setdefault("package_versions", {})
        return cls(**kwargs)

    def _chart_bytes(self) -> bytes | None:
        """``budgets.png`` as written by :meth:`save_pretrained` (``None`` without matplotlib)."""
        if not _can_plot():
            return None
        buffer = io.BytesIO()
        self.plot().savefig(buffer, format="png", dpi=100, metadata={"Software": None})
        return buffer.getvalue()

    def _holds_this_allocation(self, directory: Path) -> bool:
        try:
            saved = json.loads((directory / ALLOCATION_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return bool(saved == self.to_dict())

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write ``budgets.png`` (when matplotlib is installed) and ``allocation.json`` atomically."""
        plot_path = save_directory / PLOT_FILE
        chart = self._chart_bytes()
        if chart is not None:
            atomic_write(plot_path, chart)
        elif not self._holds_this_allocation(save_directory):
            plot_path.unlink(missing_ok=True)  # never leave the chart of a previous allocation behind
        payload = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        atomic_write(save_directory / ALLOCATION_FILE, payload.encode("utf-8"))

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        config: Any = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Save ``allocation.json``, ``README.md`` (model card) and ``budgets.png`` into ``save_directory``.

        Files are written atomically. Saving the same allocation again is allowed; a directory that holds a
        *different* allocation (or a foreign ``README.md``/``budgets.png``) is refused unless ``overwrite``.

        Parameters
        ----------
        save_directory : str or Path
            Directory to write to (created if needed).
        overwrite : bool, default False
            Replace another allocation saved there.
        config : None
            Not supported (everything lives in ``allocation.json``); kept for ``ModelHubMixin`` compatibility.
        repo_id : str, optional
            Repo id shown in the model card and, with ``push_to_hub=True``, pushed to (default: folder name).
            After a push, the local card names the repo as the Hub resolved it (``"name"`` -> ``"you/name"``).
        push_to_hub : bool, default False
            Also push to the Hub; see :meth:`push_to_hub` (extra kwargs go there). The local save is done first
            and stays intact if the push fails.
        model_card_kwargs : dict, optional
            Passed to :meth:`generate_model_card`.

        Returns
        -------
        str or None
            The commit URL when pushed, else None.

        Raises
        ------
        FileExistsError
            ``save_directory`` holds a different allocation and ``overwrite`` is False.
        """
        if config is not None:
            raise TypeError(
                "BudgetAllocation.save_pretrained does not take `config`: allocation.json holds everything."
            )
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} exists and is not a directory.")
        card_kwargs = dict(model_card_kwargs or {})
        card_kwargs.setdefault("repo_id", repo_id)
        card_kwargs.setdefault("has_plot", _can_plot())  # _save_pretrained writes budgets.png exactly then
        card = str(self.generate_model_card(**card_kwargs)).encode("utf-8")
        if not overwrite:
            self._check_no_conflict(directory, card)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_pretrained(directory)
        atomic_write(directory / _CARD_FILE, card)
        if push_to_hub:
            commit, _ = self._push(
                repo_id or directory.name, model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs
            )
            # The local card names the repo it was pushed to (with the namespace the Hub resolved), like the
            # pushed card does, instead of the placeholder or a bare name.
            card_kwargs["repo_id"] = commit.repo_url.repo_id
            atomic_write(directory / _CARD_FILE, str(self.generate_model_card(**card_kwargs)).encode("utf-8"))
            return str(commit)
        return None

    def _check_no_conflict(self, directory: Path, card: bytes) -> None:
        if not directory.is_dir():
            return
        existing = directory / ALLOCATION_FILE
        if existing.exists():
            if not self._holds_this_allocation(directory):
                raise FileExistsError(
                    f"{directory} already contains a different allocation ({ALLOCATION_FILE}). Pass "
                    "overwrite=True to replace it, or choose another directory."
                )
            # The same allocation: saving again may only rewrite what this library generated. A model card edited
            # by hand (or one without the generated-card digest) is not replaced without overwrite=True; a
            # generated one is, whatever the repo id or version it was written for.
            existing_card = directory / _CARD_FILE
            if existing_card.is_file():
                existing_text = existing_card.read_bytes()
                if existing_text != card and not is_unedited_card(existing_text.decode("utf-8", "replace")):
                    raise FileExistsError(
                        f"{existing_card} differs from the model card this save would write and was edited by "
                        "hand (or not written by evolkv_hf). Pass overwrite=True to replace it, or choose another "
                        "directory."
                    )
            existing_chart = directory / PLOT_FILE
            chart = self._chart_bytes() if existing_chart.is_file() else None
            if chart is not None and existing_chart.read_bytes() != chart:
                raise FileExistsError(
                    f"{existing_chart} differs from the chart this save would write (replaced by hand?). Pass "
                    "overwrite=True to replace it, or choose another directory."
                )
            return
        foreign = [name for name in _OWN_FILES if (directory / name).exists()]
        if foreign:
            raise FileExistsError(
                f"{directory} already contains {', '.join(foreign)} not written for an allocation. Pass "
                "overwrite=True to replace them, or choose another directory."
            )

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """Model card with YAML metadata (library_name, tags, base_model), scores, budgets and usage.

        Keyword arguments: ``repo_id`` (shown in the usage snippet) and ``has_plot`` (embed ``budgets.png``).
        """
        if args:
            raise TypeError("generate_model_card takes keyword arguments only (repo_id=..., has_plot=...).")
        unknown = set(kwargs) - {"repo_id", "has_plot"}
        if unknown:
            raise TypeError(f"Unexpected model card arguments: {sorted(unknown)}.")
        return render_model_card(
            self,
            card_data=self._hub_mixin_info.model_card_data,
            repo_id=kwargs.get("repo_id"),
            has_plot=bool(kwargs.get("has_plot", False)),
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        endpoint: str | None = None,
        **model_kwargs: Any,
    ) -> Self:
        """Load an allocation from a local directory or a Hub repo (``allocation.json`` only; never pickle).

        Parameters
        ----------
        pretrained_model_name_or_path : str or Path
            Directory written by :meth:`save_pretrained`, or a Hub repo id.
        force_download, token, cache_dir, local_files_only, revision
            As in :func:`huggingface_hub.hf_hub_download`.
        endpoint : str, optional
            Hub endpoint (default: ``HF_ENDPOINT`` / huggingface.co).

        Raises
        ------
        FileNotFoundError
            No ``allocation.json`` in the directory / repo (or not cached when offline).
        ValueError, TypeError
            Neither a directory nor a valid repo id; corrupt JSON; a newer format version; invalid fields.
        """
        if model_kwargs:
            raise TypeError(
                f"Unexpected arguments to BudgetAllocation.from_pretrained: {sorted(model_kwargs)}."
            )
        return cls._from_pretrained(
            model_id=str(pretrained_model_name_or_path),
            revision=revision,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            endpoint=endpoint,
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        endpoint: str | None = None,
        **model_kwargs: Any,
    ) -> Self:
        path = locate_allocation_file(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            endpoint=endpoint,
        )
        data = read_json_file(path)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            reason = str(err)
            if len(reason) > 1000:  # a message quoting a huge field of an untrusted file
                reason = reason[:1000] + " [...]"
            raise type(err)(f"Invalid allocation file {path}: {reason}") from err

    def push_to_hub(
        self,
        repo_id: str,
        *,
        config: Any = None,
        commit_message: str = "Upload EvolKV budget allocation",
        private: bool | None = None,
        token: str | None = None,
        branch: str | None = None,
        create_pr: bool | None = None,
        allow_patterns: list[str] | str | None = None,
        ignore_patterns: list[str] | str | None = None,
        delete_patterns: list[str] | str | None = None,
        model_card_kwargs: dict[str, Any] | None = None,
        endpoint: str | None = None,
    ) -> str:
        """Create ``repo_id`` if needed and upload ``allocation.json``, ``README.md``, ``budgets.png`` in one commit.

        The files are written to a temporary directory first, so no local directory is touched.
        Arguments are those of ``ModelHubMixin.push_to_hub`` plus ``endpoint`` (default ``HF_ENDPOINT``).

        Returns
        -------
        str
            URL of the commit.

        Raises
        ------
        AllocationPushError
            The Hub could not be reached or refused the repo creation or commit (the cause is chained).
        """
        if config is not None:
            raise TypeError(
                "BudgetAllocation.push_to_hub does not take `config`: allocation.json holds everything."
            )
        commit, _ = self._push(
            repo_id,
            commit_message=commit_message,
            private=private,
            token=token,
            branch=branch,
            create_pr=create_pr,
            allow_patterns=allow_patterns,
            ignore_patterns=ignore_patterns,
            delete_patterns=delete_patterns,
            model_card_kwargs=model_card_kwargs,
            endpoint=endpoint,
        )
        return str(commit)

    def _push(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload EvolKV budget allocation",
        private: bool | None = None,
        token: str | None = None,
        branch: str | None = None,
        create_pr: bool | None = None,
        allow_patterns: list[str] | str | None = None,
        ignore_patterns: list[str] | str | None = None,
        delete_patterns: list[str] | str | None = None,
        model_card_kwargs: dict[str, Any] | None = None,
        endpoint: str | None = None,
        saved_directory: Path | None = None,
    ) -> tuple[CommitInfo, bool]:
        """:meth:`push_to_hub`, returning the ``CommitInfo`` (it names the resolved repo id) and whether the
        model card of ``saved_directory`` was uploaded as it is (see :meth:`_use_saved_files`)."""
        api = HfApi(endpoint=endpoint, token=token)

        def failed(err: Exception) -> AllocationPushError:  # any transport or HTTP failure: one clear error
            return AllocationPushError(
                f"Pushing the allocation to {repo_id!r} on {api.endpoint} failed: {type(err).__name__}: {err}. "
                "Nothing local was changed; check the repo id, your token (`hf auth login`) and your "
                "connection, then retry."
            )

        try:
            repo_url = api.create_repo(repo_id=repo_id, private=private, exist_ok=True)
        except Exception as err:
            raise failed(err) from err
        with tempfile.TemporaryDirectory(prefix="evolkv-allocation-") as tmp:
            folder = Path(tmp) / "allocation"
            # The card names the full repo id (with the namespace create_repo resolved), so its snippet works.
            card_kwargs = {**(model_card_kwargs or {}), "repo_id": repo_url.repo_id}
            self.save_pretrained(folder, model_card_kwargs=card_kwargs)
            kept_card = saved_directory is not None and self._use_saved_files(
                saved_directory, folder, card_kwargs
            )
            if delete_patterns is None and not (folder / PLOT_FILE).exists():
                delete_patterns = [PLOT_FILE]  # no chart this time: the repo must not keep an older one
            try:
                commit = api.upload_folder(
                    repo_id=repo_url.repo_id,
                    repo_type="model",
                    folder_path=folder,
                    commit_message=commit_message,
                    revision=branch,
                    create_pr=create_pr,
                    allow_patterns=allow_patterns,
                    ignore_patterns=ignore_patterns,
                    delete_patterns=delete_patterns,
                )
            except Exception as err:
                raise failed(err) from err
        return commit, kept_card

    def _use_saved_files(self, saved: Path, folder: Path, card_kwargs: dict[str, Any]) -> bool:
        """Upload the chart and, when it was edited, the model card saved in ``saved`` instead of fresh ones.

        A card this library generated and nobody edited (see :func:`is_unedited_card`) is replaced by the fresh
        card, which names the repo; any other card is the user's and is uploaded as it is, with the placeholder
        repo id filled in. Returns whether the saved card was uploaded.
        """
        chart = saved / PLOT_FILE
        if chart.is_file():
            (folder / PLOT_FILE).write_bytes(chart.read_bytes())
            if not _can_plot():  # the fresh card was written without the chart it now has
                fresh = self.generate_model_card(**{**card_kwargs, "has_plot": True})
                (folder / _CARD_FILE).write_text(str(fresh), encoding="utf-8")
        card = saved / _CARD_FILE
        if not card.is_file():
            return False
        text = card.read_text(encoding="utf-8")
        if is_unedited_card(text):
            return False
        (folder / _CARD_FILE).write_text(
            text.replace(PLACEHOLDER_REPO, card_kwargs["repo_id"]), encoding="utf-8"
        )
        return True

    # -- plotting --------------------------------------------------------------------------------------------
    def plot(self, *, title: str | None = None) -> Figure:
        """Bar chart of the budget per layer, with the uniform (mean) budget as a dashed line.

        Uses ``matplotlib.figure.Figure`` directly (no pyplot, no global backend change). Requires matplotlib.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as err:
            raise ImportError("BudgetAllocation.plot() needs matplotlib: `pip install matplotlib`.") from err
        figure = Figure(figsize=(max(6.0, 0.22 * self.num_layers + 2.0), 3.5), layout="constrained")
        axes = figure.add_subplot()
        axes.bar(range(self.num_layers), self.budgets, color="#4C72B0", label="budget")
        axes.axhline(
            self.mean, color="#C44E52", linestyle="--", linewidth=1.2, label=f"uniform ({self.mean:.4g})"
        )
        axes.set_xlabel("decoder layer")
        axes.set_ylabel("KV budget (tokens)")
        axes.set_xlim(-0.6, self.num_layers - 0.4)
        default_title = (
            f"Per-layer KV budgets, {self.base_model}" if self.base_model else "Per-layer KV budgets"
        )
        axes.set_title(title or default_title)
        axes.legend(loc="upper right", frameon=False)
        return figure
