"""Two processes under ``accelerate launch`` find the same allocation as one process; only rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).parent

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_search import make_searcher
    from evolkv_hf.search import SearchCallback

    class WritesAtBegin(SearchCallback):
        # Like TensorBoard's writer: the main process creates files in output_dir when the search begins.

        def on_search_begin(self, args, state, control, **kwargs):
            if os.environ.get("RANK", "0") == "0":
                (Path(args.output_dir) / "runs").mkdir(exist_ok=True)


    out = Path(sys.argv[1])
    searcher = make_searcher(out, callbacks=[WritesAtBegin()], **json.loads(sys.argv[2]))
    if searcher.process_index == 1:
        time.sleep(3)  # regression: rank 1 then found rank 0's files and refused a "non-empty" output_dir
    result = searcher.search()
    record = {{
        "processes": searcher.num_processes,
        "budgets": result.allocation.budgets,
        "history": [{{k: v for k, v in e.items() if k != "seconds"}} for e in result.history],
    }}
    (out / f"result-{{searcher.process_index}}.json").write_text(json.dumps(record))
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(tmp_path: Path, launcher: list[str], name: str, overrides: dict | None = None) -> Path:
    script = tmp_path / "search_script.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    out = tmp_path / name
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]), OMP_NUM_THREADS="1")
    process = subprocess.run(
        [*launcher, str(script), str(out), json.dumps(overrides or {})],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return out


def accelerate_launch() -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]


def test_two_processes_equal_one(tmp_path):
    single = run(tmp_path, [sys.executable], "single")
    double = run(tmp_path, accelerate_launch(), "double")
    one = json.loads((single / "result-0.json").read_text())
    rank0 = json.loads((double / "result-0.json").read_text())
    rank1 = json.loads((double / "result-1.json").read_text())
    assert one["processes"] == 1 and rank0["processes"] == 2
    assert rank0["budgets"] == rank1["budgets"] == one["budgets"]
    assert rank0["history"] == one["history"]
    # Only the main process writes: one log line per entry, one allocation.
    log = (double / "run" / "search_log.jsonl").read_text().splitlines()
    assert len(log) == len(one["history"])
    assert (double / "run" / "allocation" / "allocation.json").is_file()


def test_a_scheme_repeated_within_a_generation_is_scored_once(tmp_path):
    # Regression: copies of one scheme sent to different processes were each scored (both `cached: False`). With
    # a small step size, 8 candidates per generation round to few schemes: some scheme first drawn in the first
    # half of a generation (rank 0's share) comes back in the second half (rank 1's).
    overrides = {"sigma0": 0.06, "population_size": 8, "generations_per_group": 1}
    one = json.loads((run(tmp_path, [sys.executable], "single", overrides) / "result-0.json").read_text())
    two = json.loads((run(tmp_path, accelerate_launch(), "double", overrides) / "result-0.json").read_text())
    candidates = [entry for entry in one["history"] if entry["event"] == "candidate"]
    generations = [candidates[start : start + 8] for start in range(0, len(candidates), 8)]
    assert any(
        entry["cached"] and entry["budgets"] in [e["budgets"] for e in generation[:4] if not e["cached"]]
        for generation in generations
        for entry in generation[4:]
    )
    assert two["history"] == one["history"]  # the `cached` flags included
