"""Cost of a trained model: parameters, FLOPs per image and CPU latency per image on this machine.

FLOPs come from torch.utils.flop_counter.FlopCounterMode (ships with torch; no fvcore/thop needed). It counts
convolutions and matrix products as 2 x multiply-accumulates, so MobileNetV2 at 224 px shows about 600 MFLOPs
where papers quote "300 M" multiply-adds. Latency is the model's forward pass on one image (batch 1, decoding
and resizing excluded), median of repeated runs with a fixed torch thread count, so backbones measured in
one session on one machine compare fairly; figures from another machine or thread count do not.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, input_size: int) -> int:
    x = torch.zeros(1, 3, input_size, input_size)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.eval()(x)
    return int(counter.get_total_flops())


def cpu_latency_ms(
    model: nn.Module, input_size: int, threads: int = 1, repeats: int = 30, warmup: int = 5
) -> dict[str, float]:
    """Median and 90th percentile milliseconds per single-image forward pass with `threads` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.rand(1, 3, input_size, input_size)
    times = []
    try:
        with torch.inference_mode():
            model.eval()
            for i in range(warmup + repeats):
                t0 = time.perf_counter()
                model(x)
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        torch.set_num_threads(previous)
    times.sort()
    return {"median": statistics.median(times), "p90": times[min(len(times) - 1, int(0.9 * len(times)))]}


def cpu_name() -> str:
    """The processor model as Linux names it (platform.processor() is often empty there)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace", encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
