"""`lungct retrain` on tiny data: a challenger taught wrong labels by its feedback is refused; one given correct
extra data is promoted; the champion's test part never reaches the challenger's training."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from lungct.cli import main
from lungct.data.splits import load_split
from lungct.retrain.gate import decide
from lungct.training import train
from tests.conftest import synthetic_slice, tiny_config, write_dataset

LABELS = ("benign", "malignant", "normal")  # the classes of CLASS_FOLDERS, in order


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> Path:
    """A weak champion: small_cnn from few slices, for a few steps."""
    root = tmp_path_factory.mktemp("champion")
    cfg = tiny_config(write_dataset(root / "data", per_class=10))
    cfg.model.arch = "small_cnn"
    cfg.split.mode = "random"
    cfg.data.positive_class = "malignant"
    cfg.train.phase1.epochs, cfg.train.phase1.lr, cfg.train.phase2.epochs = 3, 3e-3, 0
    return train(cfg, root / "run", progress=False).path


def feedback_dataset(root: Path, shift: int) -> Path:
    """What `lungct feedback export` writes: <label>/<name>.png and manifest.csv, one group per upload; `shift`
    rotates the labels (1: every slice labelled as the next class, a deliberately corrupted feedback)."""
    rows = []
    for k in range(3):
        label = LABELS[(k + shift) % 3]
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(14):
            name = f"{label}/fb{k}_{i}.png"
            synthetic_slice(k, 5000 + 100 * k + i).save(root / name)
            rows.append({"path": name, "label": label, "group": f"upload-{k}-{i}"})
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.mark.parametrize(("shift", "promoted"), [(1, False), (0, True)], ids=["corrupted-labels", "correct-extra-data"])
def test_the_gate_refuses_corrupted_feedback_and_promotes_correct_extra_data(champion, tmp_path, shift, promoted):
    feedback = feedback_dataset(tmp_path / "feedback", shift)
    out = tmp_path / "challenger"
    assert main(["retrain", "--champion", str(champion), "--feedback", str(feedback), "--out", str(out), "-q"]) == 0
    result = json.loads((out / "promotion.json").read_text())
    assert result["promote"] is promoted, result["reasons"]
    assert result["test_images"]["champion_test_part"] > 0 and result["test_images"]["held_out_feedback"] > 0
    assert {"balanced_accuracy", "positive_recall"} <= set(result["comparison"]["metrics"])
    # the champion's test images stayed test: the challenger never trained on them
    champion_test = {i.path for i in load_split(champion / "split.csv") if i.part == "test"}
    challenger_parts = {i.path: i.part for i in load_split(out / "split.csv")}
    assert all(challenger_parts[p] == "test" for p in champion_test)


def test_the_rule_needs_non_inferiority_on_every_guarded_metric_and_a_gain_on_one():
    def comparison(bal: tuple[float, float], rec: tuple[float, float]) -> dict:
        return {
            "metrics": {
                "balanced_accuracy": {"change": bal[0], "ci95": [bal[1], bal[0] + 0.1]},
                "positive_recall": {"change": rec[0], "ci95": [rec[1], rec[0] + 0.1]},
            }
        }

    assert decide(comparison((0.05, 0.0), (0.0, -0.005))).promote
    assert not decide(comparison((0.05, 0.0), (0.0, -0.02))).promote  # recall may have dropped by 0.02
    assert not decide(comparison((0.0, -0.005), (0.0, 0.0))).promote  # not worse, but better on nothing
    assert not decide(comparison((0.1, float("nan")), (0.1, 0.0))).promote  # an undefined interval shows nothing
    assert not decide({"metrics": {"balanced_accuracy": {"change": 0.1, "ci95": [0.05, 0.2]}}}).promote


def test_feedback_with_labels_the_champion_does_not_know_is_a_clear_error(champion, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LUNGCT_TRACKING", "on")  # so that a tracked run started too early would leave mlruns/
    feedback = feedback_dataset(tmp_path / "feedback", 0)
    manifest = feedback / "manifest.csv"
    manifest.write_text(manifest.read_text().replace(",normal,", ",dragon,"))
    code = main(["retrain", "--champion", str(champion), "--feedback", str(feedback), "--out", str(tmp_path / "c")])
    assert code == 1 and "['dragon'] are not the champion's classes" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feedback"]  # no mlruns/, no challenger folder


@pytest.mark.parametrize(
    "argv",
    [["retrain", "--champion", "notarun", "--feedback", "notarun", "--out", "c"], ["promote", "--run", "notarun"]],
    ids=["retrain", "promote"],
)
def test_a_folder_that_is_not_a_run_fails_before_tracking(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LUNGCT_TRACKING", "on")
    (tmp_path / "notarun").mkdir()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and "not a finished run" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notarun"]


def test_the_registry_alias_follows_the_gate_and_rollback_restores_it(champion, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LUNGCT_TRACKING", raising=False)  # retrain is tracked in the registry's store
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"

    def promote(*args: str) -> tuple[int, dict]:
        code = main(["promote", *args, "--tracking-uri", uri])
        out = capsys.readouterr().out.strip().splitlines()
        return code, json.loads(out[-1]) if out else {}

    code, first = promote("--run", str(champion))
    assert code == 0 and first["promoted"] and first["registry"]["champion"]["version"] == "1"

    runs = {}
    for shift, name in ((1, "corrupted"), (0, "correct")):
        runs[name] = tmp_path / name
        args = ["--champion", str(champion), "--feedback", str(feedback_dataset(tmp_path / f"fb-{name}", shift))]
        assert main(["retrain", *args, "--out", str(runs[name]), "-q", "--tracking-uri", uri]) == 0
    capsys.readouterr()
    from mlflow import MlflowClient

    tracked = MlflowClient(uri).search_runs(
        [e.experiment_id for e in MlflowClient(uri).search_experiments()], "tags.`lungct.kind` = 'retrain'"
    )
    assert sorted(r.data.tags["lungct.promote"] for r in tracked) == ["false", "true"]
    assert all("gate.balanced_accuracy.ci95_low" in r.data.metrics for r in tracked)

    code, refused = promote("--run", str(runs["corrupted"]))
    assert code == 3 and not refused["promoted"] and "refused by the gate" in refused["reason"]
    assert refused["registry"]["champion"]["version"] == "1"  # the champion stays
    assert refused["registry"]["challenger"]["version"] == "2"

    code, moved = promote("--run", str(runs["correct"]))
    assert code == 0 and moved["promoted"] and moved["registry"]["champion"]["version"] == "3"
    assert moved["registry"]["previous_champion"] == "1"

    code, back = promote("--rollback")
    assert code == 0 and back["champion"] == "1" and back["registry"]["champion"]["version"] == "1"

    # a run without a gate decision cannot take over
    undecided = tmp_path / "undecided"
    shutil.copytree(runs["correct"], undecided)
    (undecided / "promotion.json").unlink()
    assert main(["promote", "--run", str(undecided), "--tracking-uri", uri]) == 1
    assert "no promotion.json" in capsys.readouterr().err
    code, status = promote("--rollback")  # and the champion it left alone can still be rolled back and forth
    assert code == 0 and status["champion"] == "3"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"just a note, not a manifest\n", "is not a manifest CSV: it lacks column(s) ['label', 'path']"),
        (b"\x89PNG\r\n\x1a\n\xdd\xfe\x00binary", "is not a manifest CSV: it is not UTF-8 text"),
        (b"", "is not a manifest CSV: it is empty"),
        (b"path,label\n/nonexistent/a.png,normal\n/nonexistent/b.png,benign\n", "2 listed images do not exist"),
    ],
    ids=["text-file", "binary", "empty", "missing-images"],
)
def test_a_feedback_file_that_is_no_usable_manifest_is_one_line(champion, tmp_path, capsys, content, needle):
    feedback = tmp_path / "feedback.txt"
    feedback.write_bytes(content)
    code = main(["retrain", "--champion", str(champion), "--feedback", str(feedback), "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 1 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "c").exists()  # nothing trained, no challenger folder


@pytest.mark.parametrize(
    "content",
    [b"\xdd\xfe not json", b"[1, 2]", b'{"champion": "v1", "promote": true}', b'{"promote": true, "reasons": []}'],
)
def test_promote_with_a_damaged_promotion_json_is_one_line_and_registers_nothing(
    champion, tmp_path, capsys, monkeypatch, content
):
    monkeypatch.delenv("LUNGCT_TRACKING", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert main(["promote", "--run", str(champion), "--tracking-uri", uri]) == 0
    other = tmp_path / "other"
    cfg = tiny_config(write_dataset(tmp_path / "data", per_class=6))
    cfg.model.arch, cfg.seed = "small_cnn", 1
    cfg.train.phase1.epochs, cfg.train.phase2.epochs = 1, 0
    train(cfg, other, progress=False)
    (other / "promotion.json").write_bytes(content)
    capsys.readouterr()
    assert main(["promote", "--run", str(other), "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err
    assert "promotion.json is damaged" in err and len(err.strip().splitlines()) == 1, err
    from mlflow import MlflowClient

    assert len(MlflowClient(uri).search_model_versions("name='lungct'")) == 1  # the damaged run was not registered


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("bogus://x", "UnsupportedModelRegistryStoreURIException"),
        ("sqlite:///{tmp}/notdb.sqlite", "DatabaseError"),
        ("{tmp}/notes.yaml", "MlflowException"),  # a file path: MLflow's retired file store
        ("sqlite:///{tmp}/other.sqlite", "{tmp}/other.sqlite is another program's SQLite database (no MLflow"),
    ],
    ids=["scheme", "not-a-database", "file-path", "another-programs-database"],
)
def test_a_registry_uri_that_cannot_be_used_is_one_line(champion, tmp_path, capsys, monkeypatch, uri, reason):
    """MLflow's traceback came through for each of these."""
    monkeypatch.delenv("LUNGCT_TRACKING", raising=False)
    (tmp_path / "notdb.sqlite").write_text("not a database")
    (tmp_path / "notes.yaml").write_text("a: 1\n")
    import sqlite3

    with sqlite3.connect(tmp_path / "other.sqlite") as db:
        db.execute("CREATE TABLE patients (id INTEGER)")
    uri, reason = uri.format(tmp=tmp_path), reason.format(tmp=tmp_path)
    code = main(["promote", "--run", str(champion), "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    refusal = reason if "another program" in reason else f"the model registry at {uri} cannot be used: {reason}"
    assert err.startswith(f"lungct: error: {refusal}"), err
    assert (tmp_path / "notdb.sqlite").read_text() == "not a database"
    with sqlite3.connect(tmp_path / "other.sqlite") as db:  # MLflow added its tables to it before
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["patients"]


def test_an_out_holding_a_finished_run_is_refused_without_suggesting_overwrite(champion, tmp_path, capsys):
    """The trainer's refusal said 'use --overwrite', an option retrain does not have."""
    feedback = feedback_dataset(tmp_path / "fb", 0)
    argv = ["retrain", "--champion", str(champion), "--feedback", str(feedback), "--out", str(champion), "--no-track"]
    assert main([*argv, "-q"]) == 1
    err = capsys.readouterr().err
    assert (
        err.strip() == f"lungct: error: --out {champion} already holds a finished run; give the challenger a new folder"
    )


def test_a_rollback_on_a_mistyped_store_names_it_and_creates_nothing(tmp_path, capsys, monkeypatch):
    """A reader of the registry made a new, empty 1 MB database at a mistyped path, then said there was nothing."""
    monkeypatch.delenv("LUNGCT_TRACKING", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlrnus' / 'mlflow.db'}"
    assert main(["promote", "--rollback", "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err
    assert (
        err.strip() == f"lungct: error: no model registry at {uri}: {tmp_path / 'mlrnus' / 'mlflow.db'} does not exist"
    )
    assert not (tmp_path / "mlrnus").exists()
