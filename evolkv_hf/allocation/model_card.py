"""Model card (``README.md``) for a saved or pushed :class:`~evolkv_hf.allocation.BudgetAllocation`."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

if TYPE_CHECKING:
    from .allocation import BudgetAllocation

__all__ = ["is_unedited_card", "looks_like_repo_id", "render_model_card"]

PAPER_URL = "https://arxiv.org/abs/2509.08315"
PLOT_FILE = "budgets.png"
RESCALED_FROM = "rescaled_from"
"""Key of ``extra`` under which :meth:`BudgetAllocation.rescale` keeps the scores measured before rescaling."""
PLACEHOLDER_REPO = "<namespace>/<this-repo>"

_CITATION = (
    f"EvolKV, [arXiv:2509.08315]({PAPER_URL}) (Findings of EMNLP 2025): learned per-layer KV-cache budgets by "
    "evolutionary search. Saved with the `evolkv_hf` library."
)


def looks_like_repo_id(name: str | None) -> bool:
    """True if ``name`` is a syntactically valid Hub repo id and not an existing local path."""
    if not name or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _cell(value: object) -> str:
    """Format a value for a Markdown table cell."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, str], rows: Sequence[tuple[str, object]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in rows]
    return "\n".join(lines)


def render_model_card(
    allocation: BudgetAllocation,
    *,
    card_data: ModelCardData,
    repo_id: str | None = None,
    has_plot: bool = False,
) -> ModelCard:
    """Build the model card of ``allocation``.

    Parameters
    ----------
    allocation : BudgetAllocation
        The allocation to describe.
    card_data : ModelCardData
        Base metadata (``library_name``, tags); ``base_model`` is added when it is a Hub repo id.
    repo_id : str, optional
        Repo id shown in the usage snippet (a placeholder when unknown).
    has_plot : bool
        Whether ``budgets.png`` sits next to the card.
    """
    data = ModelCardData(**card_data.to_dict())
    if looks_like_repo_id(allocation.base_model):
        data.base_model = allocation.base_model
    a = allocation
    model_name = a.base_model or f"a {a.num_layers}-layer model"
    repo = repo_id or PLACEHOLDER_REPO
    load_model = (
        f'model = AutoModelForCausalLM.from_pretrained("{a.base_model}")'
        if a.base_model
        else "model = AutoModelForCausalLM.from_pretrained(...)  # the base model"
    )
    summary = [
        ("Base model", a.base_model),
        ("Base model revision", a.base_model_revision),
        ("Decoder layers", a.num_layers),
        ("Mean budget (tokens per layer)", a.mean),
        ("Target mean budget", a.target_mean_budget),
        ("Total budget (tokens)", a.total),
        ("Min / max layer budget", f"{min(a.budgets)} / {max(a.budgets)}"),
        ("Observation window", a.window_size),
        ("Pooling kernel", a.kernel_size),
        ("Pooling", a.pooling),
        ("Selection policy", a.policy),
        ("Task / dataset", a.task),
        ("Metric optimised", a.metric_name),
    ]
    scores = _score_rows(a.metric_name, a.metric_value, a.scores)
    search = [
        ("Group size", a.search_group_size),
        ("Population size", a.search_population_size),
        ("Generations per group", a.search_generations),
        ("lambda (cache-score weight)", a.search_lambda),
        ("gamma (under-budget penalty)", a.search_gamma),
        ("sigma0 (CMA-ES step size)", a.search_sigma0),
        ("Seed", a.search_seed),
        ("Search samples", a.search_num_samples),
    ]
    intro = (
        f"Per-layer KV-cache token budgets in the style of [EvolKV]({PAPER_URL}): layer `i` keeps at most "
        f"`budgets[i]` prompt tokens (observation window included) after prefill. Mean "
        f"{a.mean:.6g} tokens per layer, {a.total} in total over {a.num_layers} layers."
    )
    usage = (
        "## Usage\n\n```python\n"
        "from transformers import AutoModelForCausalLM\n"
        "from evolkv_hf import EvolKVCache\n\n"
        f"{load_model}\n"
        f'cache = EvolKVCache.from_pretrained("{repo}", model)\n'
        "outputs = model.generate(**inputs, cache=cache)  # past_key_values=cache before transformers 5.24\n```"
    )
    sections = [
        f"# EvolKV per-layer KV-cache budgets for {model_name}",
        intro,
        usage,
        "## Summary\n\n" + _table(("Field", "Value"), summary),
    ]
    if scores:
        sections.append("## Scores\n\n" + _table(("Metric", "Value"), scores))
    else:
        sections.append("## Scores\n\nNo scores were recorded with this allocation.")
    origin = a.extra.get(RESCALED_FROM)
    if isinstance(origin, dict):
        sections.append(_rescaled_from_section(origin))
    if any(value is not None for _, value in search):
        sections.append("## Search settings\n\n" + _table(("Setting", "Value"), search))
    extra = sorted(
        item for item in a.extra.items() if not (item[0] == RESCALED_FROM and isinstance(origin, dict))
    )
    if extra:
        sections.append("## Extra provenance\n\n" + _table(("Key", "Value"), extra))
    budgets_section = "## Per-layer budgets\n\n"
    if has_plot:
        budgets_section += f"![Per-layer budgets]({PLOT_FILE})\n\n"
    budgets_section += _table(
        ("Layer", "Budget (tokens)"), [(str(i), budget) for i, budget in enumerate(a.budgets)]
    )
    sections.append(budgets_section)
    provenance = [("Created (UTC)", a.created_at), ("Format version", a.format_version)]
    provenance += [(f"`{name}` version", version) for name, version in sorted(a.package_versions.items())]
    sections.append("## Provenance\n\n" + _table(("Field", "Value"), provenance))
    sections.append("## Citation\n\n" + _CITATION)
    body = "\n\n".join(sections)
    text = f"---\n{data.to_yaml()}\n---\n\n{body}\n"
    return ModelCard(text + _marker(text))


# The last line of a generated card: a digest of everything above it. A card that still matches its digest was
# not edited (whatever the version or repo id it was written for) and may be regenerated; one that does not is
# the user's.
_MARKER = "<!-- evolkv_hf generated this card; sha256 of the text above: {} -->\n"
_MARKER_PATTERN = re.compile(
    r"<!-- evolkv_hf generated this card; sha256 of the text above: ([0-9a-f]{64}) -->\n\Z"
)


def _marker(text: str) -> str:
    return _MARKER.format(hashlib.sha256(text.encode("utf-8")).hexdigest())


def is_unedited_card(text: str) -> bool:
    """Whether ``text`` is a model card this library generated and nobody has edited since."""
    match = _MARKER_PATTERN.search(text)
    return match is not None and _marker(text[: match.start()]) == text[match.start() :]


def _score_rows(
    metric_name: object, metric_value: object, scores: Mapping[str, object]
) -> list[tuple[str, object]]:
    """The optimised metric's value (when one was measured), then the other scores by name."""
    rows: list[tuple[str, object]] = (
        [] if metric_value is None else [(str(metric_name or "metric"), metric_value)]
    )
    return rows + sorted(scores.items())


def _rescaled_from_section(origin: dict[str, object]) -> str:
    """Where a rescaled allocation came from, and the scores measured there (not at these budgets)."""
    rows: list[tuple[str, object]] = [
        ("Mean budget", origin.get("mean_budget")),
        ("Target mean budget", origin.get("target_mean_budget")),
        ("Created (UTC)", origin.get("created_at")),
    ]
    scores = origin.get("scores")
    measured = _score_rows(
        origin.get("metric_name"), origin.get("metric_value"), scores if isinstance(scores, dict) else {}
    )
    rows += [(f"Score: {name}", value) for name, value in measured]
    return (
        "## Rescaled from\n\nThese budgets are another allocation rescaled proportionally "
        "(`BudgetAllocation.rescale`); its scores were measured at its own budgets, not at these.\n\n"
        + _table(("Field", "Value"), rows)
    )
