"""dvc.yaml as shipped, on a tiny synthetic dataset: it runs, a second `dvc repro` skips, a parameter stales train.

The project's dvc.yaml and src/ are copied into a temporary DVC project whose params.yaml points the stages at
tiny data and settings (the real data is never needed). Tracking is off (see tests/conftest.py).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_config, write_dataset

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(
    not (BIN / "dvc").exists() and shutil.which("dvc") is None, reason="dvc is not installed (make setup installs it)"
)


def _dvc(project: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_repro_runs_once_then_skips_and_a_parameter_stales_train(tmp_path, fake_pretrained):
    data = write_dataset(tmp_path / "data", per_class=8)
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "dvc.yaml", project)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (project / "configs").mkdir()
    (project / "configs" / "tiny.yaml").write_text(
        yaml.safe_dump(tiny_config(data, fake_pretrained).model_dump(mode="json"))
    )
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["pipeline"] = {
        "config": "configs/tiny.yaml",
        "data": str(data),
        "weights": str(fake_pretrained),
        "out": "runs/pipeline",
    }
    params["split"].update(mode="random", val_fraction=0.2, test_fraction=0.2)
    params["model"]["input_size"] = 32
    params["train"].update(
        batch_size=8, phase1={"epochs": 1, "lr": 1e-3}, phase2={"epochs": 1, "lr": 1e-4, "unfreeze": 10}
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _dvc(project, "init", "--no-scm", "-q")

    first = _dvc(project, "repro")
    for stage in ("audit", "split", "train", "calibrate", "evaluate", "export"):
        assert f"Running stage '{stage}'" in first
    out = project / "runs" / "pipeline"
    assert (out / "model" / "model.safetensors").is_file() and (out / "eval" / "metrics.json").is_file()
    assert (out / "audit").is_dir() and (out / "split.csv").is_file()
    assert (out / "export" / "model.onnx").is_file() and not (out / "model" / "model.onnx").exists()
    assert (out / "calibrated" / "calibration.json").is_file() and not (out / "model" / "calibration.json").exists()
    assert (out / "calibrated" / "familiarity.npz").is_file()  # the served model says what is unlike its training
    assert json.loads((out / "eval" / "metrics.json").read_text())["calibrated"] is True

    second = _dvc(project, "repro")
    assert "Running stage" not in second
    assert "Stage 'train' didn't change, skipping" in second

    params["train"]["phase1"]["lr"] = 3e-3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # `dvc status` names the stages a repro would start from; rerunning them is DVC's job (and docs/pipeline.md
    # shows it on the real data). Running them here would cost three more start-ups of torch.
    status = _dvc(project, "status")
    assert "train:" in status and "params.yaml" in status and "modified:           train" in status
    assert "split:" not in status and "audit:" not in status and "evaluate:" not in status and "export:" not in status
    assert "calibrate:" not in status
