"""Publish an allocation with its model card (mirrors docs/tutorials/publish.md).

What it shows: loading a saved allocation, checking its provenance, and pushing ``allocation.json``,
the ``README.md`` model card and ``budgets.png`` to a Hub model repository (JSON only, never a pickle);
anyone then uses it with ``EvolKVCache.from_pretrained("<repo>", model)``. Needs network access to the Hub
and a token with write access (``HF_TOKEN`` or ``hf auth login``); ``--endpoint`` points at another
Hub-compatible server.

How long it takes: three small files; not timed here (no Hub access from this machine).

    .venv/bin/python examples/publish_allocation.py runs/niah-c128/allocation your-name/smollm2-evolkv-c128
"""

from __future__ import annotations

import argparse

from evolkv_hf import BudgetAllocation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("allocation_dir")
    parser.add_argument("repo_id")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--endpoint")
    args = parser.parse_args()

    allocation = BudgetAllocation.from_pretrained(args.allocation_dir)
    print(f"{allocation.num_layers} layers, mean {allocation.mean:.1f}, base model {allocation.base_model}")
    url = allocation.push_to_hub(args.repo_id, private=args.private, endpoint=args.endpoint)
    print(f"pushed: {url}")


if __name__ == "__main__":
    main()
