"""Memory cost of a hostile /v1/explain request: a tiny 20x20000 PNG against a live `lungct serve`.

Starts the server on a free loopback port, reads its peak resident memory (VmHWM) after a normal request,
sends the long thin PNG, and reads it again. Writes benchmarks/results/explain_probe.json.

    .venv/bin/python benchmarks/explain_probe.py [--run runs/demo]
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 40).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "demo"))
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "explain_probe.json"))
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).parent / "lungct"), "serve", "--run", args.run, "--port", str(port), "--no-log"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        normal = png(512, 512)
        httpx.post(f"{url}/v1/explain", files={"file": ("normal.png", normal, "image/png")}, timeout=300)
        before = peak_rss_mb(server.pid)
        hostile = png(20, 20000)
        t0 = time.perf_counter()
        answer = httpx.post(f"{url}/v1/explain", files={"file": ("long.png", hostile, "image/png")}, timeout=300)
        seconds = time.perf_counter() - t0
        after = peak_rss_mb(server.pid)
        size = Image.open(io.BytesIO(answer.content)).size if answer.status_code == 200 else None
        result = {
            "hostile_png_bytes": len(hostile),
            "status": answer.status_code,
            "seconds": round(seconds, 2),
            "peak_rss_mb_before": round(before, 1),
            "peak_rss_mb_after": round(after, 1),
            "peak_rss_growth_mb": round(after - before, 1),
            "overlay_size": size,
        }
    finally:
        server.terminate()
        server.wait(timeout=60)
    Path(args.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
