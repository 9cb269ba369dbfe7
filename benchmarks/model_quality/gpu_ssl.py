"""Self-supervised continued pretraining of the default's MobileNetV2 on CT slices (SimCLR), for a machine with a GPU.

Sessions 19 to 22 found the frozen ImageNet features to be the ceiling, and supervised fine-tuning on about 20
benign patients, even long and on a GPU, only fits the training patients. What is left is to change the
representation without the labels: contrastive pretraining on CT slices, starting from the ImageNet weights, then
the default's own probe on the new features (`ssl_rows.py`, on the CPU). The recipe is fixed before any run:

- SimCLR (Chen et al., 2020): two random views of each slice, a projection head (1280 -> 1024 -> BN -> ReLU -> 128),
  the NT-Xent loss at temperature 0.2 over a batch of 256 slices (510 negatives per view);
- views at 192 px from the 224 px packs: a random resized crop (area 0.3 to 1, aspect 3/4 to 4/3), rotation up to
  15 degrees, horizontal flip, contrast, brightness and gamma jitter, Gaussian blur on half the views, and mild
  noise; the grey-level jitter asks the features to ignore how a scanner renders grey, which is where the
  acquisition signal of session 22 lives;
- the backbone's BatchNorm stays in eval mode (its statistics are folded into the convolutions; the weights' README);
  AdamW, backbone 1e-4, head 1e-3, weight decay 1e-4, 30 warmup steps then cosine decay, 600 steps; the backbone is
  saved after 200 and 600 steps (half precision).

Jobs, none of which sees a test slice:
- `pneumonia`: the 1019 pneumonia CT images alone: another data set, so its features serve every fold of every draw;
- `fold1` ... `fold5`: the pneumonia images plus the training and validation slices of the default's first draw's
  fold k (IQ-OTH/NCCD without labels), as a user would pretrain on the unlabelled slices they train on; each is read
  on its own fold only.

One process per job shares the GPU; each writes OUT/ssl_<job>.safetensors as it finishes (OUT/ssl_records.json
gathers the loss records at the end), and a job past the deadline saves what it has and stops.

Usage (on the GPU machine, after `gpu_pack.py --ssl` made DATA):
  python gpu_ssl.py --data DATA --out OUT [--deadline SECONDS] [--jobs pneumonia,fold1,...] [--steps N --batch N]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from gpu_finetune import load_packed, load_pixels, train_with_frozen_batchnorm, warmup_cosine

STEPS, SAVE_AT = 600, (200, 600)
BATCH, VIEW = 256, 192
LR_BACKBONE, LR_HEAD, WEIGHT_DECAY, WARMUP = 1e-4, 1e-3, 1e-4, 30
TEMPERATURE = 0.2
JOBS = ["pneumonia", "fold1", "fold2", "fold3", "fold4", "fold5"]


def views(x, out: int, torch, F):
    """One random SimCLR view of each slice of a batch (B, 1, H, W) in [0, 1], at out x out px, on x's device."""
    b, dev = x.shape[0], x.device

    def uniform(lo, hi):
        return torch.empty(b, device=dev).uniform_(lo, hi)

    area = uniform(0.3, 1.0)
    ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    sx, sy = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)  # half-extents, in [-1, 1] units
    tx, ty = (1 - sx) * uniform(-1, 1), (1 - sy) * uniform(-1, 1)
    angle = uniform(-15, 15) * math.pi / 180
    flip = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output -> input sampling: rotate the crop's axes, scaled to the crop, mirrored in x, moved to its centre
    theta = torch.stack(
        [torch.stack([cos * sx * flip, -sin * sy, tx], 1), torch.stack([sin * sx * flip, cos * sy, ty], 1)], 1
    )
    grid = F.affine_grid(theta, [b, 1, out, out], align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    v = blur_half(v, torch, F)
    v = (v - 0.5) * uniform(0.7, 1.3).view(b, 1, 1, 1) + 0.5 + uniform(-0.15, 0.15).view(b, 1, 1, 1)
    v = v.clamp(0, 1) ** uniform(0.7, 1.4).view(b, 1, 1, 1)
    v = v + torch.randn_like(v) * uniform(0, 0.03).view(b, 1, 1, 1)
    return v.clamp(0, 1)


def blur_half(v, torch, F):
    """A Gaussian blur (sigma 0.1 to 2 px, one per slice) on a random half of the batch: separable grouped convs."""
    b = v.shape[0]
    sigma = torch.empty(b, device=v.device).uniform_(0.1, 2.0)
    r = torch.arange(-4, 5, device=v.device, dtype=v.dtype)
    k = torch.exp(-(r.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    k = k / k.sum(1, keepdim=True)  # (b, 9)
    w = v.permute(1, 0, 2, 3)  # (1, b, H, W): one group per slice
    w = F.conv2d(F.pad(w, (4, 4, 0, 0), mode="reflect"), k.view(b, 1, 1, 9), groups=b)
    w = F.conv2d(F.pad(w, (0, 0, 4, 4), mode="reflect"), k.view(b, 1, 9, 1), groups=b)
    keep = (torch.rand(b, device=v.device) < 0.5).view(b, 1, 1, 1)
    return torch.where(keep, v, w.permute(1, 0, 2, 3))


def nt_xent(z1, z2, temperature: float, torch, F):
    """SimCLR's NT-Xent loss: each view must pick its partner among the batch's other 2B - 2 views. Written here
    rather than taken from a self-supervised library because the GPU machine has torch and timm only."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    top1 = float((sim.argmax(1) == target).float().mean())
    return F.cross_entropy(sim, target), top1


def job_slices(job: str, pool: dict, pixels: np.ndarray, pneumonia: np.ndarray) -> np.ndarray:
    """The unlabelled slices a job may see: pneumonia, plus its fold's training and validation parts."""
    if job == "pneumonia":
        return np.array(pneumonia)
    fold = int(job.removeprefix("fold")) - 1
    part = np.array(pool["parts"][0][fold])
    own = np.flatnonzero((part == "train") | (part == "val"))
    return np.concatenate([np.asarray(pneumonia), np.asarray(pixels)[own]])


def run_job(job: str, args) -> None:
    import timm
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file

    started = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    if device == "cpu":  # a smoke test: the jobs share the cores
        torch.set_num_threads(1)
    torch.manual_seed(42)
    np.random.seed(42)
    pool = json.loads((args.data / "pool.json").read_text())
    cache = Path(args.cache)
    pixels = load_pixels(args.data, 224, len(pool["paths"]), cache)
    pneumonia = load_packed(args.data, "pneumonia224", pool["pneumonia"], 224, cache)
    x = torch.from_numpy(job_slices(job, pool, pixels, pneumonia)).to(device)  # (n, 224, 224) uint8

    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=0)
    weights = load_file(str(next(args.data.glob("*.safetensors"))))
    model.load_state_dict({k: v for k, v in weights.items() if not k.startswith("classifier.")}, strict=True)
    model = model.to(device).to(memory_format=torch.channels_last)
    head = torch.nn.Sequential(
        torch.nn.Linear(1280, 1024), torch.nn.BatchNorm1d(1024), torch.nn.ReLU(), torch.nn.Linear(1024, 128)
    ).to(device)
    backbone = list(model.parameters())
    opt = torch.optim.AdamW(
        [{"params": backbone, "lr": LR_BACKBONE}, {"params": list(head.parameters()), "lr": LR_HEAD}],
        weight_decay=WEIGHT_DECAY,
    )
    steps = args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(WARMUP, steps))
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    train_with_frozen_batchnorm(model, torch)
    head.train()
    saved: dict[str, torch.Tensor] = {}
    history, order, at = [], np.random.permutation(len(x)), 0
    save_at = sorted({s for s in SAVE_AT if s < steps} | {steps})
    step, stopped = 0, "finished"
    while step < steps:
        if at + args.batch > len(order):  # one pass over the slices, then a fresh order
            order, at = np.random.permutation(len(x)), 0
        idx = torch.from_numpy(order[at : at + args.batch]).to(device)
        at += args.batch
        xb = x[idx].unsqueeze(1).float() / 255.0
        v = torch.cat([views(xb, args.view, torch, F), views(xb, args.view, torch, F)])
        v = (v * 2 - 1).expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
        with amp:
            z = head(model(v)).float()
        loss, top1 = nt_xent(z[: len(idx)], z[len(idx) :], TEMPERATURE, torch, F)
        if not torch.isfinite(loss):
            stopped = f"loss not finite at step {step + 1}"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone + list(head.parameters()), 1.0)
        opt.step()
        sched.step()
        step += 1
        if step % 20 == 0 or step == 1:
            history.append(
                {
                    "step": step,
                    "loss": round(float(loss.detach()), 4),
                    "top1": round(top1, 4),
                    "seconds": round(time.time() - started, 1),
                }
            )
        past_deadline = time.time() - args.started > args.deadline
        if step in save_at or past_deadline:
            saved |= {
                f"step{step}.{k}": v.detach().half().cpu().contiguous()
                for k, v in model.state_dict().items()
                if not k.endswith("num_batches_tracked")  # a counter BatchNorm keeps; not in the weights file
            }
        if past_deadline:
            stopped = f"deadline at step {step}"
            break
    if not saved:  # stopped before the first step: nothing was learned, nothing to save
        saved = {"step0.none": torch.zeros(1)}
    save_file(saved, str(args.out / f"ssl_{job}.safetensors"))
    record = {
        "job": job,
        "slices": len(x),
        "steps": step,
        "stopped": stopped,
        "history": history,
        "seconds": round(time.time() - started, 1),
    }
    (Path(args.cache) / f"ssl_{job}.json").write_text(json.dumps(record))  # main gathers them into one file
    print(json.dumps({k: v for k, v in record.items() if k != "history"} | {"last": history[-1:]}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder `gpu_pack.py --ssl` wrote")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--deadline", type=float, default=420, help="seconds after which every job saves and stops")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--view", type=int, default=VIEW, help="view size in px (a smoke test may shrink it)")
    ap.add_argument("--cache", default="/tmp/lungct_gpu")
    args = ap.parse_args()
    jobs = args.jobs.split(",")
    if not (args.data / "pool.json").is_file() or not (args.data / "pneumonia224.u8.xz").is_file():
        sys.exit(f"{args.data} lacks pool.json or pneumonia224.u8.xz: run gpu_pack.py --ssl first")
    if set(jobs) - set(JOBS) or args.steps < 1 or args.batch < 2:
        sys.exit(f"jobs must come from {JOBS}, --steps be at least 1 and --batch at least 2")
    args.started = time.time()
    import torch
    import torch.multiprocessing as mp

    args.out.mkdir(parents=True, exist_ok=True)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    pool = json.loads((args.data / "pool.json").read_text())
    load_pixels(args.data, 224, len(pool["paths"]), Path(args.cache))  # decompress once, before the jobs map them
    load_packed(args.data, "pneumonia224", pool["pneumonia"], 224, Path(args.cache))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(json.dumps({"torch": torch.__version__, "gpu": gpu, "jobs": jobs, "steps": args.steps}), flush=True)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=run_job, args=(job, args)) for job in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [job for job, p in zip(jobs, procs, strict=True) if p.exitcode != 0]
    records = [Path(args.cache) / f"ssl_{job}.json" for job in jobs if job not in failed]
    (args.out / "ssl_records.json").write_text(json.dumps([json.loads(r.read_text()) for r in records]))
    print(f"{len(jobs) - len(failed)} jobs finished, failed: {failed}, {time.time() - args.started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
