"""Two-phase transfer learning with early stopping, best checkpoint and resume.

Phase "head": the backbone is frozen and only the head trains. Phase "finetune": the top layers of the
backbone are unfrozen at a lower learning rate, starting from the best weights of phase one.
Backbones without pretrained weights train whole in one phase ("all").

Under torchrun (lungct.distributed) the same code runs on every rank with DistributedDataParallel: each
rank takes its slice of every global batch, the loss is normalised over the whole global batch, so one step
equals the single-process step on the config's batch size whatever the number of ranks; rank 0 alone
prepares the data, writes the run directory and decides early stopping, and broadcasts what it decided.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, WeightedRandomSampler
from tqdm import tqdm

from lungct.config import ExperimentConfig, load_config, save_config
from lungct.contracts import SplitPart
from lungct.data.dataset import CTImageDataset
from lungct.data.prepare import prepare_data, split_items
from lungct.data.splits import SplitItem, load_split, part_counts, save_split
from lungct.data.transforms import eval_transform, train_transform
from lungct.distributed import IGNORE_INDEX, PaddedDataset, ShardedBatches, current, restart_count
from lungct.errors import LungCTError
from lungct.files import atomic_csv, output_folder, sigint_deferred
from lungct.inference.calibration import CALIBRATION_FILE
from lungct.inference.familiarity import FAMILIARITY_FILE
from lungct.inference.onnx_runtime import EXPORT_FILE, INT8_EXPORT_FILE, INT8_ONNX_FILE, ONNX_FILE
from lungct.models.classifier import build_classifier
from lungct.run import ModelCard, RunDir, load_weights, save_weights, write_json
from lungct.training.freezing import count_trainable, freeze_batchnorm_stats, set_trainable, unfreeze_top
from lungct.training.losses import make_loss
from lungct.training.optim import build_optimizer, build_scheduler

log = logging.getLogger("lungct")


@dataclass
class Phase:
    name: str
    epochs: int
    lr: float
    unfreeze: int | float | None  # None: whole backbone frozen; "all" phase uses -1 (see top_layer_count)


def seed_generators(seed: int) -> None:
    """Python's, numpy's and torch's global generators (dropout, augmentation, mixup draw from them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_everything(seed: int) -> None:
    seed_generators(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def plan_phases(cfg: ExperimentConfig, pretrained: bool) -> list[Phase]:
    t = cfg.train
    if not pretrained:
        return [Phase("all", max(1, t.phase1.epochs + t.phase2.epochs), t.phase1.lr, -1)]
    probe = t.phase1.solver == "logistic"  # one closed-form fit, whatever phase1.epochs says
    return [
        p
        for p in (
            Phase("head", 1 if probe else t.phase1.epochs, 0.0 if probe else t.phase1.lr, None),
            Phase("finetune", t.phase2.epochs, t.phase2.lr, t.phase2.unfreeze),
        )
        if p.epochs > 0
    ]


def _score(row: dict, monitor: str) -> float:
    """Higher is better, whatever the monitor."""
    return -row[monitor] if monitor.endswith("loss") else row[monitor]


EpochCallback = Callable[[dict], None]

# What other commands derive from a run's weights and keep in the run folder: the calibration (lungct calibrate:
# calibration.json and its calibration/ report), the familiarity and drift references, the ONNX exports, an
# operating point written into the run (threshold --out RUN, which the DICOM node reads), the evaluation in RUN/eval
# (which serve reports) and a retrain's promotion decision. Training that resumes or continues in the folder writes
# new weights, which make every one of them wrong without a word (predict applied the old temperature to the new
# weights), so it removes them as --overwrite does; what resuming needs (checkpoint, history, split, config,
# model.json, the best weights so far) stays. The names not imported live in layers above training.
WEIGHTS_DERIVED = (
    CALIBRATION_FILE,
    "calibration",
    FAMILIARITY_FILE,
    "drift_reference.npz",  # lungct.monitoring.drift_reference.REFERENCE_FILE
    ONNX_FILE,
    EXPORT_FILE,
    INT8_ONNX_FILE,
    INT8_EXPORT_FILE,
    "operating_points.json",  # lungct.evaluation.operating_points
    "coverage_accuracy.png",
    "eval",
    "promotion.json",  # lungct.retrain.challenger.PROMOTION_FILE
)


# A seam for crash-safety tests: called with the name of each place a kill could land (a batch, each file a
# run writes, a checkpoint written but not yet renamed). tests/training/test_kill_resume.py kills there.
def _no_kill(point: str) -> None:
    return None


KILL_POINT: Callable[[str], None] = _no_kill


class Trainer:
    def __init__(
        self,
        cfg: ExperimentConfig,
        out: str | Path,
        progress: bool = True,
        overwrite: bool = False,
        callbacks: Sequence[EpochCallback] = (),
        items: list[SplitItem] | None = None,
    ):
        """`items`: a given split (a cv fold, a split file) instead of one drawn from the config's data."""
        self.cfg = cfg
        self.given_items = items
        self.callbacks = list(callbacks)
        self.run = RunDir(out)
        self.dist = current()
        self.device = self.dist.device()
        self.progress = progress and self.dist.is_main
        # A worker group that torchrun restarted (--max-restarts) resumes its own run; it never starts afresh.
        self.overwrite = overwrite and restart_count() == 0
        if self.run.read_summary().complete:  # every rank checks (read only), so every rank stops alike
            if not self.overwrite:
                raise LungCTError(f"{self.run.path} already holds a finished run; use --overwrite or another --out")
            if self.dist.is_main:
                shutil.rmtree(self.run.path)
        if self.dist.is_main:
            self._refuse_foreign_folder()
            output_folder(self.run.path, "--out")

    def _refuse_foreign_folder(self) -> None:
        """A run writes config.yaml, model.json, split.csv and more into --out: a folder that already holds files
        but nothing of a run (every run, even an interrupted one, writes split.csv first; a checkpoint or summary
        also marks one) would have them overwritten."""
        path = self.run.path
        marks = (self.run.split, self.run.checkpoint, self.run.summary, self.run.model_json)
        if path.is_dir() and not any(m.is_file() for m in marks) and any(path.iterdir()):
            raise LungCTError(
                f"--out {path} holds files but no lungct run (no split.csv), which training would overwrite; "
                "choose a new or empty folder"
            )

    @property
    def train_seed(self) -> int:
        """The seed of everything random in training; the split's seed is the experiment's."""
        return self.cfg.seed if self.cfg.train.seed is None else self.cfg.train.seed

    def _resumable(self) -> bool:
        """An interrupted run resumes only under the config it started with: mixing two recipes is refused,
        and --overwrite starts afresh instead."""
        if not self.run.config.is_file():
            return True
        changed = changed_fields(load_config(self.run.config).model_dump(), self.cfg.model_dump())
        if changed and self.overwrite:
            log.info("%s: the interrupted run used another config (%s); starting afresh", self.run.path, changed)
            shutil.rmtree(self.run.path)
            self.run.path.mkdir(parents=True)
            return False
        if changed:
            raise LungCTError(
                f"{self.run.path} holds an interrupted run made with another config ({', '.join(changed)} differ); "
                "run it again with the same config to resume, or pass --overwrite to start afresh"
            )
        return True

    def _drop_weights_derived(self) -> None:
        """Remove what earlier weights of this run left behind (WEIGHTS_DERIVED), saying so in one line."""
        found = [self.run.path / name for name in WEIGHTS_DERIVED if (self.run.path / name).exists()]
        if not found:
            return
        folders = {p for p in found if p.is_dir() and not p.is_symlink()}
        names = [p.name + ("/" if p in folders else "") for p in found]
        for path in found:
            if path in folders:
                shutil.rmtree(path)
            else:
                path.unlink()
        log.warning(
            "%s: training goes on with new weights, so %s, made from the earlier weights, %s removed; "
            "run the commands that made them again when training ends",
            self.run.path,
            ", ".join(names),
            "was" if len(names) == 1 else "were",
        )

    # -- data ---------------------------------------------------------------------------------------
    def _items(self) -> tuple[list[SplitItem], list[dict]]:
        """Rank 0 scans the data (or reads the split) once and hands the items to the other ranks."""
        return self.dist.broadcast(self._main_items() if self.dist.is_main else None)

    def _main_items(self) -> tuple[list[SplitItem], list[dict]]:
        if self.run.checkpoint.is_file() and self.run.split.is_file() and self._resumable():
            log.info("resuming: reusing the split in %s", self.run.split)
            return load_split(self.run.split), self.run.read_summary().skipped
        if self.given_items is not None:
            save_split(self.given_items, self.run.split)
            return self.given_items, []
        data = prepare_data(self.cfg, self.progress)
        items = split_items(data, self.cfg)
        save_split(items, self.run.split)
        return items, [{"path": s.path, "reason": s.reason} for s in data.skipped]

    def _loader(self, items: list[SplitItem], transform, shuffle: bool, shard: bool = True) -> DataLoader:
        """Batches of `items`. The sampler and its seeded generator are the ones DataLoader(shuffle=...) would
        make; under torchrun each rank takes its slice of every global batch (ShardedBatches), so the global
        batches and their order are the single process's, whatever the number of ranks."""
        t = self.cfg.train
        ds = CTImageDataset(
            [i.path for i in items],
            [self.class_index[i.label] for i in items],
            self.card.preprocess,
            transform,
            cache=t.cache_images,
        )
        gen = torch.Generator().manual_seed(self.train_seed)
        if shuffle and t.sampler == "balanced":  # every class drawn equally often, with replacement
            labels = np.asarray(ds.targets)
            weights = 1.0 / np.bincount(labels)[labels]
            sampler = WeightedRandomSampler(torch.as_tensor(weights), len(labels), replacement=True, generator=gen)
        else:
            sampler = RandomSampler(ds, generator=gen) if shuffle else SequentialSampler(ds)
        mixing = t.mixup > 0 or t.cutmix > 0
        drop_last = shuffle and mixing and len(ds) > t.batch_size  # timm's Mixup pairs a batch
        batches = BatchSampler(sampler, t.batch_size, drop_last)
        dataset = ds
        if shard and self.dist.enabled:
            batches, dataset = ShardedBatches(batches, self.dist.rank, self.dist.world_size), PaddedDataset(ds)
        workers = t.num_workers
        return DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_sampler=batches,
            generator=gen,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.device.type == "cuda" if t.pin_memory is None else t.pin_memory,
            worker_init_fn=partial(_offset_worker_seed, self.dist.rank) if self.dist.enabled and workers else None,
            prefetch_factor=t.prefetch_factor if workers > 0 else None,
        )

    # -- one epoch ----------------------------------------------------------------------------------
    def _run_epoch(self, loader: DataLoader, optimizer=None, desc: str = "") -> tuple[float, np.ndarray, np.ndarray]:
        """(mean loss, predictions, targets) over the whole epoch (all ranks' samples under torchrun)."""
        training = optimizer is not None
        self.model.train(training)
        if training and self.cfg.train.freeze_batchnorm and self.card.pretrained:
            freeze_batchnorm_stats(self.model.backbone)
        if training:
            model = self.ddp if self.ddp is not None else self.model
        else:
            model = self.model if self.ema is None else self.ema.module
        total, count, preds, targets = 0.0, 0, [], []
        with torch.set_grad_enabled(training):
            for x, y in tqdm(loader, desc=desc, disable=not self.progress, leave=False):
                x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
                y = y.to(self.device, non_blocking=True)
                target = y
                if training and self.mixup is not None and len(y) % 2 == 0 and not (y == IGNORE_INDEX).any():
                    x, target = self.mixup(x, y)  # soft targets; CrossEntropyLoss takes class probabilities
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    logits = model(x)
                    loss, batch_total, batch_count = self._batch_loss(logits, target, y)
                if training:
                    optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                    self.scaler.step(optimizer)
                    self.scaler.update()
                    KILL_POINT("batch")
                    if self.ema is not None:
                        self.ema.update(self.model)
                total += batch_total
                count += batch_count
                kept = y != IGNORE_INDEX
                preds.append(logits.argmax(1)[kept].cpu().numpy())
                targets.append(y[kept].cpu().numpy())
        preds_all, targets_all = np.concatenate(preds), np.concatenate(targets)
        if self.dist.enabled:
            preds_all, targets_all = (np.concatenate(self.dist.gather(a)) for a in (preds_all, targets_all))
        return total / max(count, 1), preds_all, targets_all

    def _batch_loss(
        self, logits: torch.Tensor, target: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, float, int]:
        """(loss to back-propagate, the global batch's summed loss, its sample count).

        A single process uses the criterion's mean. Under torchrun each rank's summed loss is divided by the
        normaliser of the whole global batch (its sample count, or its summed class weights, as
        CrossEntropyLoss's mean does), times the number of ranks because DDP averages the gradients: the
        gradient is then exactly the single-process gradient of that global batch.
        """
        if not self.dist.enabled:
            loss = self.criterion(logits, target)
            return loss, loss.item() * len(y), len(y)
        per_sample = self.per_sample_loss(logits.float(), target)  # 0 for IGNORE_INDEX padding
        kept = y != IGNORE_INDEX
        weight = self.per_sample_loss.weight
        # class-probability targets (and no class weights): CrossEntropyLoss's mean divides by n
        norm = kept.sum().double() if target.dim() == 2 or weight is None else weight[y[kept]].sum().double()
        stats = torch.stack([per_sample.detach().sum().double(), norm, kept.sum().double()])
        self.dist.all_reduce_sum(stats)
        loss = per_sample.sum() / stats[1].float() * self.dist.world_size
        return loss, float(stats[0] / stats[1]) * float(stats[2]), int(stats[2])

    def _set_phase(self, phase: Phase) -> None:
        if phase.unfreeze == -1:
            set_trainable(self.model, True)
        else:
            set_trainable(self.model.head, True)
            if phase.unfreeze is None:
                set_trainable(self.model.backbone, False)
            else:
                n = unfreeze_top(self.model.backbone, phase.unfreeze)
                log.info("phase %s: unfroze the top %d backbone layers", phase.name, n)
        log.info("phase %s: %d trainable parameters, lr %g", phase.name, count_trainable(self.model), phase.lr)

    # -- the whole run ------------------------------------------------------------------------------
    def fit(self) -> RunDir:
        cfg = self.cfg
        seed_everything(self.train_seed)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        started = time.time()
        items, skipped = self._items()
        if self.dist.is_main:
            self._drop_weights_derived()
        classes = sorted({i.label for i in items})
        self.class_index = {c: k for k, c in enumerate(classes)}
        by_part = {p: [i for i in items if i.part == p] for p in (SplitPart.train, SplitPart.val, SplitPart.test)}
        if not by_part[SplitPart.train] or not by_part[SplitPart.val]:
            raise LungCTError("the split left the training or validation part empty; add data or change fractions")

        self.model, backbone = build_classifier(cfg.model, len(classes), cfg.data.color)
        self.card = ModelCard(
            cfg.model.arch,
            backbone.timm_name,
            classes,
            replace(
                backbone.preprocess,
                dicom_window=cfg.data.dicom_window,
                field=cfg.data.field,
                hu_offset=cfg.data.hu_offset,
            ),
            cfg.model.head,
            backbone.pretrained,
            backbone.weights_source,
            cfg.data.positive_class,
            cfg.model.pool,
            cfg.model.tiles.model_dump() if cfg.model.tiles else None,
        )
        self._place_model()
        if not backbone.pretrained:
            log.warning(
                "%s starts from random weights: it is trained from scratch, not transfer-learned", cfg.model.arch
            )
        train_labels = [self.class_index[i.label] for i in by_part[SplitPart.train]]
        weights = None
        if cfg.train.class_weights:
            present = np.unique(train_labels)
            w = np.ones(len(classes), dtype=np.float32)
            w[present] = compute_class_weight("balanced", classes=present, y=np.asarray(train_labels))
            weights = torch.tensor(w, dtype=torch.float32, device=self.device)
        t = cfg.train
        self.mixup = None
        if t.mixup > 0 or t.cutmix > 0:
            from timm.data import Mixup

            # label smoothing moves into the mixed targets
            self.mixup = Mixup(
                mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, label_smoothing=t.label_smoothing, num_classes=len(classes)
            )
        smoothing = 0.0 if self.mixup is not None else t.label_smoothing
        self.criterion = make_loss(t.loss, t.focal_gamma, weights, smoothing)
        self.per_sample_loss = make_loss(t.loss, t.focal_gamma, weights, smoothing, reduction="none")
        self.ema = None
        self.ddp = None
        counts = part_counts(items)
        if self.dist.is_main:
            save_config(cfg, self.run.config)
            write_json(self.run.model_json, self.card.to_dict())
            self._write_summary("running", counts, skipped, started)
        log.info(
            "classes %s; train %d, val %d, test %d images; %d skipped",
            classes,
            len(by_part[SplitPart.train]),
            len(by_part[SplitPart.val]),
            len(by_part[SplitPart.test]),
            len(skipped),
        )

        train_loader = self._loader(
            by_part[SplitPart.train], train_transform(self.card.preprocess, cfg.train.augment), True
        )
        val_loader = self._loader(by_part[SplitPart.val], eval_transform(self.card.preprocess), False)
        if cfg.train.phase1.solver == "logistic":  # frozen features of unaugmented slices
            # rank 0 fits the probe on every training slice (unsharded) and broadcasts the head
            self._probe_loader = self._loader(
                by_part[SplitPart.train], eval_transform(self.card.preprocess), False, shard=False
            )
            self._probe_groups = [i.group for i in by_part[SplitPart.train]]
        self._fit_phases(plan_phases(cfg, backbone.pretrained), train_loader, val_loader)
        if self.dist.is_main:
            self._write_summary("complete", counts, skipped, started)
            self.run.checkpoint.unlink(missing_ok=True)
            from lungct.plots import plot_history

            plot_history(self.run.history, self.run.curves)
        self.dist.barrier()  # every rank returns once the run directory is complete
        return self.run

    def _place_model(self) -> None:
        """The model on this rank's device; channels-last and mixed precision (autocast) on GPUs only."""
        t = self.cfg.train
        cuda = self.device.type == "cuda"
        if self.dist.enabled and not (t.freeze_batchnorm and self.card.pretrained):
            # BatchNorm that learns its statistics: under DDP each rank would see only its slice of the batch.
            # SyncBatchNorm computes them over the global batch; it needs GPUs, so gloo on CPUs keeps per-rank
            # statistics (the one way a CPU run over N processes differs from one process).
            if cuda:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            else:
                log.warning("BatchNorm statistics are per rank on CPU processes (SyncBatchNorm needs GPUs)")
        self.memory_format = torch.channels_last if cuda and t.channels_last else torch.contiguous_format
        self.model.to(self.device, memory_format=self.memory_format)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision) if cuda else None
        if t.precision != "fp32" and not cuda:
            log.info("precision %s applies on GPUs; this run trains in fp32 on the CPU", t.precision)
        # fp16 gradients need loss scaling; disabled, the scaler passes everything through unchanged
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def _seed_rank_streams(self, phase_index: int, epoch: int) -> None:
        """Under DDP: each rank's dropout, augmentation and mixup draws come from a stream of its own for this
        epoch, so that rank r's k-th slice is not augmented as rank 0's k-th is. The stream depends only on
        (seed, phase, epoch, rank), so a resumed epoch draws what it drew before. The batches themselves come
        from the loader's own generator, the same on every rank. A single process is not reseeded."""
        if not self.dist.enabled:
            return
        seed_generators(rank_seed(self.train_seed, phase_index, epoch, self.dist.rank))

    def _wrap_for_phase(self, probe: bool) -> None:
        """DistributedDataParallel over the parameters this phase trains (made again at each phase, since
        DDP registers its gradient hooks on the parameters that require gradients when it is made)."""
        self.ddp = None
        if self.dist.enabled and not probe:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

    def _fit_phases(self, phases: list[Phase], train_loader: DataLoader, val_loader: DataLoader) -> None:
        monitor = self.cfg.train.early_stopping.monitor
        patience = self.cfg.train.early_stopping.patience
        state = {"phase": 0, "epoch": 0, "best": -float("inf"), "bad": 0, "history": []}
        resume = self.dist.broadcast(self._load_checkpoint() if self.dist.is_main else None)
        if resume:
            state = resume["state"]
            log.info("resuming from phase %d, epoch %d", state["phase"] + 1, state["epoch"])
        for index, phase in enumerate(phases):
            if index < state["phase"]:
                continue
            if index > 0 and self.dist.broadcast(self.run.weights.is_file() if self.dist.is_main else None):
                if self.dist.is_main:
                    load_weights(self.model, self.run.weights)  # fine-tune from the best head
                self.dist.broadcast_module(self.model)
            self._set_phase(phase)
            decay = self.cfg.train.layer_decay if phase.name != "head" else None
            optimizer = build_optimizer(self.model, phase.lr, self.cfg.train, decay)
            probe = self._is_probe(phase)
            self._wrap_for_phase(probe)
            scheduler = None if probe else build_scheduler(optimizer, self.cfg.train, phase.epochs)
            self.ema = self._new_ema(phase)
            if resume and index == state["phase"]:
                self.model.load_state_dict(resume["model"])
                if self.ema is not None and resume.get("ema"):
                    self.ema.module.load_state_dict(resume["ema"])
                optimizer.load_state_dict(resume["optimizer"])
                if scheduler and resume.get("scheduler"):
                    scheduler.load_state_dict(resume["scheduler"])
                torch.set_rng_state(resume["torch_rng"])
                train_loader.generator.set_state(resume["loader_rng"])
            else:
                state.update(phase=index, epoch=0, bad=0)
                # The phase's starting point (the best head, for fine-tuning) is a checkpoint of its own: a kill
                # before its first epoch ends must not resume from weights that phase already overwrote.
                self._checkpoint(state, optimizer, scheduler, train_loader)
            while state["epoch"] < phase.epochs and state["bad"] < patience:
                if probe:
                    row = self._probe_epoch(phase, val_loader)
                else:
                    self._seed_rank_streams(index, state["epoch"])
                    row = self._epoch(phase, state["epoch"], train_loader, val_loader, optimizer)
                if scheduler:
                    scheduler.step()
                row = self.dist.broadcast(row)  # rank 0's figures decide early stopping on every rank
                state["history"].append(row)
                state["epoch"] += 1
                if _score(row, monitor) > state["best"]:
                    state["best"], state["bad"] = _score(row, monitor), 0
                    if self.dist.is_main:
                        save_weights(self.model if self.ema is None else self.ema.module, self.run.weights)
                    KILL_POINT("weights")
                else:
                    state["bad"] += 1
                if self.dist.is_main:
                    self._write_history(state["history"])
                KILL_POINT("history")
                for callback in self.callbacks:  # tracking, pruning; may raise to stop the run (e.g. a pruned trial)
                    callback({**row, "step": len(state["history"])})
                self._checkpoint(state, optimizer, scheduler, train_loader)
            if state["bad"] >= patience:
                log.info("phase %s: early stop after %d epochs without improvement", phase.name, patience)
            resume = None
            state.update(phase=index + 1, epoch=0, bad=0)

    def _checkpoint(self, state: dict, optimizer, scheduler, train_loader: DataLoader) -> None:
        if not self.dist.is_main:
            return
        save_checkpoint(
            {
                "state": state,
                "model": self.model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler else None,
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "torch_rng": torch.get_rng_state(),
                "loader_rng": train_loader.generator.get_state(),
            },
            self.run.checkpoint,
        )
        KILL_POINT("checkpoint")

    def _is_probe(self, phase: Phase) -> bool:
        return phase.name == "head" and self.cfg.train.phase1.solver == "logistic"

    def _new_ema(self, phase: Phase):
        """timm's weight EMA for a gradient phase (validated and saved in place of the raw weights)."""
        if self.cfg.train.ema is None or self._is_probe(phase):
            return None
        from timm.utils import ModelEmaV3

        return ModelEmaV3(self.model, decay=self.cfg.train.ema)

    def _load_checkpoint(self) -> dict | None:
        """The last epoch's state, or None; a damaged checkpoint (a kill mid-write by an older version, a
        full disk) is set aside with a warning and training starts again rather than failing forever."""
        path = self.run.checkpoint
        if not path.is_file():
            return None
        try:
            resume = torch.load(path, weights_only=False, map_location="cpu")
            if not isinstance(resume, dict) or "state" not in resume:
                raise ValueError("not a lungct checkpoint")
            return resume
        except Exception as exc:  # torch.load raises many types for a truncated or foreign file
            damaged = path.with_name(path.name + ".damaged")
            os.replace(path, damaged)
            self.run.weights.unlink(missing_ok=True)
            log.warning("%s is damaged (%s); moved to %s and training starts again", path, type(exc).__name__, damaged)
            return None

    def _probe_epoch(self, phase: Phase, val_loader) -> dict:
        """The head phase as a linear probe: one logistic-regression fit on frozen features, then validation."""
        from sklearn.metrics import balanced_accuracy_score

        from lungct.training.probe import fit_probe

        t0 = time.time()
        fit = None
        if self.dist.is_main:
            fit = fit_probe(
                self.model.backbone,
                self.model.head,
                self._probe_loader,
                self._probe_groups,
                len(self.class_index),
                self.cfg.train.class_weights,
                self.train_seed,
                self.cfg.train.phase1.c,
            )
        self.dist.broadcast_module(self.model.head)
        val_loss, vp, vt = self._run_epoch(val_loader, None, "validating")
        row = {
            "phase": phase.name,
            "epoch": 1,
            "lr": 0.0,
            "train_loss": fit.train_loss if fit else float("nan"),  # other ranks take rank 0's row
            "train_accuracy": fit.train_accuracy if fit else float("nan"),
            "val_loss": val_loss,
            "val_accuracy": float((vp == vt).mean()),
            "val_balanced_accuracy": float(balanced_accuracy_score(vt, vp)),
            "seconds": time.time() - t0,
        }
        log.info("linear probe: val loss %.4f bal-acc %.3f", val_loss, row["val_balanced_accuracy"])
        return row

    def _epoch(self, phase: Phase, epoch: int, train_loader, val_loader, optimizer) -> dict:
        from sklearn.metrics import balanced_accuracy_score

        t0 = time.time()
        desc = f"{phase.name} {epoch + 1}/{phase.epochs}"
        train_loss, tp, tt = self._run_epoch(train_loader, optimizer, desc)
        val_loss, vp, vt = self._run_epoch(val_loader, None, "validating")
        row = {
            "phase": phase.name,
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            "train_accuracy": float((tp == tt).mean()),
            "val_loss": val_loss,
            "val_accuracy": float((vp == vt).mean()),
            "val_balanced_accuracy": float(balanced_accuracy_score(vt, vp)),
            "seconds": time.time() - t0,
        }
        log.info(
            "%s: loss %.4f acc %.3f | val loss %.4f acc %.3f bal-acc %.3f (%.0fs)",
            desc,
            train_loss,
            row["train_accuracy"],
            val_loss,
            row["val_accuracy"],
            row["val_balanced_accuracy"],
            row["seconds"],
        )
        return row

    def _write_history(self, history: list[dict]) -> None:
        header = list(history[0])
        atomic_csv(self.run.history, header, ([row.get(k) for k in header] for row in history))

    def _write_summary(self, status: str, counts: dict, skipped: list[dict], started: float) -> None:
        write_json(
            self.run.summary,
            {
                "status": status,
                "name": self.cfg.name,
                "arch": self.cfg.model.arch,
                "pretrained": self.card.pretrained,
                "weights": self.card.weights_source,
                "split_mode": self.cfg.split.mode,
                "counts": counts,
                "skipped": skipped,
                "train_seconds": round(time.time() - started, 1) if status == "complete" else None,
                "world_size": self.dist.world_size,
                "backend": self.dist.backend,
            },
        )


def rank_seed(seed: int, phase_index: int, epoch: int, rank: int) -> int:
    """A seed for one rank's random draws in one epoch (numpy's SeedSequence mixes the four numbers)."""
    return int(np.random.SeedSequence([seed, phase_index, epoch, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _offset_worker_seed(rank: int, worker_id: int) -> None:
    """DataLoader workers of rank r: their seed (the loader's, the same on every rank) moved by the rank."""
    seed_generators((torch.initial_seed() + rank * 1_000_003) % 2**63)


def changed_fields(before: dict, now: dict, prefix: str = "") -> list[str]:
    """Dotted names of the config fields whose values differ."""
    out = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def save_checkpoint(payload: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a kill never leaves half a checkpoint.

    Ctrl-C waits until the checkpoint is in place (sigint_deferred): interrupted inside torch.save, the file was
    left half-written as checkpoint_last.pt.tmp and torch's writer added a traceback of its own. A write that
    fails (a full disk) removes its temporary file.
    """
    tmp = path.with_name(path.name + ".tmp")
    with sigint_deferred():
        try:
            with tmp.open("wb") as fh:
                torch.save(payload, fh)
                fh.flush()
                KILL_POINT("checkpoint-half-written")
                os.fsync(fh.fileno())
            KILL_POINT("checkpoint-before-rename")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def train(
    cfg: ExperimentConfig,
    out: str | Path,
    progress: bool = True,
    overwrite: bool = False,
    callbacks: Sequence[EpochCallback] = (),
    items: list[SplitItem] | None = None,
) -> RunDir:
    """Train and return the run. `callbacks` get each epoch's history row (plus a global `step`) as it ends;
    `items` is a given split instead of one drawn from the config's data."""
    return Trainer(cfg, out, progress, overwrite, callbacks, items).fit()


def train_or_reuse(
    cfg: ExperimentConfig,
    out: str | Path,
    items: list[SplitItem] | None = None,
    progress: bool = True,
    callbacks: Sequence[EpochCallback] = (),
) -> tuple[RunDir, bool]:
    """The finished run in `out` if it was trained with this very config and split, else a new one (an unfinished
    run resumes, a finished one with another config or other `items` is trained again); (run, trained). One rule
    for cv folds, compared backbones and tuning trials, decided from the saved config and split.csv, not from
    report text. The split matters as much as the config: a cv fold whose data gained or lost images has another
    test part, and a model trained on the old split may have trained on some of its images."""
    run = RunDir(out)
    if run.read_summary().complete:
        if not run.config.is_file() or changed_fields(load_config(run.config).model_dump(), cfg.model_dump()):
            log.warning("%s was trained with another config; training it again", run.path)
        elif items is not None and not _same_split(run.split, items):
            log.warning("%s was trained on another split of the images; training it again", run.path)
        else:
            log.info("%s: reusing the finished run", run.path)
            return run, False
    return train(cfg, out, progress, overwrite=True, callbacks=callbacks, items=items), True


def _same_split(saved: Path, items: list[SplitItem]) -> bool:
    """Whether split.csv lists exactly these images, labels, groups and parts (in any order)."""
    try:
        return sorted(load_split(saved), key=astuple) == sorted(items, key=astuple)
    except (LungCTError, OSError, KeyError, UnicodeDecodeError, csv.Error):
        return False
