"""Two versions of the server side by side: the same load against each in turn, several rounds.

This machine's speed drifts by 15-25% from hour to hour, so a change to the serving path is judged by running
the old and the new server alternately in one window, never against a figure from another run. The old
version is a git commit, checked out as a worktree and run from its own `src` with this environment's
packages.

    sudo apt-get install wrk        # the load client (benchmarks/serve_load.lua)
    .venv/bin/python benchmarks/serve_ab.py OLD_COMMIT [--rounds 3] [--requests 3000] [-- SERVE OPTIONS]

Writes benchmarks/results/serve_ab.json: per round and version, requests per second, latency percentiles and
the server's CPU milliseconds per request.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from serve import ROOT, cpu_seconds, free_port, launch_healthy, load_average, test_slices, wrk_load

ENTRY = "from lungct.cli.main import run; run()"


def start(src: Path, run: Path, port: int, options: list[str], log: Path) -> subprocess.Popen:
    """The server of the `lungct` package in `src`, run with this environment's packages."""
    env = {**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-c", ENTRY, "serve", "--run", str(run), "--port", str(port), "--log", str(log)]
    try:
        return launch_healthy([*cmd, *options], env, port)[0]
    except RuntimeError as exc:
        raise SystemExit(f"the server from {src}: {exc}") from None


def one_round(src: Path, run: Path, options: list[str], slices, n: int, concurrency: int) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = start(src, run, port, options, Path(tmp) / "predictions.sqlite")
        url = f"http://127.0.0.1:{port}"
        try:
            wrk_load(url, slices, max(200, n // 10), concurrency)  # warm-up: connections, arena, caches
            before = cpu_seconds(proc.pid)
            out = wrk_load(url, slices, n, concurrency)
            out["server_cpu_ms_per_request"] = round((cpu_seconds(proc.pid) - before) * 1000 / out["answered"], 2)
        finally:
            proc.terminate()
            proc.wait(30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the git commit to compare the working tree with")
    parser.add_argument("--run", default=str(ROOT / "runs" / "bench" / "serve"), help="an exported run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "serve_ab.json"))
    parser.add_argument("options", nargs="*", help="lungct serve options for both (default: --precision int8)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk): it is this comparison's load client")
    run = Path(args.run)
    if not (run / "model.onnx").is_file():
        raise SystemExit(f"{run} has no model.onnx: run benchmarks/serve.py once (it exports it), or pass --run")
    options = args.options or ["--precision", "int8"]
    slices = test_slices(run, 40)
    with tempfile.TemporaryDirectory() as tmp:
        worktree = Path(tmp) / "old"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(worktree), args.old], check=True
        )
        try:
            versions = {f"old ({args.old})": worktree / "src", "new (working tree)": ROOT / "src"}
            result: dict = {"load_before": load_average(), "options": options, "rounds": []}
            for r in range(args.rounds):
                entry = {}
                for name, src in versions.items():
                    entry[name] = one_round(src, run, options, slices, args.requests, args.concurrency)
                    o = entry[name]
                    print(
                        f"round {r + 1} {name}: {o['requests_per_s']} req/s, p50 {o['latency']['p50_ms']} ms, "
                        f"p99 {o['latency']['p99_ms']} ms, server CPU {o['server_cpu_ms_per_request']} ms/request",
                        flush=True,
                    )
                result["rounds"].append(entry)
            result["load_after"] = load_average()
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    for name in versions:
        rates = [r[name]["requests_per_s"] for r in result["rounds"]]
        result.setdefault("mean_requests_per_s", {})[name] = round(sum(rates) / len(rates), 1)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["mean_requests_per_s"]))


if __name__ == "__main__":
    main()
