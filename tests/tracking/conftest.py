"""Tracking tests log for real, into a store under tmp_path (never the project's mlruns/)."""

import pytest


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("LUNGCT_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)  # anything that escaped the tmp URI would land here, not in the project
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
