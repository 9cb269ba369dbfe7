"""Serving benchmark: float vs INT8 vs PyTorch eager, the server with and without torch, with and without batching.

1. model throughput in this process, same inputs and thread count: ONNX Runtime float (model.onnx), ONNX Runtime
   INT8 (model.int8.onnx, `lungct export --quantize int8`) and PyTorch eager, at batch 1 and 32, 1 and 2 threads;
2. ONNX Runtime's graph optimisation levels (and, with --openvino-python, its OpenVINO execution provider) on
   both graphs (benchmarks/onnx_providers.py);
3. servers, each a `lungct serve` subprocess: the full install answering with PyTorch, the full install on
   ONNX Runtime, and the torch-free install (`lungct[serve]` only, in its own uv environment) on float and on
   INT8, with and without request batching. For each: time from process start to a healthy /health, resident
   memory at start and after the load, sequential single-image latency, and a load test (N requests at
   concurrency C on loopback, every non-200 an error). The load client is wrk (C, benchmarks/serve_load.lua)
   when it is installed (`apt-get install wrk`): on 2 cores the aiohttp client, the fallback, takes about 1.5 ms
   of CPU per request away from the server it measures.

The machine's load average is recorded before and after, as other work on the same cores moves every figure.

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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


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


def prepare_run(run: Path, source: Path) -> tuple[dict, dict]:
    """Copy the source run if needed; export float and INT8 unless current exports are there."""
    from lungct.export import export_onnx, quantize_run
    from lungct.inference.onnx_runtime import INT8_EXPORT_FILE, INT8_ONNX_FILE, export_status
    from lungct.run import RunDir, model_version

    if not run.exists():
        if not (source / "model.safetensors").is_file():
            raise SystemExit(f"no trained run at {source}: run `make demo` first, or pass --source RUN_DIR")
        shutil.copytree(source, run)
    version = model_version(RunDir(run))
    info, _ = export_status(RunDir(run), version)
    info = info or export_onnx(run)
    int8, _ = export_status(RunDir(run), version, INT8_EXPORT_FILE, INT8_ONNX_FILE)
    return info, int8 or quantize_run(run)


def test_slices(run: Path, n: int) -> list[tuple[str, bytes]]:
    from lungct.data.splits import load_split

    items = [i for i in load_split(run / "split.csv") if i.part == "test"][:n]
    return [(Path(i.path).name, Path(i.path).read_bytes()) for i in items]


def throughput(run: Path, threads: int, seconds: float) -> dict:
    """Images per second, ONNX Runtime float and INT8 and PyTorch eager: same inputs and threads, one process."""
    import torch

    from lungct.inference import Predictor

    torch.set_num_threads(threads)
    predictors = {
        "onnx_float": Predictor(run, backend="onnx", precision="float", threads=threads),
        "onnx_int8": Predictor(run, backend="onnx", precision="int8", threads=threads),
        "torch": Predictor(run, backend="torch", threads=threads),
    }
    size = predictors["torch"].card.preprocess.input_size
    out: dict = {}
    for batch in (1, 32):
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).numpy()
        rates = {}
        for name, p in predictors.items():
            p.probabilities(x)  # warm-up
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds or done < 2:
                p.probabilities(x)
                done += 1
            rates[name] = done * batch / (time.perf_counter() - start)
        out[f"batch_{batch}"] = {
            **{f"{k}_images_per_s": round(v, 1) for k, v in rates.items()},
            "int8_over_float": round(rates["onnx_int8"] / rates["onnx_float"], 2),
            "float_over_torch": round(rates["onnx_float"] / rates["torch"], 2),
        }
    return out


def providers(python: str, graphs: list[Path], seconds: float, which: str) -> dict:
    """benchmarks/onnx_providers.py under `python` (another interpreter may have another onnxruntime build)."""
    cmd = [python, str(ROOT / "benchmarks" / "onnx_providers.py"), *map(str, graphs), "--providers", which]
    done = subprocess.run([*cmd, "--seconds", str(seconds)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout)


LOCK = ["-c", str(ROOT / "requirements.lock")]  # the versions of the full install (make setup)


def lean_environment(venv: Path) -> Path:
    """A uv environment with lungct[serve] only (no torch; lungct itself editable, so it runs this checkout),
    made once; returns its bin folder."""
    uv = shutil.which("uv") or str(BIN / "uv")
    if not (venv / "bin" / "lungct").is_file():
        subprocess.run([uv, "venv", "--quiet", str(venv)], check=True)
        subprocess.run(
            [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), *LOCK, "-e", f"{ROOT}[serve]"],
            check=True,
        )
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
        capture_output=True,
        text=True,
    )
    if check.stdout.strip() != "True":
        raise SystemExit(f"{venv} has torch installed; it is meant to be the torch-free serving install")
    return venv / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bin_dir: Path, run: Path, port: int, options: list[str]) -> tuple[subprocess.Popen, float]:
    """A `lungct serve` process and the seconds from its start to the first healthy /health."""
    cmd = [str(bin_dir / "lungct"), "serve", "--run", str(run), "--port", str(port), *options]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return launch_healthy(cmd, env, port)


def launch_healthy(cmd: list[str], env: dict, port: int) -> tuple[subprocess.Popen, float]:
    """Start a server command; return it once /health on `port` answers 200, with the seconds that took."""
    import httpx

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError("server did not start within 180 s")


def sequential_latency(url: str, slices: list[tuple[str, bytes]], n: int) -> dict:
    import httpx

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


async def _load(url: str, slices: list[tuple[str, bytes]], n: int, concurrency: int) -> dict:
    import aiohttp

    times: list[float] = []
    statuses: dict[str, int] = {}
    counter = iter(range(n))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in counter:
            name, data = slices[i % len(slices)]
            form = aiohttp.FormData()
            form.add_field("file", data, filename=name, content_type="image/jpeg")
            start = time.perf_counter()
            try:
                async with session.post(f"{url}/v1/predict", data=form) as r:
                    await r.read()
                    key = str(r.status)
            except aiohttp.ClientError as exc:
                key = type(exc).__name__
            times.append((time.perf_counter() - start) * 1000)
            statuses[key] = statuses.get(key, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {
        "requests": n,
        "concurrency": concurrency,
        "seconds": round(wall, 2),
        "requests_per_s": round(n / wall, 1),
        "latency": percentiles(times),
        "statuses": statuses,
        "errors": n - statuses.get("200", 0),
    }


def wrk_load(url: str, slices: list[tuple[str, bytes]], n: int, concurrency: int) -> dict:
    """The load test driven by wrk: N answered requests; every non-2xx and socket error counted as an error."""
    import signal

    boundary = "lungctbenchboundary"  # the one serve_load.lua sends
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, data) in enumerate(slices):
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            body = f"{head}Content-Type: image/jpeg\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode()
            Path(tmp, f"b{i}.bin").write_bytes(body)
        script = Path(__file__).with_name("serve_load.lua")
        cmd = ["wrk", "-t1", f"-c{concurrency}", "-d3600s", "--timeout", "60s", "-s", str(script), url]
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*cmd, "--", tmp, str(len(slices)), str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        marker = proc.stderr.readline()
        wall = time.perf_counter() - start
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    if not marker.startswith("answered"):
        raise RuntimeError(f"wrk stopped before {n} answers: {marker}{err}"[-2000:])
    summary = json.loads(out.strip().splitlines()[-1])
    lat = summary["latency_us"]
    return {
        "client": "wrk",
        "requests": n,
        "answered": summary["requests"],  # a few more than n: those in flight when the n-th answer came
        "concurrency": concurrency,
        "seconds": round(wall, 2),
        "requests_per_s": round(n / wall, 1),
        "latency": {
            "n": summary["requests"],
            **{f"{k}_ms": round(lat[k] / 1000, 2) for k in ("p50", "p90", "p99", "mean", "max")},
        },
        "errors": summary["non_2xx_or_socket_errors"],
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_test(url: str, run: Path, slices, n: int, concurrency: int, server_pid: int) -> dict:
    """The load client in its own process (wrk, or this file with `--client`), so it does not share an interpreter
    with this one; with the CPU time the server and the client spent per request (both run on the same cores)."""
    import resource

    cmd = [sys.executable, __file__, "--client", url, "--run", str(run), "--requests", str(n)]
    before_server = cpu_seconds(server_pid)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if shutil.which("wrk"):
        out = wrk_load(url, slices, n, concurrency)
    else:
        done = subprocess.run([*cmd, "--concurrency", str(concurrency)], capture_output=True, text=True, check=True)
        out = {"client": "aiohttp", **json.loads(done.stdout)}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    out["server_cpu_ms_per_request"] = round((cpu_seconds(server_pid) - before_server) * 1000 / n, 2)
    out["client_cpu_ms_per_request"] = round(client * 1000 / n, 2)  # includes the client's own start-up
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc; the kB figure the kernel reports)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for process {pid}")


def bench_server(name: str, bin_dir: Path, run: Path, options: list[str], slices, args) -> dict:
    import httpx

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = ["--log", str(Path(tmp) / "predictions.sqlite")]
        server, startup_s = start_server(bin_dir, run, port, [*log, *options])
        url = f"http://127.0.0.1:{port}"
        try:
            out: dict = {"options": options, "install": "torch-free lungct[serve]" if bin_dir != BIN else "full"}
            out["startup_to_healthy_s"] = round(startup_s, 2)
            out["rss_mb_at_start"] = rss_mb(server.pid)
            info = httpx.get(f"{url}/v1/model").json()
            out.update({k: info[k] for k in ("backend", "precision", "explain_available")})
            out["single_image_latency"] = sequential_latency(url, slices, args.latency_requests)
            out["load_test"] = load_test(url, run, slices, args.requests, args.concurrency, server.pid)
            out["rss_mb_after_load"] = rss_mb(server.pid)
            batching = httpx.get(f"{url}/v1/model").json()["batching"]
            out["batching"] = batching
            if batching["batches"]:
                out["mean_batch_size"] = round(batching["requests"] / batching["batches"], 2)
            out["still_healthy"] = httpx.get(f"{url}/health").status_code == 200
        finally:
            server.terminate()
            server.wait(30)
    print(f"{name}: {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def client_main(args) -> None:
    slices = test_slices(Path(args.run), 40)
    print(json.dumps(asyncio.run(_load(args.client, slices, args.requests, args.concurrency))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", default=str(ROOT / "runs" / "bench" / "serve"), help="run to serve (exports are written into it)"
    )
    parser.add_argument(
        "--source", default=str(ROOT / "runs" / "demo"), help="run copied to --run when --run does not exist"
    )
    parser.add_argument("--lean-venv", default=str(ROOT / "runs" / "bench" / "serve-venv"), help="torch-free install")
    parser.add_argument("--openvino-python", help="an interpreter with onnxruntime-openvino (see onnx_providers.py)")
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: run only the load client against this URL
    args = parser.parse_args()
    if args.client:
        return client_main(args)
    run = Path(args.run)

    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_before": load_average(),
        "run": str(run),
    }
    export, int8 = prepare_run(run, Path(args.source))
    result["export"] = {k: export[k] for k in ("model_version", "exporter", "opset", "check")}
    result["int8"] = {k: int8[k] for k in ("quantization", "check")}
    slices = test_slices(run, 40)
    thread_counts = sorted({1, os.cpu_count() or 1})
    result["throughput"] = {f"threads_{n}": throughput(run, n, args.seconds) for n in thread_counts}
    graphs = [run / "model.onnx", run / "model.int8.onnx"]
    result["onnxruntime_cpu"] = providers(sys.executable, graphs, args.seconds, "CPUExecutionProvider")
    if args.openvino_python:
        result["onnxruntime_openvino"] = providers(
            args.openvino_python, graphs, args.seconds, "OpenVINOExecutionProvider"
        )

    lean = lean_environment(Path(args.lean_venv))
    servers = {
        "full_torch_backend": (BIN, ["--backend", "torch", "--no-batching"]),
        "full_onnx_float": (BIN, ["--precision", "float"]),
        "torch_free_float": (lean, ["--precision", "float"]),
        "torch_free_int8_no_batching": (lean, ["--precision", "int8", "--no-batching"]),
        "torch_free_int8": (lean, ["--precision", "int8"]),
    }
    result["servers"] = {name: bench_server(name, b, run, opts, slices, args) for name, (b, opts) in servers.items()}
    result["load_after"] = load_average()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
