"""One rank of benchmarks/scale.py's DDP measurement (started by torch.distributed.run).

A fine-tuning step of the LP-FT recipe (MobileNetV2 at 224 px, the top 30% of the backbone and the head
trainable, global batch 32 split over the ranks), timed three ways (medians, taking turns): the DDP step as
training runs it, the same step inside `no_sync()` (no gradient all-reduce), and the all-reduce of a
gradient-sized buffer alone. The difference between the first two is the communication that backward does
not hide.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lungct.config import ModelConfig
from lungct.models.classifier import build_classifier
from lungct.training.freezing import freeze_batchnorm_stats, set_trainable, unfreeze_top


def sync() -> None:
    """All ranks at one point, GPU work included (CUDA calls return before the kernels finish)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dist.barrier()


def timed_medians(steps: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each step function, the functions taking turns (so that other load on the machine
    falls on all of them alike rather than on whichever ran last)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            sync()
            started = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="mobilenetv2_100")
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument(
        "--unfreeze", type=lambda s: int(s) if s.isdigit() else float(s), default=0.3, help="count (int) or fraction"
    )
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    model, _ = build_classifier(ModelConfig(arch=args.arch, input_size=args.size), 3)
    set_trainable(model.head, True)
    unfreeze_top(model.backbone, args.unfreeze)
    model.train()
    freeze_batchnorm_stats(model.backbone)
    model.to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    per_rank = args.global_batch // world
    x = torch.randn(per_rank, 3, args.size, args.size, device=device)
    y = torch.randint(0, 3, (per_rank,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(ddp(x), y).backward()
        optimizer.step()

    def step_without_allreduce() -> None:
        with ddp.no_sync():
            optimizer.zero_grad(set_to_none=True)
            loss_fn(ddp(x), y).backward()
        optimizer.step()

    grad_numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffer = torch.zeros(grad_numel, device=device)
    step()  # warm-up: allocations, DDP's bucket rebuild
    step_without_allreduce()
    medians = timed_medians(
        {"sync": step, "no_sync": step_without_allreduce, "allreduce": lambda: dist.all_reduce(buffer)}, args.steps
    )
    with_sync, without_sync, allreduce = medians["sync"], medians["no_sync"], medians["allreduce"]
    if rank == 0:
        result = {
            "arch": args.arch,
            "world_size": world,
            "device": str(device.type),
            "backend": dist.get_backend(),
            "threads_per_rank": torch.get_num_threads(),
            "global_batch": args.global_batch,
            "per_rank_batch": per_rank,
            "input_size": args.size,
            "trainable_parameters": grad_numel,
            "gradient_mb": round(grad_numel * 4 / 1e6, 2),
            "step_s": round(with_sync, 4),
            "step_without_allreduce_s": round(without_sync, 4),
            "allreduce_alone_s": round(allreduce, 4),
            # the all-reduce's cost as a share of a step: alone (an upper bound, nothing overlapped), and what
            # backward does not hide (the step with it against the step without; noisy on a busy machine)
            "allreduce_share_alone": round(allreduce / with_sync, 4),
            "exposed_allreduce_share": round(max(0.0, with_sync - without_sync) / with_sync, 4),
            "samples_per_s": round(args.global_batch / with_sync, 2),
            "pid": os.getpid(),
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
