import csv
import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from lungct.data.splits import load_split
from lungct.evaluation.evaluate import evaluate
from lungct.inference import Predictor
from lungct.run import RunDir
from lungct.training import Trainer, train
from lungct.training.freezing import parameter_layers, unfreeze_top
from tests.conftest import tiny_config


def _history(run: RunDir) -> list[dict]:
    with run.history.open() as fh:
        return list(csv.DictReader(fh))


def test_tiny_dataset_trains_both_phases_evaluates_and_predicts(tiny_dataset, fake_pretrained, tmp_path):
    run = train(tiny_config(tiny_dataset, fake_pretrained), tmp_path / "run", progress=False)
    for f in ("config.yaml", "model.json", "model.safetensors", "split.csv", "history.csv", "curves.png"):
        assert (run.path / f).is_file(), f
    assert not run.checkpoint.exists()  # removed once the run is complete
    phases = [r["phase"] for r in _history(run)]
    assert "head" in phases and "finetune" in phases
    card = json.loads(run.model_json.read_text())
    assert card["classes"] == ["benign", "malignant", "normal"]
    assert card["preprocess"]["input_size"] == 32
    summary = json.loads(run.summary.read_text())
    assert summary["status"] == "complete" and summary["pretrained"] is True

    metrics = evaluate(run.path, tmp_path / "eval", progress=False)
    assert metrics["n"] == sum(summary["counts"]["test"].values())
    for f in ("metrics.json", "confusion_matrix.png", "roc.png", "classification_report.txt"):
        assert (tmp_path / "eval" / f).is_file()

    (tmp_path / "bad.png").write_bytes(b"garbage")
    img = next((tiny_dataset / "Normal cases").iterdir())
    results = list(Predictor(run.path).predict([img, tmp_path / "bad.png", tiny_dataset / "Bengin cases"]))
    assert results[0]["label"] in card["classes"]
    assert sum(results[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert results[1] == {"path": str(tmp_path / "bad.png"), "error": results[1]["error"]}
    assert "not a readable image" in results[1]["error"]
    assert len(results) == 2 + 12


def test_phase_one_freezes_backbone_and_phase_two_unfreezes_top(tiny_dataset, fake_pretrained, tmp_path):
    cfg = tiny_config(tiny_dataset, fake_pretrained, phase2={"epochs": 1, "lr": 1e-4, "unfreeze": 5})
    cfg.train.phase1.epochs = 1
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    seen, bn_training = {}, []
    original = trainer._run_epoch

    def record_bn_mode(module, inputs):
        if trainer.model.training:
            bn_training.append(
                any(m.training for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
            )

    def spy(loader, optimizer=None, desc=""):
        if optimizer is not None:
            backbone = trainer.model.backbone
            if not bn_training:
                backbone.register_forward_pre_hook(record_bn_mode)
            seen[desc.split()[0]] = [
                any(p.requires_grad for p in m.parameters(recurse=False)) for m in parameter_layers(backbone)
            ]
        return original(loader, optimizer, desc)

    trainer._run_epoch = spy
    trainer.fit()
    assert not any(seen["head"])
    assert sum(seen["finetune"]) == 5 and all(seen["finetune"][-5:])
    assert bn_training and not any(bn_training)  # BatchNorm statistics stay frozen while training


def test_unfreeze_fraction_and_count():
    from lungct.models import create_backbone

    backbone = create_backbone("small_cnn", None).module
    n_layers = len(parameter_layers(backbone))
    assert unfreeze_top(backbone, 0.5) == n_layers // 2
    assert unfreeze_top(backbone, 3) == 3
    assert unfreeze_top(backbone, 10_000) == n_layers
    assert unfreeze_top(backbone, 1) == 1
    assert unfreeze_top(backbone, 1.0) == n_layers  # a fraction: the whole backbone, not one layer
    assert all(p.requires_grad for p in backbone.parameters())
    with pytest.raises(ValueError, match=r"above 1\.0"):
        unfreeze_top(backbone, 10.0)


def test_unfreeze_in_a_config_is_a_count_when_whole_and_a_fraction_when_decimal():
    from lungct.config import parse_config
    from lungct.errors import LungCTError

    def amount(v):
        return parse_config({"train": {"phase2": {"unfreeze": v}}}).train.phase2.unfreeze

    assert amount(1) == 1 and isinstance(amount(1), int)
    assert amount(1.0) == 1.0 and isinstance(amount(1.0), float)
    assert amount("all") == 1.0
    assert amount(0.3) == 0.3
    with pytest.raises(LungCTError, match=r"unfreeze 10.0 is a fraction above 1.0.*write 10"):
        amount(10.0)
    with pytest.raises(LungCTError, match="unfreeze"):
        amount(-1)
    with pytest.raises(LungCTError, match="unfreeze"):
        amount("most")


def test_interrupted_run_resumes_to_the_same_result(tiny_dataset, fake_pretrained, tmp_path):
    cfg = tiny_config(tiny_dataset, fake_pretrained)
    cfg.train.early_stopping.patience = 10
    reference = train(cfg, tmp_path / "ref", progress=False)

    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    original, calls = trainer._epoch, []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    trainer._epoch = crash_on_third
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert trainer.run.checkpoint.is_file()
    assert len(_history(trainer.run)) == 2

    resumed = train(cfg, tmp_path / "run", progress=False)
    rows, ref_rows = _history(resumed), _history(reference)
    assert [(r["phase"], r["epoch"]) for r in rows] == [(r["phase"], r["epoch"]) for r in ref_rows]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx([float(r["val_loss"]) for r in ref_rows], rel=1e-4)
    a, b = load_file(str(resumed.weights)), load_file(str(reference.weights))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_finished_run_is_not_overwritten_by_accident(tiny_dataset, fake_pretrained, tmp_path):
    from lungct.errors import LungCTError

    cfg = tiny_config(tiny_dataset, fake_pretrained)
    cfg.train.phase1.epochs, cfg.train.phase2.epochs = 1, 0
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(LungCTError, match="already holds a finished run"):
        train(cfg, tmp_path / "run", progress=False)
    train(cfg, tmp_path / "run", progress=False, overwrite=True)


def test_from_scratch_backbone_trains_in_one_phase(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset)
    cfg.model.arch = "small_cnn"
    cfg.train.phase1.epochs, cfg.train.phase2.epochs = 1, 1
    run = train(cfg, tmp_path / "run", progress=False)
    assert {r["phase"] for r in _history(run)} == {"all"}


def test_image_cache_off_keeps_nothing_in_memory_and_trains_the_same_weights(tiny_dataset, tmp_path, monkeypatch):
    from lungct.training import trainer

    made = []

    class Recorded(trainer.CTImageDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(trainer, "CTImageDataset", Recorded)
    cfg = tiny_config(tiny_dataset)
    cfg.model.arch = "small_cnn"
    cfg.train.phase1.epochs, cfg.train.phase2.epochs = 2, 0
    cached = train(cfg, tmp_path / "cached", progress=False)
    assert made and all(ds._cache for ds in made)  # filled during training
    made.clear()
    cfg.train.cache_images = False
    uncached = train(cfg, tmp_path / "uncached", progress=False)
    assert made and all(ds._cache is None for ds in made)
    a, b = load_file(str(cached.weights)), load_file(str(uncached.weights))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_epoch_callbacks_see_every_epoch_and_can_stop_the_run(tiny_dataset, fake_pretrained, tmp_path):
    rows: list[dict] = []
    run = train(tiny_config(tiny_dataset, fake_pretrained), tmp_path / "a", progress=False, callbacks=[rows.append])
    with (run.history).open() as fh:
        history = list(csv.DictReader(fh))
    assert [r["step"] for r in rows] == list(range(1, len(history) + 1))
    assert [r["phase"] for r in rows] == [h["phase"] for h in history]

    class Stop(Exception):
        pass

    def stop_after_first(row: dict) -> None:
        raise Stop(row["step"])

    with pytest.raises(Stop):
        train(tiny_config(tiny_dataset, fake_pretrained), tmp_path / "b", progress=False, callbacks=[stop_after_first])
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["status"] == "running"


def test_test_time_augmentation_averages_the_slice_and_its_mirror(tiny_dataset, fake_pretrained, tmp_path):
    run = train(tiny_config(tiny_dataset, fake_pretrained), tmp_path / "run", progress=False)
    plain, tta = Predictor(run.path), Predictor(run.path, tta=True)
    batch = torch.rand(3, 3, 32, 32)
    expected = (plain.probabilities(batch) + plain.probabilities(torch.flip(batch, dims=[3]))) / 2
    torch.testing.assert_close(torch.from_numpy(tta.probabilities(batch)), torch.from_numpy(expected))
    assert not torch.allclose(torch.from_numpy(tta.probabilities(batch)), torch.from_numpy(plain.probabilities(batch)))


def test_focal_loss_is_what_trains_when_configured(tiny_dataset, fake_pretrained, tmp_path):
    """Same seed, same batches: focal loss is at most cross-entropy per sample, so its first epoch's loss is lower."""
    ce = _history(train(tiny_config(tiny_dataset, fake_pretrained), tmp_path / "ce", progress=False))
    focal = _history(
        train(tiny_config(tiny_dataset, fake_pretrained, loss="focal"), tmp_path / "focal", progress=False)
    )
    assert float(focal[0]["train_loss"]) < 0.9 * float(ce[0]["train_loss"])
    assert all(math.isfinite(float(r["val_loss"])) for r in focal)


def test_train_seed_changes_the_training_but_not_the_split(tiny_dataset, tmp_path):
    """Seed-ensemble members: the same split, other initialisation and data order; train.seed equal to the
    experiment's seed is the run without it."""
    a = train(tiny_config(tiny_dataset), tmp_path / "a", progress=False)
    b = train(tiny_config(tiny_dataset, seed=7), tmp_path / "b", progress=False)
    same = train(tiny_config(tiny_dataset, seed=0), tmp_path / "same", progress=False)
    assert a.split.read_text() == b.split.read_text() == same.split.read_text()
    wa, wb, ws = (load_file(r.weights) for r in (a, b, same))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(wa[k], ws[k]) for k in wa)


def test_a_finished_run_is_reused_only_for_the_same_config_and_split(tiny_dataset, tmp_path):
    """cv, compare and tune reuse finished runs; a fold whose split changed (the data gained or lost images, another
    fold plan) must train again, or its model may have trained on images of its new test part."""
    from lungct.crossval.folds import fold_splits, pool_from_config
    from lungct.training import train_or_reuse

    cfg = tiny_config(tiny_dataset)
    items = fold_splits(pool_from_config(cfg, progress=False), 3, cfg)[0]
    _, trained = train_or_reuse(cfg, tmp_path / "run", items, progress=False)
    assert trained
    _, trained = train_or_reuse(cfg, tmp_path / "run", list(reversed(items)), progress=False)
    assert not trained  # the same split in another order
    moved = next(i for i in items if i.part == "test")
    other = [replace(i, part="train") if i == moved else i for i in items]
    _, trained = train_or_reuse(cfg, tmp_path / "run", other, progress=False)
    assert trained
    saved = {(i.path, i.part) for i in load_split(RunDir(tmp_path / "run").split)}
    assert (moved.path, "train") in saved
