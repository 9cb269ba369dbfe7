"""The shared contracts: one metrics flattening, the run summary and the versioned model card."""

from __future__ import annotations

import json

import pytest

from lungct.contracts import CamMethod, DicomWindow, Metrics, RunSummary, flat_metrics
from lungct.errors import LungCTError
from lungct.run import CARD_SCHEMA_VERSION, ModelCard, RunDir

REPORT = {
    "n": 10,
    "accuracy": 0.8,
    "balanced_accuracy": 0.7,
    "macro_auc": None,
    "classes": {"benign": {"recall": 0.5, "auc": None, "support": 4}, "normal": {"recall": 0.9, "support": 6}},
    "confusion_matrix": {"labels": ["benign", "normal"], "matrix": [[2, 2], [1, 5]]},
    "ci95": {"accuracy": [0.6, 0.95], "benign.recall": None},
    "ci95_method": "percentile bootstrap, 50 resamples of images",
    "tta": True,
}


def test_flat_metrics_names_per_class_values_and_splits_intervals():
    flat = flat_metrics(REPORT, intervals=True)
    assert flat["benign.recall"] == 0.5 and flat["normal.recall"] == 0.9 and flat["benign.auc"] is None
    assert flat["accuracy_ci95_low"] == 0.6 and flat["accuracy_ci95_high"] == 0.95
    assert flat["benign.recall_ci95_low"] is None
    # the count, booleans, support and non-scalars are not metrics
    assert not {"n", "tta", "benign.support", "confusion_matrix", "ci95_method"} & flat.keys()
    assert "accuracy_ci95_low" not in flat_metrics(REPORT)


def test_metrics_model_reads_a_report_and_flattens_it_the_same_way():
    metrics = Metrics.model_validate(REPORT)
    assert metrics.classes["benign"].support == 4
    assert metrics.flat(intervals=True) == flat_metrics(metrics.model_dump(), intervals=True)
    assert metrics.flat()["balanced_accuracy"] == 0.7


def test_enums_hold_the_names_users_type():
    assert [m.value for m in CamMethod] == ["gradcam", "gradcam++", "eigencam", "scorecam"]
    assert DicomWindow("stack3") == "stack3"


def test_run_summary_of_a_missing_and_a_damaged_file(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_summary() == RunSummary() and not run.read_summary().complete
    run.summary.write_text(json.dumps({"status": "complete", "counts": {"train": {"a": 3}}, "extra": 1}))
    assert run.read_summary().complete and run.read_summary().counts == {"train": {"a": 3}}
    run.summary.write_text("{not json")
    with pytest.raises(LungCTError, match=r"summary\.json is damaged"):
        run.read_summary()


def _card_dict() -> dict:
    from lungct.data.transforms import Preprocess

    return ModelCard("small_cnn", "small_cnn", ["a", "b"], Preprocess(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))).to_dict()


def test_model_card_records_its_schema_and_the_library_versions_that_made_it():
    card = _card_dict()
    assert card["schema_version"] == CARD_SCHEMA_VERSION
    assert {"python", "lungct", "torch", "timm"} <= card["versions"].keys()
    old = {k: v for k, v in card.items() if k not in ("schema_version", "versions")}
    read = ModelCard.from_dict(old)  # a card written before the fields existed still reads
    assert read.schema_version == 1 and read.versions == {}


def test_a_model_card_newer_than_this_lungct_is_refused():
    card = {**_card_dict(), "schema_version": CARD_SCHEMA_VERSION + 1}
    with pytest.raises(LungCTError, match="upgrade lungct"):
        ModelCard.from_dict(card)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"[1, 2]", "expected a JSON object, got list"),
        (b"\xff\xfe\x00 not text", "utf-8"),
        (b"{}", "it has no 'arch'"),
        (None, "invalid literal for int()"),  # schema_version "two"
        ("head", "dropout"),  # head.dropout "lots"
    ],
)
def test_a_damaged_model_card_is_one_error_naming_the_file(tmp_path, content, needle):
    """A model.json that is JSON but no card (a list, wrong types) or not UTF-8 used to end in a traceback."""
    run = RunDir(tmp_path)
    run.weights.write_bytes(b"")
    if content is None:
        content = json.dumps({**_card_dict(), "schema_version": "two"}).encode()
    elif content == "head":
        content = json.dumps({**_card_dict(), "head": {"dropout": "lots"}}).encode()
    run.model_json.write_bytes(content)
    with pytest.raises(LungCTError, match=r"model\.json is damaged") as caught:
        run.card()
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_weights_of_another_model_are_one_line(tmp_path):
    """torch's load_state_dict message spans lines; the CLI prints errors in one."""
    import torch
    from safetensors.torch import save_file

    from lungct.run import load_model

    run = RunDir(tmp_path)
    run.model_json.write_text(json.dumps(_card_dict()))
    save_file({"w": torch.zeros(3)}, str(run.weights))
    with pytest.raises(LungCTError, match=r"model\.safetensors does not match .*model\.json: .*Missing key") as caught:
        load_model(run)
    assert "\n" not in str(caught.value) and "\t" not in str(caught.value)


def test_a_file_given_as_a_run_is_named_as_a_file(tmp_path, capsys):
    from lungct.cli import main

    notes = tmp_path / "notes.txt"
    notes.write_text("not a run\n")
    with pytest.raises(LungCTError, match=r"notes.txt is a file, not a run directory"):
        RunDir(notes).require_model()
    with pytest.raises(LungCTError, match="run directory not found"):
        RunDir(tmp_path / "missing").require_model()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["promote", "--run", str(notes), "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err
    assert err == f"lungct: error: {notes} is a file, not a run directory\n", err
