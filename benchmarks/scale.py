"""Scale-out measurements: the scan (cold and cached, 1 and 2 workers), DDP step time and all-reduce share on
1 and 2 CPU processes, the largest registered backbone's compute and gradient, and a scaling model for 8, 32
and 64 GPUs built from those measurements. Writes benchmarks/results/scale.json; docs/scale.md explains it.

    .venv/bin/python benchmarks/scale.py [--steps 6] [--out benchmarks/results/scale.json]

Run it on an otherwise idle machine: every figure is wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
WORKER = Path(__file__).with_name("scale_ddp_worker.py")
LARGEST = "vgg19"  # the registered backbone with the most parameters (143.7 M)

# Interconnect assumptions of the scaling model (not measured here: no GPU machine was lent). Bus bandwidth is
# what NCCL's all-reduce tests report; latency is per ring step.
LINKS = {
    "nvlink_in_node": {"bus_gb_s": 350.0, "latency_us": 10.0, "gpus_per_node": 8},
    "infiniband_400g": {"bus_gb_s": 40.0, "latency_us": 20.0},
    "ethernet_25g": {"bus_gb_s": 2.5, "latency_us": 50.0},
}
# GPU compute per sample (forward + backward, bf16) — an assumption for the model, stated in docs/scale.md.
GPU_MS_PER_SAMPLE = {"mobilenetv2_100": 0.25, LARGEST: 2.0}


def scan_figures() -> dict:
    from lungct.config import DataConfig, SourceConfig
    from lungct.data.scan import scan_samples
    from lungct.data.sources import collect_samples

    sources = [SourceConfig(path=str(p)) for p in (SHARED / "iq-othnccd", SHARED / "ct-pneumonia") if p.exists()]
    samples = collect_samples(DataConfig(sources=sources))
    out: dict = {"images": len(samples), "sources": [Path(s.path).name for s in sources]}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["LUNGCT_CACHE_DIR"] = cache
        for workers in (1, 2):
            started = time.perf_counter()
            scan_samples(samples, progress=False, workers=workers, cache=False)
            seconds = time.perf_counter() - started
            out[f"cold_{workers}_worker_images_per_s"] = round(len(samples) / seconds, 1)
        scan_samples(samples, progress=False, workers=2)  # fills the cache
        started = time.perf_counter()
        scan_samples(samples, progress=False, workers=2)
        seconds = time.perf_counter() - started
        out["cached_images_per_s"] = round(len(samples) / seconds, 1)
    out["cached_speedup_vs_cold_2_workers"] = round(out["cached_images_per_s"] / out["cold_2_worker_images_per_s"], 1)
    return out


def ddp_figures(nproc: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "ddp.json"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            str(WORKER),
            "--steps",
            str(steps),
            "--json",
            str(result),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
        subprocess.run(command, check=True, env=env, cwd=ROOT, capture_output=True)
        return json.loads(result.read_text())


def largest_backbone_figures(batch: int = 2, repeats: int = 2) -> dict:
    """Forward + backward of the whole network on this CPU (random weights: the same arithmetic)."""
    from lungct.config import ModelConfig
    from lungct.models.classifier import build_classifier

    model, backbone = build_classifier(ModelConfig(arch=LARGEST), 3)
    size = backbone.preprocess.input_size
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 3, (batch,))
    loss = torch.nn.CrossEntropyLoss()
    model.train()
    loss(model(x), y).backward()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        loss(model(x), y).backward()
    seconds = (time.perf_counter() - started) / repeats
    params = sum(p.numel() for p in model.parameters())
    return {
        "arch": LARGEST,
        "input_size": size,
        "parameters": params,
        "gradient_mb_whole_network": round(params * 4 / 1e6, 1),
        "cpu_ms_per_sample": round(seconds / batch * 1000, 1),
        "threads": torch.get_num_threads(),
    }


def ring_allreduce_s(gradient_bytes: float, gpus: int, bus_gb_s: float, latency_us: float) -> float:
    """Ring all-reduce: each GPU sends and receives 2 (N-1)/N of the gradient, in 2 (N-1) latency-bound steps."""
    if gpus == 1:
        return 0.0
    return 2 * (gpus - 1) / gpus * gradient_bytes / (bus_gb_s * 1e9) + 2 * (gpus - 1) * latency_us * 1e-6


def scaling_model(arch: str, gradient_mb: float, ms_per_sample: float, global_batch: int) -> list[dict]:
    """Step time and efficiency at a fixed global batch (as lungct trains: per-GPU batch = global / N).
    Bounds: no overlap (compute, then all-reduce) and full overlap (all-reduce hidden behind backward)."""
    rows = []
    compute_1 = ms_per_sample * global_batch / 1000
    for gpus in (1, 8, 32, 64):
        link = LINKS["nvlink_in_node"] if gpus <= LINKS["nvlink_in_node"]["gpus_per_node"] else LINKS["infiniband_400g"]
        comm = ring_allreduce_s(gradient_mb * 1e6, gpus, link["bus_gb_s"], link["latency_us"])
        compute = compute_1 / gpus
        for overlap, step in (("none", compute + comm), ("full", max(compute, comm))):
            rows.append(
                {
                    "arch": arch,
                    "gpus": gpus,
                    "global_batch": global_batch,
                    "per_gpu_batch": round(global_batch / gpus, 2),
                    "overlap": overlap,
                    "compute_ms": round(compute * 1000, 3),
                    "allreduce_ms": round(comm * 1000, 3),
                    "step_ms": round(step * 1000, 3),
                    "efficiency": round(compute_1 / (gpus * step), 3),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = parser.parse_args()
    load_start = round(os.getloadavg()[0], 2)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
    }
    print("scan ...", flush=True)
    results["scan"] = scan_figures()
    print(json.dumps(results["scan"]), flush=True)
    results["ddp_cpu"] = []
    for nproc in (1, 2):
        print(f"DDP on {nproc} process(es) ...", flush=True)
        results["ddp_cpu"].append(ddp_figures(nproc, args.steps))
        print(json.dumps(results["ddp_cpu"][-1]), flush=True)
    print(f"{LARGEST} ...", flush=True)
    results["largest_backbone"] = largest_backbone_figures()
    print(json.dumps(results["largest_backbone"]), flush=True)
    mobilenet = results["ddp_cpu"][0]
    cpu_ms_mobilenet = mobilenet["step_without_allreduce_s"] * 1000 / mobilenet["global_batch"]
    largest = results["largest_backbone"]
    results["scaling_model"] = {
        "assumptions": {"links": LINKS, "gpu_ms_per_sample": GPU_MS_PER_SAMPLE, "global_batch": 256},
        "gpu": scaling_model(
            "mobilenetv2_100 (default recipe: top 30% + head)",
            mobilenet["gradient_mb"],
            GPU_MS_PER_SAMPLE["mobilenetv2_100"],
            256,
        )
        + scaling_model(
            f"{LARGEST} (whole network)", largest["gradient_mb_whole_network"], GPU_MS_PER_SAMPLE[LARGEST], 256
        ),
        "cpu_measured_compute": scaling_model(
            "mobilenetv2_100 (CPU compute measured here)", mobilenet["gradient_mb"], cpu_ms_mobilenet, 256
        )
        + scaling_model(
            f"{LARGEST} (CPU compute measured here)",
            largest["gradient_mb_whole_network"],
            largest["cpu_ms_per_sample"],
            256,
        ),
    }
    # other work on the machine while this ran (1-minute load averages; 2 cores here)
    results["machine"]["load_average_start_end"] = [load_start, round(os.getloadavg()[0], 2)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
