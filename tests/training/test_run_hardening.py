"""A damaged checkpoint, nonsense config values and a resume under another config: one clear outcome each."""

from __future__ import annotations

import logging

import pytest

from lungct.cli import main
from lungct.config import parse_config
from lungct.errors import LungCTError
from lungct.training.trainer import Trainer, train
from tests.conftest import tiny_config


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 half a zip"])
def test_damaged_checkpoint_starts_afresh_with_a_warning(tiny_dataset, fake_pretrained, tmp_path, content, caplog):
    cfg = tiny_config(tiny_dataset, fake_pretrained)
    cfg.train.phase1.epochs = cfg.train.phase2.epochs = 1
    out = tmp_path / "run"
    trainer = Trainer(cfg, out, progress=False)
    trainer.run.checkpoint.write_bytes(content)  # a kill mid-write by an older version, or a full disk
    trainer.run.split.write_text("path,label,group,part\n")
    caplog.set_level(logging.WARNING, logger="lungct")
    with pytest.raises(LungCTError):  # the empty split it left is refused with a message, not a traceback
        Trainer(cfg, out, progress=False).fit()
    trainer.run.split.unlink()
    run = train(cfg, out, progress=False)
    assert run.read_summary().complete
    assert "damaged" in caplog.text
    assert (out / "checkpoint_last.pt.damaged").read_bytes() == content


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"train": {"phase1": {"epochs": -3}}}, "train.phase1.epochs"),
        ({"train": {"early_stopping": {"patience": -1}}}, "train.early_stopping.patience"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"model": {"input_size": -5}}, "model.input_size"),
        ({"model": {"head": {"dropout": 1.5}}}, "model.head.dropout"),
        ({"train": {"phase1": {"epochs": 0}, "phase2": {"epochs": 0}}}, "train"),
        ({"train": {"phase2": {"lr": 0}}}, "train.phase2.lr"),
        # YAML's .inf passed "greater than 0" (one AdamW step at a learning rate of .inf makes the weights inf and
        # NaN), and .nan passed unfreeze's own range checks
        ({"train": {"phase1": {"lr": float("inf")}}}, "train.phase1.lr"),
        ({"train": {"weight_decay": float("inf")}}, "train.weight_decay"),
        ({"train": {"mixup": float("inf")}}, "train.mixup"),
        ({"train": {"phase2": {"unfreeze": float("nan")}}}, "train.phase2.unfreeze"),
    ],
)
def test_nonsense_config_values_are_refused_naming_the_field(raw, field):
    with pytest.raises(LungCTError, match=field.replace(".", r"\.")):
        parse_config(raw)


def test_resume_under_another_config_is_refused_and_overwrite_starts_afresh(tiny_dataset, fake_pretrained, tmp_path):
    cfg = tiny_config(tiny_dataset, fake_pretrained)
    cfg.train.phase1.epochs = cfg.train.phase2.epochs = 1

    def stop(row):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=False, callbacks=[stop])
    other = cfg.model_copy(deep=True)
    other.seed = 7
    with pytest.raises(LungCTError, match=r"another config.*seed"):
        train(other, out, progress=False)
    run = train(other, out, progress=False, overwrite=True)
    assert run.read_summary().complete


def test_cli_reports_a_config_value_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: 0\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.batch_size" in err[0]


def test_a_folder_of_other_files_is_not_trained_into(tiny_dataset, tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "config.yaml").write_text("my own notes\n")
    code = main(["train", "--out", str(precious), "--data", str(tiny_dataset), "--weights", "none", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "holds files but no lungct run" in err and err.count("\n") == 1, err
    assert [p.name for p in precious.iterdir()] == ["config.yaml"]
    assert (precious / "config.yaml").read_text() == "my own notes\n"
    # an empty folder, and an interrupted run's folder (it has split.csv), are trained into as before
    empty = tmp_path / "empty"
    empty.mkdir()
    Trainer(tiny_config(tiny_dataset), empty)
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    (interrupted / "split.csv").write_text("path,label,group,part\n")
    Trainer(tiny_config(tiny_dataset), interrupted)
