"""`lungct train`, `evaluate` and `cv` log to MLflow; read back through MLflow's own client."""

import json
import logging

import yaml

from lungct.cli import main
from tests.conftest import tiny_config


def _config(tmp_path, data, weights, **train):
    cfg = tiny_config(data, weights, **train).model_dump(mode="json")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _only_run(client, experiment: str, kind: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`lungct.kind` = '{kind}'")
    assert len(runs) == 1, runs
    return runs[0]


def test_train_and_evaluate_are_tracked(store, tiny_dataset, fake_pretrained, tmp_path, capsys):
    from mlflow import MlflowClient

    config, run_dir = _config(tmp_path, tiny_dataset, fake_pretrained), tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run_dir), "--tracking-uri", store, "-q"]) == 0
    assert (
        main(["evaluate", "--run", str(run_dir), "--out", str(tmp_path / "eval"), "--tracking-uri", store, "-q"]) == 0
    )
    client = MlflowClient(store)

    train = _only_run(client, "tiny", "train")
    assert train.info.status == "FINISHED"
    assert train.data.params["train.phase1.lr"] == "0.001" and train.data.params["model.input_size"] == "32"
    history = [m.step for m in client.get_metric_history(train.info.run_id, "val_loss")]
    assert history == [1, 2, 3, 4]  # two phases of two epochs, one point per epoch
    assert {"best_val_loss", "best_val_accuracy", "n_train", "train_seconds"} <= set(train.data.metrics)
    run_files = {a.path for a in client.list_artifacts(train.info.run_id, "run")}
    assert {
        "run/model.safetensors",
        "run/model.json",
        "run/split.csv",
        "run/config.yaml",
        "run/curves.png",
    } <= run_files
    assert "config.yaml" in {a.path for a in client.list_artifacts(train.info.run_id)}

    evaluation = _only_run(client, "tiny", "evaluate")
    m = evaluation.data.metrics
    assert m["accuracy_ci95_low"] <= m["accuracy"] <= m["accuracy_ci95_high"]
    assert m["n"] == json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"]
    assert evaluation.data.tags["lungct.model_version"] == train.data.tags["lungct.model_version"]
    eval_files = {a.path for a in client.list_artifacts(evaluation.info.run_id, "eval")}
    assert {"eval/metrics.json", "eval/confusion_matrix.png", "eval/roc.png"} <= eval_files


def test_a_broken_tracking_uri_warns_and_training_completes(store, tiny_dataset, fake_pretrained, tmp_path, caplog):
    config, run_dir = _config(tmp_path, tiny_dataset, fake_pretrained), tmp_path / "run"
    broken = "sqlite:////proc/no/such/folder/mlflow.db"
    with caplog.at_level(logging.WARNING, logger="lungct"):
        code = main(["train", "--config", str(config), "--out", str(run_dir), "--tracking-uri", broken, "-q"])
    assert code == 0
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
    assert (run_dir / "model.safetensors").is_file()
    warnings = [r.getMessage() for r in caplog.records if "tracking" in r.getMessage()]
    assert len(warnings) == 1 and "without tracking" in warnings[0]


def test_cv_is_one_parent_run_with_a_child_per_fold(store, tmp_path):
    """log_cv on a finished cv folder (as `lungct cv` leaves it); cross-validation itself is tested elsewhere."""
    from mlflow import MlflowClient

    from lungct.tracking import log_cv, tracked_run

    out = tmp_path / "cv"
    for k in (1, 2):
        (out / f"fold_{k}" / "eval").mkdir(parents=True)
        (out / f"fold_{k}" / "history.csv").write_text("phase,epoch,val_loss\nall,1,0.9\nall,2,0.7\n")
        metrics = {"n": 5, "accuracy": 0.6 + k / 10, "ci95": {"accuracy": [0.4, 0.9]}}
        (out / f"fold_{k}" / "eval" / "metrics.json").write_text(json.dumps(metrics))
    (out / "cv.md").write_text("# cv")
    result = {
        "n_images": 10,
        "n_groups": 6,
        "per_fold": [{"fold": 1}, {"fold": 2}],
        "summary": {"accuracy": {"mean": 0.75, "std": 0.07, "min": 0.7, "max": 0.8}},
    }
    with tracked_run("cv", "cv-test", {"folds": 2}, tracking_uri=store) as tracker:
        log_cv(tracker, out, result)
        parent_id = tracker.run_id
    client = MlflowClient(store)
    parent = client.get_run(parent_id)
    assert parent.data.metrics["accuracy_mean"] == 0.75 and parent.data.metrics["n_groups"] == 6
    assert {a.path for a in client.list_artifacts(parent_id, "cv")} == {"cv/cv.md"}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(c.info.run_name for c in children) == ["fold_1", "fold_2"]
    fold_2 = next(c for c in children if c.info.run_name == "fold_2")
    assert fold_2.data.metrics["accuracy"] == 0.8 and fold_2.data.metrics["accuracy_ci95_high"] == 0.9
    assert [m.value for m in client.get_metric_history(fold_2.info.run_id, "val_loss")] == [0.9, 0.7]
