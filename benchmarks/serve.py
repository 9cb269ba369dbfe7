"""Serving benchmark: API latency, ONNX Runtime against PyTorch eager, and a bounded load test.

1. single-image latency (p50/p99) through the API: sequential POST /v1/predict of real test slices;
2. model throughput, ONNX Runtime vs PyTorch eager, batch 1 and batch 32, measured in this process in the
   same run with the same thread count, at 1 thread and at all cores (ratios are what to compare across
   machines; on busy shared cores PyTorch's OpenMP threads suffer far more from contention than ONNX
   Runtime's, so the all-cores figures move with the load);
3. a load test: N requests at concurrency C on loopback, counting every non-200 as an error, with the
   server's resident memory before and after.

The server is a `lungct serve` subprocess (prediction log on, into a temporary file). The machine's load
average is recorded before and after, as other work on the same cores moves every figure.

    make demo   # once: trains the default model into runs/demo
    .venv/bin/python benchmarks/serve.py [--source runs/demo] [--run runs/bench/serve] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_average() -> dict:
    one, five, fifteen = os.getloadavg()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2), "load_15m": round(fifteen, 2), "uptime": uptime}


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p90_ms": round(float(np.percentile(a, 90)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "mean_ms": round(float(a.mean()), 2),
    }


def prepare_run(run: Path, source: Path) -> dict:
    """Copy the source run if needed, and export it to ONNX unless a fresh export is there."""
    from lungct.export import export_onnx, export_status
    from lungct.run import RunDir, model_version

    if not run.exists():
        if not (source / "model.safetensors").is_file():
            raise SystemExit(f"no trained run at {source}: run `make demo` first, or pass --source RUN_DIR")
        shutil.copytree(source, run)
    info, _ = export_status(RunDir(run), model_version(RunDir(run)))
    return info or export_onnx(run)


def test_slices(run: Path, n: int) -> list[tuple[str, bytes]]:
    from lungct.data.splits import load_split

    items = [i for i in load_split(run / "split.csv") if i.part == "test"][:n]
    return [(Path(i.path).name, Path(i.path).read_bytes()) for i in items]


def throughput(run: Path, threads: int, seconds: float) -> dict:
    """Images per second for each backend and batch size: same inputs, same thread count, same process."""
    import torch

    from lungct.inference import Predictor

    torch.set_num_threads(threads)
    predictors = {b: Predictor(run, backend=b, threads=threads) for b in ("onnx", "torch")}
    size = predictors["onnx"].card.preprocess.input_size
    out: dict = {}
    for batch in (1, 32):
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        rates = {}
        for name, p in predictors.items():
            p.probabilities(x)  # warm-up
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds or done < 2:
                p.probabilities(x)
                done += 1
            rates[name] = done * batch / (time.perf_counter() - start)
        out[f"batch_{batch}"] = {
            "onnx_images_per_s": round(rates["onnx"], 1),
            "torch_images_per_s": round(rates["torch"], 1),
            "onnx_over_torch": round(rates["onnx"] / rates["torch"], 2),
        }
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, log: Path, workers: int, threads: int) -> subprocess.Popen:
    cmd = [
        str(Path(sys.executable).with_name("lungct")),
        "serve",
        "--run",
        str(run),
        "--port",
        str(port),
        "--log",
        str(log),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start within 180 s")


def sequential_latency(url: str, slices: list[tuple[str, bytes]], n: int) -> dict:
    times, statuses = [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(n + 5):
            name, data = slices[i % len(slices)]
            start = time.perf_counter()
            r = client.post("/v1/predict", files={"file": (name, data, "image/jpeg")})
            if i >= 5:  # the first few warm up connections and caches
                times.append((time.perf_counter() - start) * 1000)
                statuses.append(r.status_code)
    return {**percentiles(times), "errors": sum(s != 200 for s in statuses)}


async def load_test(url: str, slices: list[tuple[str, bytes]], n: int, concurrency: int) -> dict:
    times: list[float] = []
    statuses: dict[str, int] = {}
    counter = iter(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            name, data = slices[i % len(slices)]
            start = time.perf_counter()
            try:
                r = await client.post("/v1/predict", files={"file": (name, data, "image/jpeg")})
                key = str(r.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            times.append((time.perf_counter() - start) * 1000)
            statuses[key] = statuses.get(key, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {
        "requests": n,
        "concurrency": concurrency,
        "seconds": round(wall, 1),
        "requests_per_s": round(n / wall, 1),
        "latency": percentiles(times),
        "statuses": statuses,
        "errors": n - statuses.get("200", 0),
    }


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc; the kB figure the kernel reports)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for process {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", default=str(ROOT / "runs" / "bench" / "serve"), help="run to serve (model.onnx is written into it)"
    )
    parser.add_argument(
        "--source", default=str(ROOT / "runs" / "demo"), help="run copied to --run when --run does not exist"
    )
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="server: model calls at once")
    parser.add_argument("--threads", type=int, default=1, help="server: threads per model call")
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput measurement")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = parser.parse_args()
    run = Path(args.run)

    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_before": load_average(),
        "run": str(run),
    }
    export = prepare_run(run, Path(args.source))
    result["export"] = {k: export[k] for k in ("model_version", "exporter", "opset", "input", "check")}
    slices = test_slices(run, 40)
    # one thread per model call is how the server runs (workers x threads = cores); all cores is the other choice
    thread_counts = sorted({1, os.cpu_count() or 1})
    result["throughput"] = {f"threads_{n}": throughput(run, n, args.seconds) for n in thread_counts}

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = start_server(run, port, Path(tmp) / "predictions.sqlite", args.workers, args.threads)
        url = f"http://127.0.0.1:{port}"
        try:
            rss_started = rss_mb(server.pid)
            info = httpx.get(f"{url}/v1/model").json()
            result["server"] = {
                "backend": info["backend"],
                "workers": args.workers,
                "threads_per_call": args.threads,
                "model_version": info["model_version"],
            }
            result["single_image_latency"] = sequential_latency(url, slices, args.latency_requests)
            rss_before = rss_mb(server.pid)
            result["load_test"] = asyncio.run(load_test(url, slices, args.requests, args.concurrency))
            result["load_test"]["server_rss_mb_at_start"] = rss_started
            result["load_test"]["server_rss_mb_before"] = rss_before
            result["load_test"]["server_rss_mb_after"] = rss_mb(server.pid)
            result["load_test"]["still_healthy"] = httpx.get(f"{url}/health").status_code == 200
        finally:
            server.terminate()
            server.wait(30)
    result["load_after"] = load_average()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
