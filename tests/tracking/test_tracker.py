"""The Tracker API: what reaches MLflow, and that no tracking failure ever reaches the caller."""

import logging

import pytest

from lungct.tracking import Tracker, default_tracking_uri, resolve_tracking_uri, tracked_run
from lungct.tracking.flatten import metric_items, param_items, report_metrics


def test_flattening_for_mlflow():
    assert param_items({"train": {"phase1": {"lr": 0.001}}, "model": {"weights": None}, "l": [1, 2]}) == {
        "train.phase1.lr": "0.001",
        "model.weights": "None",
        "l": "[1, 2]",
    }
    got = metric_items({"a": 1, "b": {"c": 2.5}, "s": "x", "t": True, "n": None, "inf": float("inf"), "k(x)": 3})
    assert got == {"a": 1.0, "b.c": 2.5, "k_x_": 3.0}


def test_report_metrics_turn_intervals_into_low_and_high():
    metrics = {
        "n": 10,
        "accuracy": 0.8,
        "classes": {"malignant": {"recall": 0.9, "support": 4}},
        "confusion_matrix": {"labels": ["a"], "matrix": [[1]]},
        "ci95": {"accuracy": [0.6, 0.95], "malignant.recall": [0.5, 1.0], "macro_auc": None},
        "ci95_method": "percentile bootstrap",
    }
    got = report_metrics(metrics)
    assert got["accuracy_ci95_low"] == 0.6 and got["accuracy_ci95_high"] == 0.95
    assert got["malignant.recall_ci95_low"] == 0.5 and got["malignant.recall"] == 0.9 and got["n"] == 10
    assert "macro_auc_ci95_low" not in got and not any(k.startswith("confusion") for k in got)


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert resolve_tracking_uri() == "http://mlflow.example:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_a_run_with_params_metrics_artifacts_and_a_nested_child(store, tmp_path):
    from mlflow import MlflowClient

    (tmp_path / "note.txt").write_text("hello")
    with tracked_run("tune", "study", params={"trials": 3}, tracking_uri=store, tags={"who": "test"}) as t:
        t.log_metrics({"best": {"value": 0.7}, "label": "skipped"})
        callback = t.epoch_callback()
        callback({"phase": "head", "epoch": 1, "val_loss": 0.9, "step": 1})
        callback({"phase": "head", "epoch": 2, "val_loss": 0.5, "step": 2})
        t.log_artifact(tmp_path / "note.txt", "notes")
        t.log_artifact(tmp_path / "missing.txt")  # skipped, and the run goes on
        t.log_dict({"path": tmp_path}, "info.json")
        with tracked_run("trial", "trial-0", params={"lr": 0.1}, nested=True) as child:
            child.log_metrics({"value": 0.7})
        parent_id = t.run_id
    client = MlflowClient(store)
    run = client.get_run(parent_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"trials": "3"}
    assert run.data.metrics["best.value"] == 0.7 and "label" not in run.data.metrics
    assert [(m.step, m.value) for m in client.get_metric_history(parent_id, "val_loss")] == [(1, 0.9), (2, 0.5)]
    assert run.data.tags["lungct.kind"] == "tune" and run.data.tags["who"] == "test"
    assert {a.path for a in client.list_artifacts(parent_id)} == {"notes", "info.json"}
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert [c.data.metrics for c in children] == [{"value": 0.7}]
    assert client.get_experiment(run.info.experiment_id).name == "lungct"
    assert (tmp_path / "store" / "artifacts").is_dir()  # artifacts beside the SQLite file


def test_a_failing_body_marks_the_run_failed_and_still_raises(store):
    from mlflow import MlflowClient

    with pytest.raises(ValueError, match="boom"), tracked_run("train", "r", tracking_uri=store) as t:
        run_id = t.run_id
        raise ValueError("boom")
    assert MlflowClient(store).get_run(run_id).info.status == "FAILED"


def test_switched_off_by_environment_or_flag(store, tmp_path, monkeypatch):
    with tracked_run("train", "r", tracking_uri=store, enabled=False) as t:
        t.log_metrics({"a": 1.0})
        assert t.run_id is None and not t.active
    monkeypatch.setenv("LUNGCT_TRACKING", "off")
    with tracked_run("train", "r", tracking_uri=store) as t:
        assert t.run_id is None
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("uri", ["sqlite:////proc/no/such/dir/mlflow.db", "nosuchscheme://x"])
def test_a_broken_store_warns_once_and_does_nothing(uri, caplog, store):
    with caplog.at_level(logging.WARNING, logger="lungct"), tracked_run("train", "r", tracking_uri=uri) as t:
        t.log_metrics({"a": 1.0})
        t.log_params({"b": 2})
        t.epoch_callback()({"val_loss": 1.0, "step": 1})
        assert t.run_id is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "going on without tracking" in warnings[0]


def test_a_store_that_fails_mid_run_warns_once_then_goes_quiet(caplog):
    class Flaky:
        calls = 0

        def log_batch(self, run_id, **kwargs):
            Flaky.calls += 1
            raise ConnectionError("server went away")

    tracker = Tracker(Flaky(), "run123", "http://x")
    with caplog.at_level(logging.WARNING, logger="lungct"):
        for step in range(5):
            tracker.log_metrics({"loss": 1.0}, step=step)
        tracker.end()
    assert Flaky.calls == 1 and tracker.run_id is None
    assert len([r for r in caplog.records if "server went away" in r.getMessage()]) == 1
