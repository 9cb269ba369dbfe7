"""Long whole-network fine-tuning of MobileNetV2 on the default's 25 group folds, for a machine with a GPU.

Every fine-tuning row of docs/model-quality.md was trained on 2 CPU cores, so none fine-tuned the whole network
for long: 4 to 8 epochs over part of it. This asks whether a standard long recipe, affordable only on a GPU, learns
a representation the frozen ImageNet features lack. The recipe was fixed before any run and is not tuned on a
test part:

- timm's MobileNetV2 from the shared ImageNet weights, a new 3-class head (dropout 0.2); BatchNorm kept in eval
  mode throughout, as the weights' README asks (their statistics are folded into the convolutions);
- recipe `long` (LP-FT): 3 epochs training the head alone, then 30 epochs over the whole network with AdamW
  (head 1e-3, backbone 1e-4, weight decay 0.01), one warmup epoch, cosine decay to zero; recipe `gentle`: the
  head starts as the default's own probe (see RECIPES), then 15 epochs at a tenth of those rates;
- the class-weighted cross-entropy of `train.class_weights` with label smoothing 0.1;
- lungct's affine augmentation (rotation 10 degrees, shift 0.1, shear 5 degrees, zoom 0.1, horizontal flip),
  done on the GPU with affine_grid/grid_sample, zero (black) outside the slice;
- timm's ModelEmaV3 (decay 0.99 per step) over the weights; the EMA model is what is scored, once per slice and
  averaged with its mirror image.

It trains on each fold's training part, never looks at its test part while training, and returns the validation
and test parts' probabilities; `gpu_rows.py` scores them with the study's own metrics on this machine's side.

Jobs are (size, draw, fold); several worker processes share the GPU (one small model does not fill it), take jobs
in order until the deadline, and each finished job is written to OUT/results.json at once, so a run cut short
keeps what it finished.

Usage (on the GPU machine, after `gpu_pack.py` made DATA):
  python gpu_finetune.py --data DATA --out OUT [--deadline SECONDS] [--workers N] [--jobs 224:0,448:0,224:1-4]
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import queue
import sys
import time
from pathlib import Path

import numpy as np

BATCH = 32
WEIGHT_DECAY = 0.01
# long: the head trained alone by AdamW, then a long whole-network schedule at a usual fine-tuning rate.
# gentle: the head starts as the default's own probe (logistic regression on the frozen features of the training
# part and its mirror images, C 0.01 as lungct's fallback; standardisation folded into the linear layer), then a
# short whole-network schedule at a tenth of that rate: fine-tuning that starts from the default model itself.
RECIPES = {
    "long": {"head_epochs": 3, "epochs": 30, "lr_head": 1e-3, "lr_backbone": 1e-4},
    "gentle": {"head_epochs": 0, "epochs": 15, "lr_head": 1e-4, "lr_backbone": 1e-5},
}
PROBE_C = 0.01
EMA_DECAY = 0.99
ROTATION, SHIFT, SHEAR, ZOOM = 10.0, 0.1, 5.0, 0.1
CHECK_EVERY = 5  # epochs between validation checks of the EMA model (a learning-dynamics record, not a choice)


def parse_jobs(spec: str) -> list[tuple[int, int, int]]:
    """'224:0,448:0,224:1-4' -> [(size, draw, fold), ...] in that order, folds 0..4 of each draw."""
    jobs = []
    for item in spec.split(","):
        size, draws = item.split(":")
        lo, _, hi = draws.partition("-")
        for draw in range(int(lo), int(hi or lo) + 1):
            jobs += [(int(size), draw, fold) for fold in range(5)]
    return jobs


def class_recalls(p: np.ndarray, y: np.ndarray, n_classes: int) -> list[float]:
    """Recall of each class present in `y` (their mean is the balanced accuracy)."""
    pred = p.argmax(1)
    return [float((pred[y == k] == k).mean()) for k in range(n_classes) if (y == k).any()]


def load_packed(data: Path, name: str, n: int, side: int, cache: Path) -> np.ndarray:
    """(n, side, side) uint8 slices of DATA/<name>.u8.xz (gpu_pack.py), decompressed once into CACHE and mapped."""
    target = cache / f"{name}.npy"
    if not target.exists():
        raw = lzma.decompress((data / f"{name}.u8.xz").read_bytes())
        np.save(target, np.frombuffer(raw, dtype=np.uint8).reshape(n, side, side))
    return np.load(target, mmap_mode="r")


def load_pixels(data: Path, size: int, n: int, cache: Path) -> np.ndarray:
    """The IQ-OTH/NCCD slices at `size` px."""
    return load_packed(data, f"x{size}", n, size, cache)


def train_with_frozen_batchnorm(model, torch) -> None:
    """Training mode, but every BatchNorm in eval mode: the shared weights' statistics are folded into the
    convolutions, and batch statistics would undo the fold."""
    model.train()
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.eval()


def warmup_cosine(warm: int, total: int):
    """A LambdaLR factor: linear warmup over `warm` steps, then cosine decay to zero at step `total`."""

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return factor


def augment(x, torch, F):
    """lungct's affine set on a batch (B, 1, H, W) in [0, 1], one random transform per slice, on x's device."""
    b = x.shape[0]
    dev = x.device

    def uniform(lo, hi):
        return torch.empty(b, device=dev).uniform_(lo, hi)

    angle = uniform(-ROTATION, ROTATION) * math.pi / 180
    shear = uniform(-SHEAR, SHEAR) * math.pi / 180
    scale = uniform(1 - ZOOM, 1 + ZOOM)
    tx, ty = uniform(-SHIFT, SHIFT) * 2, uniform(-SHIFT, SHIFT) * 2  # normalised coordinates span 2
    flip = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
    # output -> input sampling matrix: inverse of (rotate . shear . scale), then the shift
    cos, sin = torch.cos(angle), torch.sin(angle)
    a = torch.stack([cos, -sin + cos * torch.tan(shear), sin, cos + sin * torch.tan(shear)], 1).view(b, 2, 2)
    a = torch.linalg.inv(a * scale.view(b, 1, 1))
    a[:, :, 0] *= flip.view(b, 1)
    theta = torch.cat([a, torch.stack([tx, ty], 1).view(b, 2, 1)], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def run_job(job, pool, pixels, weights: Path, device: str, recipe: str, epochs: int = 0, max_train: int = 0) -> dict:
    import timm
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from timm.utils import ModelEmaV3

    size, draw, fold = job
    settings = RECIPES[recipe]
    epochs = epochs or settings["epochs"]
    torch.manual_seed(42 + fold)
    classes = sorted(set(pool["labels"]))
    y_all = np.array([classes.index(lbl) for lbl in pool["labels"]])
    part = np.array(pool["parts"][draw][fold])
    train, val, test = (np.flatnonzero(part == p) for p in ("train", "val", "test"))
    if max_train:  # a smoke test: a few slices of each part
        train, val, test = (a[:: max(1, len(a) // k)][:k] for a, k in ((train, max_train), (val, 16), (test, 16)))
    x = torch.from_numpy(np.array(pixels[size])).to(device)  # (n, H, W) uint8
    y = torch.from_numpy(y_all).to(device)

    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=len(classes), drop_rate=0.2)
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"classifier.weight", "classifier.bias"}:
        raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    model = model.to(device).to(memory_format=torch.channels_last)

    counts = np.bincount(y_all[train], minlength=len(classes))
    class_weight = torch.tensor(len(train) / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32)
    criterion = torch.nn.CrossEntropyLoss(weight=class_weight.to(device), label_smoothing=0.1)
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    def batch_input(idx, train_mode: bool):
        xb = x[idx].unsqueeze(1).float() / 255.0
        if train_mode:
            xb = augment(xb, torch, F)
        return (xb * 2 - 1).expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def predict(m, idx):
        m.eval()
        out, out_tta = [], []
        for s in range(0, len(idx), 128):
            xb = batch_input(torch.from_numpy(idx[s : s + 128]).to(device), False)
            with amp:
                p = m(xb).float().softmax(1)
                q = m(xb.flip(-1)).float().softmax(1)
            out.append(p)
            out_tta.append((p + q) / 2)
        return torch.cat(out).cpu().numpy(), torch.cat(out_tta).cpu().numpy()

    def epoch(opt, sched, ema, params_on):
        train_with_frozen_batchnorm(model, torch)
        perm = torch.from_numpy(np.random.permutation(train)).to(device)
        losses = []
        for s in range(0, len(perm) - BATCH // 2, BATCH):  # drop a last batch smaller than half
            idx = perm[s : s + BATCH]
            with amp:
                loss = criterion(model(batch_input(idx, True)).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params_on, 1.0)
            opt.step()
            if sched is not None:
                sched.step()
            if ema is not None:
                ema.update(model)
            losses.append(loss.detach())
        return float(torch.stack(losses).mean())

    np.random.seed(42 + fold)
    t0 = time.time()
    head = list(model.get_classifier().parameters())
    backbone = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    for p in backbone:
        p.requires_grad_(False)
    history = []
    probe_start = {}
    if settings["head_epochs"]:
        opt = torch.optim.AdamW(head, lr=settings["lr_head"], weight_decay=WEIGHT_DECAY)
        for e in range(settings["head_epochs"]):
            history.append({"phase": "head", "epoch": e + 1, "loss": epoch(opt, None, None, head)})
    else:
        fit_probe_head(model, x, train, y_all, device, batch_input, amp)
        pv, _ = predict(model, val)
        pt, pt_tta = predict(model, test)
        probe_start = {"p_val_probe": np.round(pv, 5).tolist(), "p_test_probe": np.round(pt, 5).tolist()}
    for p in backbone:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(
        [{"params": head, "lr": settings["lr_head"]}, {"params": backbone, "lr": settings["lr_backbone"]}],
        weight_decay=WEIGHT_DECAY,
    )
    steps_per_epoch = len(range(0, len(train) - BATCH // 2, BATCH))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps_per_epoch, epochs * steps_per_epoch))
    ema = ModelEmaV3(model, decay=EMA_DECAY)
    for e in range(epochs):
        row = {"phase": "whole", "epoch": e + 1, "loss": epoch(opt, sched, ema, head + backbone)}
        if (e + 1) % CHECK_EVERY == 0 or e + 1 == epochs:
            pv, _ = predict(ema.module, val)
            yv = y_all[val]
            row["val_balanced_accuracy"] = float(np.mean(class_recalls(pv, yv, len(classes))))
            row["val_nll"] = float(-np.log(np.clip(pv[np.arange(len(val)), yv], 1e-12, None)).mean())
        history.append(row)
    train_seconds = time.time() - t0
    pv, pv_tta = predict(ema.module, val)
    pt, pt_tta = predict(ema.module, test)
    return {
        "recipe": recipe,
        "size": size,
        "draw": draw,
        "fold": fold,
        "classes": classes,
        "val": val.tolist(),
        "test": test.tolist(),
        "p_val": np.round(pv, 5).tolist(),
        "p_val_tta": np.round(pv_tta, 5).tolist(),
        "p_test": np.round(pt, 5).tolist(),
        "p_test_tta": np.round(pt_tta, 5).tolist(),
        "history": history,
        "train_seconds": round(train_seconds, 1),
        **probe_start,
    }


def fit_probe_head(model, x, train, y_all, device, batch_input, amp) -> None:
    """The default's probe as the model's head: logistic regression on standardised frozen features of the training
    slices and their mirrors, class weights balanced, its scaler folded into the linear layer."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    model.eval()
    views: tuple[list, list] = ([], [])
    with torch.no_grad():
        for s in range(0, len(train), 128):
            xb = batch_input(torch.from_numpy(train[s : s + 128]).to(device), False)
            with amp:
                for out, view in zip(views, (xb, xb.flip(-1)), strict=True):
                    out.append(model.forward_head(model.forward_features(view), pre_logits=True).float().cpu())
    f = torch.cat([torch.cat(v) for v in views]).double().numpy()  # the slices, then their mirrors
    yy = np.concatenate([y_all[train], y_all[train]])
    scaler = StandardScaler().fit(f)
    lr = LogisticRegression(C=PROBE_C, class_weight="balanced", max_iter=3000).fit(scaler.transform(f), yy)
    w = lr.coef_ / scaler.scale_
    b = lr.intercept_ - (lr.coef_ * scaler.mean_ / scaler.scale_).sum(1)
    clf = model.get_classifier()
    with torch.no_grad():
        clf.weight.copy_(torch.from_numpy(w).float())
        clf.bias.copy_(torch.from_numpy(b).float())
        check = clf(torch.from_numpy(f[:8]).float().to(device))
    expected = lr.decision_function(scaler.transform(f[:8]))
    if not np.allclose(check.cpu().numpy(), expected, atol=1e-3 * max(1.0, np.abs(expected).max())):
        raise RuntimeError("the folded probe head does not reproduce the logistic regression")


def worker(rank, jobs, results, args, started) -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True  # every batch has the same shape
    if device == "cpu":
        torch.set_num_threads(1)
    pool = json.loads((args.data / "pool.json").read_text())
    n = len(pool["paths"])
    cache = Path(args.cache)
    pixels = {s: load_pixels(args.data, s, n, cache) for s in pool["sizes"]}
    weights = next(args.data.glob("*.safetensors"))
    while True:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            break
        if time.time() - started > args.deadline:
            results.put({"skipped": list(job)})
            continue
        try:
            results.put(run_job(job, pool, pixels, weights, device, args.recipe, args.epochs, args.max_train))
        except Exception as exc:  # reported with the job, so one failure does not hide the others' results
            results.put({"failed": list(job), "error": f"{type(exc).__name__}: {exc}"})
    results.put({"worker_done": rank})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder gpu_pack.py wrote")
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json")
    ap.add_argument("--deadline", type=float, default=420, help="seconds after which no job is started")
    ap.add_argument("--workers", type=int, default=5)
    ap.add_argument("--jobs", default="224:0,448:0,224:1-4,448:1-4")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="long")
    ap.add_argument("--epochs", type=int, default=0, help="whole-network epochs instead of the recipe's (smoke tests)")
    ap.add_argument("--max-train", type=int, default=0, help="train on this many slices only (a smoke test)")
    ap.add_argument("--cache", default="/tmp/lungct_gpu")
    args = ap.parse_args()
    if not (args.data / "pool.json").is_file():
        sys.exit(f"{args.data} has no pool.json: run gpu_pack.py first")
    if args.workers < 1 or args.epochs < 0:
        sys.exit("--workers must be at least 1 and --epochs not negative")
    started = time.time()
    import torch
    import torch.multiprocessing as mp

    args.out.mkdir(parents=True, exist_ok=True)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    pool = json.loads((args.data / "pool.json").read_text())
    for s in pool["sizes"]:  # decompress once, before the workers map the arrays
        load_pixels(args.data, s, len(pool["paths"]), Path(args.cache))
    env = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "recipe": {
            "name": args.recipe,
            **RECIPES[args.recipe],
            **({"epochs": args.epochs} if args.epochs else {}),
            "batch": BATCH,
            "weight_decay": WEIGHT_DECAY,
            "ema_decay": EMA_DECAY,
            "label_smoothing": 0.1,
        },
    }
    print(json.dumps(env), flush=True)
    ctx = mp.get_context("spawn")
    jobs, results = ctx.Queue(), ctx.Queue()
    for job in parse_jobs(args.jobs):
        jobs.put(job)
    procs = [ctx.Process(target=worker, args=(r, jobs, results, args, started)) for r in range(args.workers)]
    for p in procs:
        p.start()
    done, finished, skipped, failed = 0, [], [], []
    while done < len(procs):
        msg = results.get()
        if "worker_done" in msg:
            done += 1
            continue
        if "skipped" in msg:
            skipped.append(msg["skipped"])
        elif "failed" in msg:
            failed.append(msg)
            print("FAILED", msg, flush=True)
        else:
            finished.append(msg)
            pt, yt = np.array(msg["p_test"]), np.array([msg["classes"].index(pool["labels"][i]) for i in msg["test"]])
            recalls = class_recalls(pt, yt, len(msg["classes"]))
            print(
                f"{time.time() - started:6.0f} s  size {msg['size']} draw {msg['draw']} fold {msg['fold'] + 1}: "
                f"train {msg['train_seconds']} s, test bal. acc {np.mean(recalls):.3f} recalls {np.round(recalls, 3)}",
                flush=True,
            )
        tmp = args.out / "results.json.tmp"
        tmp.write_text(json.dumps({"env": env, "jobs": finished, "skipped": skipped, "failed": failed}))
        os.replace(tmp, args.out / "results.json")
    for p in procs:
        p.join()
    print(f"{len(finished)} jobs finished, {len(skipped)} skipped, {len(failed)} failed, {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
