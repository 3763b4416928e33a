"""The ``evolkv`` command line: ``evaluate``, ``show``, ``push``, ``generate``, ``search``.

One function per subcommand registers its parser (``add_<name>_parser(subparsers)``) and sets
``func`` to the function that runs it; :data:`COMMANDS` maps names to those functions. To add a
subcommand, write its ``add_<name>_parser(subparsers)``, reusing :func:`add_model_arguments` and
:func:`load_model_from_args`, and add one entry to :data:`COMMANDS`.

Exit codes: 0 success, 1 user error (one line on stderr; ``--debug`` shows the traceback),
2 usage error (argparse), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
import traceback
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._validation import POLICIES, POOLINGS

__all__ = [
    "COMMANDS",
    "CommandError",
    "add_model_arguments",
    "build_parser",
    "load_model_from_args",
    "main",
]

PROG = "evolkv"
DEMO_ALIAS = "demo"
DTYPES = ("float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")

SubParsers = Any  # argparse._SubParsersAction (private type)


class CommandError(Exception):
    """A user error: printed as ``error: <message>`` and exit code 1, without a traceback."""


# --------------------------------------------------------------------------------------------------
# Shared arguments and helpers
# --------------------------------------------------------------------------------------------------


def _comma_ints(value: str) -> list[int]:
    try:
        parts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not parts:
        raise argparse.ArgumentTypeError("expected at least one integer")
    if any(part < 1 for part in parts):
        raise argparse.ArgumentTypeError(f"budgets must be >= 1 token, got {value!r}")
    return parts


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {number}")
    return number


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {number}")
    return number


def _new_parser(subparsers: SubParsers, name: str, *, help: str, description: str, example: str) -> Any:
    parser = subparsers.add_parser(
        name,
        help=help,
        description=textwrap.fill(description, width=100),
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.strip().splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--demo``, ``--revision``, ``--dtype``, ``--attn-implementation``, ``--device``.

    Example
    -------
    >>> parser = argparse.ArgumentParser()
    >>> add_model_arguments(parser)
    >>> parser.parse_args(["--demo"]).demo
    True
    """
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        metavar="PATH_OR_ID",
        help=f"local checkpoint directory or Hub model id ('{DEMO_ALIAS}': SmolLM2-135M-Instruct, offline)",
    )
    group.add_argument(
        "--demo", action="store_true", help=f"use the demo model (same as --model {DEMO_ALIAS})"
    )
    group.add_argument("--revision", help="Hub revision of --model (branch, tag or commit)")
    group.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default: float32)")
    group.add_argument(
        "--attn-implementation", choices=ATTN_IMPLEMENTATIONS, default="sdpa", help="(default: sdpa)"
    )
    group.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1', ... (default: auto)")


def load_model_from_args(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """Load ``(model, tokenizer, model_name)`` from :func:`add_model_arguments` options, in eval mode.

    Example
    -------
    >>> args = argparse.Namespace(model="demo", demo=False, revision=None, dtype="float32",
    ...                           attn_implementation="sdpa", device="cpu")  # fmt: skip
    >>> model, tokenizer, name = load_model_from_args(args)  # doctest: +SKIP
    """
    import torch

    dtype = getattr(torch, args.dtype)
    if args.demo and args.model not in (None, DEMO_ALIAS):
        raise CommandError(f"--demo and --model {args.model!r} name two models; pass one of them.")
    if (args.demo or args.model == DEMO_ALIAS) and args.revision:
        raise CommandError("--revision applies to a Hub --model; the demo model ships with the package.")
    if args.demo or args.model == DEMO_ALIAS:
        from .demo import DEMO_MODEL_ID, load_demo_model

        model, tokenizer = load_demo_model(dtype=dtype, attn_implementation=args.attn_implementation)
        name = DEMO_MODEL_ID
    elif args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        local = os.path.isdir(args.model)
        options: dict[str, Any] = {"revision": args.revision} if args.revision else {}
        if local:
            options["local_files_only"] = True
        elif os.path.exists(args.model):
            raise CommandError(f"--model {args.model!r} is a file; pass the checkpoint directory.")
        try:
            model = AutoModelForCausalLM.from_pretrained(
                args.model, dtype=dtype, attn_implementation=args.attn_implementation, **options
            )
            tokenizer = AutoTokenizer.from_pretrained(args.model, **options)
        except (OSError, ValueError) as err:
            raise CommandError(f"could not load model {args.model!r}: {_first_line(err)}") from err
        name = Path(args.model).resolve().name if local else args.model
    else:
        raise CommandError(f"no model given: pass --model PATH_OR_ID, or --demo (--model {DEMO_ALIAS}).")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    model.eval()
    return model, tokenizer, name


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.2f} MiB"


# --------------------------------------------------------------------------------------------------
# evolkv evaluate
# --------------------------------------------------------------------------------------------------


def add_evaluate_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Register ``evolkv evaluate``."""
    parser = _new_parser(
        subparsers,
        "evaluate",
        help="compare full cache, uniform SnapKV, PyramidKV, StreamingLLM and saved allocations",
        description="Answer the same samples with each method at each mean budget, score them and write "
        "<output-dir>/<task>__<model>__<method>__<budget>/ (predictions.jsonl, metrics.json, config.json), "
        "a table and a score-vs-budget plot. Finished runs are skipped on a rerun.",
        example="evolkv evaluate --demo --task niah_single --context-length 2048 --num-samples 16 \\\n"
        "    --methods full,uniform,pyramid,streaming,./my-allocation --budgets 64,128,256 --output-dir results",
    )
    add_model_arguments(parser)
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="built-in task name (see evolkv_hf.tasks.TASKS)")
    source.add_argument(
        "--dataset", metavar="PATH", help="task dataset: .json, .jsonl, .parquet or a save_to_disk directory"
    )
    data.add_argument(
        "--context-length",
        type=_positive_int,
        default=2048,
        help="task prompt length in tokens (default: 2048)",
    )
    data.add_argument(
        "--num-samples", type=_positive_int, help="samples (default: 16 for --task, all for --dataset)"
    )
    data.add_argument(
        "--seed", type=_non_negative_int, default=0, help="task generation and bootstrap seed (default: 0)"
    )
    data.add_argument(
        "--mode",
        choices=("query_aware", "query_agnostic"),
        help="prompt mode (default: the task's, query_aware)",
    )
    run = parser.add_argument_group("evaluation")
    run.add_argument(
        "--methods",
        default="full,uniform,pyramid,streaming",
        help="comma-separated: full, uniform, pyramid, streaming, or allocation directories / Hub repo ids, "
        "each optionally labelled as label=path (e.g. a=runs/a/allocation,b=runs/b/allocation) "
        "(default: full,uniform,pyramid,streaming)",
    )
    run.add_argument(
        "--budgets",
        type=_comma_ints,
        default=[64, 128, 256],
        help="mean KV budgets per layer (default: 64,128,256)",
    )
    run.add_argument(
        "--metric", metavar="NAME|PATH", help="metric name or local evaluate script (default: the task's)"
    )
    run.add_argument(
        "--metric-key", metavar="KEY", help="score to report when the metric returns several (e.g. f1)"
    )
    run.add_argument("--batch-size", type=_positive_int, default=1, help="(default: 1)")
    run.add_argument("--window-size", type=_positive_int, default=32, help="observation window (default: 32)")
    run.add_argument("--kernel-size", type=_positive_int, default=7, help="pooling kernel (default: 7)")
    run.add_argument("--pooling", choices=POOLINGS, default="avg", help="(default: avg)")
    run.add_argument(
        "--n-bootstrap",
        type=_non_negative_int,
        default=1000,
        help="bootstrap resamples for the 95%% CI (default: 1000)",
    )
    run.add_argument("--output-dir", default="evolkv-results", help="(default: evolkv-results)")
    run.add_argument("--overwrite", action="store_true", help="redo runs already in --output-dir")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_evaluate)
    return parser


def load_dataset_file(path: str) -> Any:
    """A ``datasets.Dataset`` from a .json/.jsonl/.parquet file or a ``save_to_disk`` directory.

    Example
    -------
    >>> dataset = load_dataset_file("samples.jsonl")  # doctest: +SKIP
    """
    import datasets

    if os.path.isdir(path):
        try:
            loaded = datasets.load_from_disk(path)
        except (FileNotFoundError, ValueError) as err:
            raise CommandError(
                f"{path!r} is not a dataset saved with save_to_disk: {_first_line(err)}"
            ) from err
        if isinstance(loaded, datasets.DatasetDict):
            if len(loaded) != 1:
                raise CommandError(
                    f"{path!r} holds several splits {list(loaded)}; save the one to evaluate alone."
                )
            loaded = next(iter(loaded.values()))
        return loaded
    if not os.path.isfile(path):
        raise CommandError(f"dataset {path!r} does not exist.")
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".jsonl", ".parquet"):
        raise CommandError(
            f"dataset {path!r}: expected a .json, .jsonl or .parquet file or a save_to_disk directory."
        )
    if os.path.getsize(path) == 0:
        raise CommandError(f"dataset {path!r} is empty: it needs one row per sample.")
    kind = "Parquet" if suffix == ".parquet" else "JSON (one object per line, or a list of objects)"
    try:
        if suffix == ".parquet":
            return datasets.Dataset.from_parquet(path)
        return datasets.Dataset.from_json(path)
    except Exception as err:  # datasets wraps parse errors in a generic DatasetGenerationError
        cause = err.__cause__ or err.__context__ or err
        raise CommandError(f"dataset {path!r} could not be read as {kind}: {_first_line(cause)}") from err


def _warn_past_position_limit(model: Any, context_length: int) -> None:
    """Generated contexts longer than the model was trained for give meaningless scores; say so."""
    limit = getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None)
    if isinstance(limit, int) and context_length > limit:
        print(
            f"warning: --context-length {context_length} is beyond the model's max_position_embeddings "
            f"({limit}); its answers past that length say little about the cache.",
            file=sys.stderr,
        )


def _check_task_name(name: str | None) -> None:
    if name is not None:
        from .tasks import get_task_spec

        get_task_spec(name)  # "Unknown task 'niah'; valid tasks: [...]"


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evolkv evaluate``."""
    from .evaluation import _resolve_methods, evaluate_methods

    # Everything that can be checked without the model is, before the (slow) model load or download.
    if args.dataset is not None:
        dataset = load_dataset_file(args.dataset)
    _check_task_name(args.task)
    _resolve_methods(args.methods)
    model, tokenizer, model_name = load_model_from_args(args)
    if args.task is not None:
        from .tasks import load_task

        _warn_past_position_limit(model, args.context_length)
        dataset = load_task(
            args.task,
            tokenizer,
            context_length=args.context_length,
            num_samples=args.num_samples or 16,
            seed=args.seed,
            mode=args.mode or "query_aware",
        )
    elif args.num_samples is not None:
        dataset = dataset.select(range(min(args.num_samples, len(dataset))))
    report = evaluate_methods(
        model,
        tokenizer,
        dataset,
        args.methods,
        args.budgets,
        metric=args.metric,
        metric_key=args.metric_key,
        output_dir=args.output_dir,
        model_name=model_name,
        model_revision=args.revision,
        mode=args.mode if args.dataset is not None else None,
        batch_size=args.batch_size,
        window_size=args.window_size,
        kernel_size=args.kernel_size,
        pooling=args.pooling,
        seed=args.seed,
        n_bootstrap=args.n_bootstrap,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    if args.no_progress:
        print(report.to_table())
    return 0


# --------------------------------------------------------------------------------------------------
# evolkv show
# --------------------------------------------------------------------------------------------------


def add_show_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Register ``evolkv show``."""
    parser = _new_parser(
        subparsers,
        "show",
        help="print a saved allocation: per-layer budgets, mean, total, provenance",
        description="Print the per-layer budgets of a saved allocation (a directory or a Hub repo id), "
        "their mean and total, and its provenance.",
        example="evolkv show ./my-allocation --plot budgets.png\nevolkv show user/smollm2-evolkv-c128",
    )
    parser.add_argument("allocation", metavar="ALLOCATION", help="allocation directory or Hub repo id")
    parser.add_argument("--plot", metavar="PNG", help="also save a bar chart of the budgets")
    parser.add_argument("--revision", help="Hub revision")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.add_argument("--endpoint", help="Hub endpoint (default: $HF_ENDPOINT or huggingface.co)")
    parser.set_defaults(func=run_show)
    return parser


def format_allocation(allocation: Any, *, source: str | None = None, bar_width: int = 40) -> str:
    """Plain-text view of a :class:`~evolkv_hf.BudgetAllocation`: per-layer table, mean, total, provenance.

    Example
    -------
    >>> from evolkv_hf import BudgetAllocation
    >>> print(format_allocation(BudgetAllocation.uniform(2, 8, created_at=None)).splitlines()[1])
    layers: 2 | mean: 8 | total: 16 | min: 8 | max: 8
    """
    budgets = list(allocation.budgets)
    top = max(budgets)
    lines = [f"allocation: {source}" if source else "allocation"]
    lines.append(
        f"layers: {allocation.num_layers} | mean: {allocation.mean:g} | total: {allocation.total} | "
        f"min: {min(budgets)} | max: {top}"
    )
    lines.append("")
    width = len(str(top))
    lines.append(f"layer  {'budget'.rjust(max(width, 6))}")
    for index, budget in enumerate(budgets):
        bar = "#" * max(1, round(bar_width * budget / top))
        lines.append(f"{index:>5}  {str(budget).rjust(max(width, 6))}  {bar}")
    lines.append("")
    lines.append("provenance:")
    skip = {"budgets", "num_layers", "format_version"}
    for name, value in allocation.to_dict().items():
        if name in skip or value is None or value == {} or value == []:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{key}={item}" for key, item in value.items())
        lines.append(f"  {name}: {value}")
    return "\n".join(lines)


def run_show(args: argparse.Namespace) -> int:
    """Run ``evolkv show``."""
    from .allocation import BudgetAllocation

    allocation = BudgetAllocation.from_pretrained(
        args.allocation, revision=args.revision, token=args.token, endpoint=args.endpoint
    )
    print(format_allocation(allocation, source=args.allocation))
    if args.plot:
        # matplotlib adds ".png" to a name without an extension: report the file it writes.
        path = args.plot if Path(args.plot).suffix else f"{args.plot}.png"
        allocation.plot().savefig(path, dpi=100)
        print(f"\nplot: {path}")
    return 0


# --------------------------------------------------------------------------------------------------
# evolkv push
# --------------------------------------------------------------------------------------------------


def add_push_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Register ``evolkv push``."""
    parser = _new_parser(
        subparsers,
        "push",
        help="upload a saved allocation to the Hugging Face Hub",
        description="Upload allocation.json, its model card and its chart to a Hub model repo (created if "
        "needed), in one commit. A model card you edited is uploaded as it is; an unedited one is regenerated "
        "so that its usage snippet names the repo.",
        example="evolkv push ./my-allocation user/smollm2-evolkv-c128 --private",
    )
    parser.add_argument("allocation", metavar="ALLOCATION_DIR", help="directory written by save_pretrained")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repo id, e.g. user/name")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.add_argument("--endpoint", help="Hub endpoint (default: $HF_ENDPOINT or huggingface.co)")
    parser.set_defaults(func=run_push)
    return parser


def run_push(args: argparse.Namespace) -> int:
    """Run ``evolkv push``."""
    from .allocation import BudgetAllocation

    if not os.path.isdir(args.allocation):
        raise CommandError(
            f"{args.allocation!r} is not a local directory; pass the folder that holds allocation.json."
        )
    allocation = BudgetAllocation.from_pretrained(args.allocation)
    # The directory's own chart and, when it was edited, its model card are what gets uploaded.
    commit, kept_card = allocation._push(
        args.repo_id,
        private=args.private or None,
        token=args.token,
        endpoint=args.endpoint,
        saved_directory=Path(args.allocation),
    )
    print(f"pushed {args.allocation} to {commit.repo_url.repo_id}: {commit}")
    if kept_card:
        print("The directory's README.md differs from the generated model card and was uploaded as it is.")
    return 0


# --------------------------------------------------------------------------------------------------
# evolkv generate
# --------------------------------------------------------------------------------------------------


def add_generate_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Register ``evolkv generate``."""
    parser = _new_parser(
        subparsers,
        "generate",
        help="answer a prompt with a compressed KV cache and report its memory",
        description="Generate greedily from a prompt with an EvolKVCache built from a saved allocation or a "
        "budget, then print the answer and the K/V memory held (and the full cache's, for comparison).",
        example='evolkv generate --demo --allocation ./my-allocation --chat --prompt "Summarise: ..."\n'
        'evolkv generate --model HuggingFaceTB/SmolLM2-135M-Instruct --budget 128 --prompt "Once upon a time"',
    )
    add_model_arguments(parser)
    budget = parser.add_argument_group("cache").add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "--allocation", metavar="DIR_OR_REPO", help="saved allocation (directory or Hub repo id)"
    )
    budget.add_argument(
        "--budget",
        type=_comma_ints,
        metavar="N[,N...]",
        help="tokens per layer: one for all layers or one per layer",
    )
    parser.add_argument("--prompt", required=True, help="the prompt text")
    parser.add_argument(
        "--chat", action="store_true", help="wrap the prompt with the tokenizer's chat template"
    )
    parser.add_argument("--max-new-tokens", type=_positive_int, default=64, help="(default: 64)")
    parser.add_argument("--policy", choices=POLICIES, help="(default: the allocation's, or snapkv)")
    parser.add_argument("--window-size", type=_positive_int, help="(default: the allocation's, or 32)")
    parser.add_argument("--kernel-size", type=_positive_int, help="(default: the allocation's, or 7)")
    parser.add_argument("--pooling", choices=POOLINGS, help="(default: the allocation's, or avg)")
    parser.set_defaults(func=run_generate)
    return parser


def _full_cache_bytes(cache: Any) -> int:
    """Bytes a full cache would hold for what ``cache`` has seen (same shapes per entry)."""
    seen = int(cache.get_seq_length())
    total = 0.0
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None or keys.dim() < 2 or keys.shape[-2] == 0:
            continue
        per_entry = (
            keys.numel() * keys.element_size() + values.numel() * values.element_size()
        ) / keys.shape[-2]
        total += per_entry * seen
    return int(total)


def run_generate(args: argparse.Namespace) -> int:
    """Run ``evolkv generate``."""
    import torch

    from .allocation import BudgetAllocation
    from .cache import EvolKVCache
    from .inference import cache_keyword

    allocation = BudgetAllocation.from_pretrained(args.allocation) if args.allocation else None
    model, tokenizer, _ = load_model_from_args(args)
    if args.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise CommandError("--chat: this tokenizer has no chat template; drop --chat.")
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": args.prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        input_ids = encoded["input_ids"]
    else:
        input_ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    input_ids = input_ids.to(model.device)
    budgets: Any = (
        allocation if allocation is not None else (args.budget[0] if len(args.budget) == 1 else args.budget)
    )
    options = {
        name: getattr(args, name)
        for name in ("policy", "window_size", "kernel_size", "pooling")
        if getattr(args, name) is not None
    }
    cache = EvolKVCache(model, budgets, **options)
    start = time.perf_counter()
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id,
            **{cache_keyword(model): cache},
        )
    elapsed = time.perf_counter() - start
    new_tokens = output[0, input_ids.shape[1] :]
    print(tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
    memory, full = cache.memory_bytes(), _full_cache_bytes(cache)
    share = f" ({memory / full:.1%} of the ~{_mib(full)} a full cache would hold)" if full else ""
    mean = sum(cache.budgets) / len(cache.budgets)
    print(
        f"\nK/V memory: {_mib(memory)}{share}; mean budget {mean:g} tokens/layer, "
        f"{cache.options.policy}; prompt {input_ids.shape[1]} tokens, {len(new_tokens)} generated in {elapsed:.1f} s"
    )
    return 0


# --------------------------------------------------------------------------------------------------
# evolkv search
# --------------------------------------------------------------------------------------------------


def _search_field_type(hint: Any) -> Any:
    """The argparse type of a ``SearchArguments`` field from its resolved annotation.

    The annotation comes from ``typing.get_type_hints``, not ``field.type``: transformers' ``HfArgumentParser``
    rewrites ``field.type`` in place (``int | None`` becomes ``int``), which must not change this CLI.
    """
    members = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else ()
    )
    optional = type(None) in members
    base = next((member for member in members if member is not type(None)), hint) if members else hint
    if base is bool:
        return _parse_bool
    if base is list or typing.get_origin(base) is list:
        return lambda value: [item for item in value.split(",") if item]
    if base is float:
        return float
    if base is int:
        return _parse_optional_int if optional else int
    return str


def _parse_optional_int(value: str) -> int | None:
    """An ``int | None`` search setting: ``none`` (any case) gives ``None``, e.g. ``--save-total-limit none``."""
    if value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {value!r}") from None


def _parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_search_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Register ``evolkv search``: every :class:`~evolkv_hf.SearchArguments` field is a flag."""
    import dataclasses

    from .search import SearchArguments

    parser = _new_parser(
        subparsers,
        "search",
        help="learn a per-layer budget allocation (EvolKV: group-wise CMA-ES)",
        description="Search per-layer KV budgets for a model, a task (or dataset) and a metric, checkpointing "
        "each generation to --output-dir; the completed allocation lands in <output-dir>/allocation/. Settings "
        "may come from --config FILE (.json or .yaml); flags override it.",
        example="evolkv search --demo --task niah_single --context-length 2048 --num-samples 30 \\\n"
        "    --eval-samples 50 --target-budget 128 --generations-per-group 6 --output-dir runs/niah-c128",
    )
    add_model_arguments(parser)
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="built-in task name (see evolkv_hf.tasks.TASKS)")
    source.add_argument(
        "--dataset", metavar="PATH", help="search samples (.json, .jsonl, .parquet, save_to_disk)"
    )
    data.add_argument("--eval-dataset", metavar="PATH", help="held-out samples for the final comparison")
    data.add_argument("--context-length", type=_positive_int, default=2048, help="(default: 2048)")
    data.add_argument(
        "--num-samples",
        type=_positive_int,
        help="search samples (default: 30 for --task; all rows of --dataset, else its first N)",
    )
    data.add_argument(
        "--eval-samples",
        type=_non_negative_int,
        help="held-out samples generated with --task, their needle depths spread over 0-1 like the search samples' "
        "(default: 0; with --dataset use --eval-dataset)",
    )
    data.add_argument(
        "--mode",
        choices=("query_aware", "query_agnostic"),
        help="prompt mode (default: the dataset's `mode` column, else query_aware)",
    )
    data.add_argument(
        "--metric", metavar="NAME|PATH", help="metric (default: the task's partial-credit metric)"
    )
    search = parser.add_argument_group("search (SearchArguments)")
    search.add_argument("--config", metavar="FILE", help="SearchArguments as .json or .yaml")
    search.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="resume the latest or a given checkpoint",
    )
    hints = typing.get_type_hints(SearchArguments)
    for field in dataclasses.fields(SearchArguments):
        flag = "--" + field.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f"search_{field.name}", "default": argparse.SUPPRESS}
        help_text = field.metadata.get("help", "")
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        else:
            kwargs["type"] = _search_field_type(hints[field.name])
        search.add_argument(flag, help=help_text, **kwargs)
    parser.set_defaults(func=run_search)
    return parser


def _load_search_config(path: str) -> dict[str, Any]:
    import json

    if not os.path.isfile(path):
        raise CommandError(f"config file {path!r} does not exist.")
    text = Path(path).read_text()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            loaded = yaml.safe_load(text)
        else:
            loaded = json.loads(text)
    except Exception as err:
        raise CommandError(f"config file {path!r} is not valid: {_first_line(err)}") from err
    if not isinstance(loaded, dict):
        raise CommandError(f"config file {path!r} must hold a mapping of SearchArguments fields.")
    return loaded


def _with_mode(dataset: Any, mode: str) -> Any:
    if "mode" in dataset.column_names:
        dataset = dataset.remove_columns("mode")
    return dataset.add_column("mode", [mode] * len(dataset))


def run_search(args: argparse.Namespace) -> int:
    """Run ``evolkv search``."""
    import dataclasses

    from .search import BudgetSearcher, SearchArguments

    settings = _load_search_config(args.config) if args.config else {}
    names = {field.name for field in dataclasses.fields(SearchArguments)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise CommandError(f"unknown SearchArguments in {args.config}: {unknown}")
    settings.update(
        {name: getattr(args, f"search_{name}") for name in names if hasattr(args, f"search_{name}")}
    )
    if "output_dir" not in settings:
        raise CommandError("--output-dir is required (or output_dir in --config).")
    if args.dataset is not None and args.eval_samples is not None:
        raise CommandError(
            "--eval-samples generates held-out samples for --task; with --dataset pass the held-out samples as "
            "--eval-dataset PATH."
        )
    if args.task is not None and args.eval_dataset is not None:
        raise CommandError(
            "--eval-dataset is the held-out set of a --dataset search; with --task, --eval-samples N generates "
            "the held-out samples (pass one of the two)."
        )
    try:
        search_args = SearchArguments(**settings)
    except (TypeError, ValueError) as err:
        raise CommandError(str(err)) from err
    train = load_dataset_file(args.dataset) if args.dataset is not None else None
    held_out = load_dataset_file(args.eval_dataset) if args.eval_dataset is not None else None
    _check_task_name(args.task)  # before the (slow) model load or download
    model, tokenizer, _ = load_model_from_args(args)
    if args.task is not None:
        from .tasks import load_task, load_task_splits

        _warn_past_position_limit(model, args.context_length)
        num_samples = args.num_samples or 30
        seed, mode = search_args.seed, args.mode or "query_aware"
        if args.eval_samples:  # both sets span every needle depth (a split by position would not)
            splits = load_task_splits(
                args.task, tokenizer, args.context_length, num_samples, args.eval_samples, seed, mode
            )
            train, held_out = splits["search"], splits["held_out"]
        else:
            train = load_task(args.task, tokenizer, args.context_length, num_samples, seed, mode)
    elif train is not None:  # --dataset (argparse requires --task or --dataset)
        if args.num_samples is not None:
            train = train.select(range(min(args.num_samples, len(train))))
        if args.mode is not None:  # --mode overrides the datasets' own `mode` column
            train = _with_mode(train, args.mode)
            held_out = _with_mode(held_out, args.mode) if held_out is not None else None
    searcher = BudgetSearcher(
        model, search_args, train, eval_dataset=held_out, processing_class=tokenizer, metric=args.metric
    )
    result = searcher.search(resume_from_checkpoint=args.resume)
    print(format_allocation(result.allocation, source=str(Path(search_args.output_dir) / "allocation")))
    if result.allocation.scores:
        for name, value in result.allocation.scores.items():
            print(f"{name}: {value:.2f}")
    return 0


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------

COMMANDS: dict[str, Callable[[SubParsers], argparse.ArgumentParser]] = {
    "evaluate": add_evaluate_parser,
    "show": add_show_parser,
    "push": add_push_parser,
    "generate": add_generate_parser,
    "search": add_search_parser,
}
"""Subcommand name -> function registering its parser (which sets ``func``). Add new commands here."""


def build_parser() -> argparse.ArgumentParser:
    """The ``evolkv`` argument parser with every subcommand in :data:`COMMANDS`.

    Example
    -------
    >>> build_parser().parse_args(["show", "./my-allocation"]).allocation
    './my-allocation'
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Learned per-layer KV-cache budgets (EvolKV) for Hugging Face transformers.",
        epilog="example:\n  evolkv evaluate --demo --task niah_single --methods full,uniform,pyramid --budgets 64,128\n"
        "  evolkv show ./my-allocation\n\nRun `evolkv COMMAND --help` for the options of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in COMMANDS.values():
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``evolkv`` command; returns the process exit code (0, 1 user error, 2 usage, 130 interrupted).

    Example
    -------
    >>> main(["show", "./my-allocation"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) and usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            traceback.print_exc()
        known = isinstance(error, (CommandError, ValueError, TypeError, OSError, ImportError, KeyError))
        message = (
            _one_line(error)
            if not isinstance(error, KeyError)
            else str(error.args[0] if error.args else error)
        )
        prefix = "" if known else f"{type(error).__name__}: "
        hint = "" if known or debug else " (rerun with --debug for the traceback)"
        print(f"error: {prefix}{message}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover - `evolkv` is the console script
    sys.exit(main())
