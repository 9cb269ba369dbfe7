"""Each optional extra installs on its own into a fresh virtual environment and its commands run there; a
command whose extra is missing ends with one line naming the extra to install.

The environments are made by uv from its cache (hard links: seconds, no download of anything not already
cached by `make setup`: both install the versions of requirements.lock), in a temporary folder, with lungct
installed from this checkout.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lungct.config import save_config
from tests.conftest import tiny_config, write_dataset

ROOT = Path(__file__).resolve().parents[1]
LOCK = ["-c", str(ROOT / "requirements.lock")]  # the versions `make setup` installs, so uv's cache has them


def _uv() -> list[str]:
    exe = shutil.which("uv")
    return [exe] if exe else [sys.executable, "-m", "uv"]


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    """extra name -> that venv's bin folder, created on first use."""
    base = tmp_path_factory.mktemp("extras")
    made: dict[str, Path] = {}

    def make(extra: str) -> Path:
        if extra not in made:
            venv = base / (extra or "base")
            subprocess.run([*_uv(), "venv", "--quiet", str(venv)], check=True)
            target = f"{ROOT}[{extra}]" if extra else str(ROOT)
            subprocess.run(
                [*_uv(), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), *LOCK, "-e", target],
                check=True,
            )
            made[extra] = venv / "bin"
        return made[extra]

    return make


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict[str, Path]:
    """A tiny dataset, its config, and a run trained from it (in this process, with everything installed)."""
    from lungct.training import train

    root = tmp_path_factory.mktemp("project")
    data = write_dataset(root / "data", per_class=6)
    cfg = tiny_config(data)
    cfg.model.arch, cfg.model.input_size = "small_cnn", 32
    cfg.train.phase1.epochs, cfg.train.phase2.epochs = 1, 0
    config = root / "tiny.yaml"
    save_config(cfg, config)
    run = train(cfg, root / "run", progress=False).path
    return {"root": root, "data": data, "config": config, "run": run}


def extra_env() -> dict[str, str]:
    """The environment for a command of a fresh extra's venv: none of this venv's settings, and bytecode on.

    PYTHONDONTWRITEBYTECODE (set on some machines) would make every command compile torch's sources again
    (about 8 s each on 2 cores); with it dropped, the first command of a venv writes them for the next ones.
    """
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "LUNGCT_TRACKING", "PYTHONDONTWRITEBYTECODE")
    return {k: v for k, v in os.environ.items() if k not in drop}


def lungct(bin_dir: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = extra_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(bin_dir / "lungct"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_names_extra(result: subprocess.CompletedProcess, extra: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'lungct[{extra}]'" in lines[0], result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, seconds: float = 120) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def serve_and_check(bin_dir: Path, args: list[str], url: str, cwd: Path) -> int:
    env = extra_env()
    process = subprocess.Popen(
        [str(bin_dir / "lungct"), *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        return wait_for(url, process)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_base_install_has_the_command_line_and_names_each_missing_extra(envs, project):
    bin_dir, cwd = envs(""), project["root"]
    assert lungct(bin_dir, "--help", cwd=cwd).returncode == 0
    assert_names_extra(lungct(bin_dir, "train", "--config", str(project["config"]), "--out", "r", cwd=cwd), "train")
    assert_names_extra(lungct(bin_dir, "predict", "--run", str(project["run"]), str(project["data"]), cwd=cwd), "train")


def test_train_extra_trains_evaluates_and_predicts_untracked_and_names_the_others(envs, project):
    bin_dir, cwd = envs("train"), project["root"]
    trained = lungct(bin_dir, "train", "--config", str(project["config"]), "--out", "run_train", "--quiet", cwd=cwd)
    assert trained.returncode == 0, trained.stderr
    assert "lungct[mlops]" in trained.stderr  # tracking is optional: one warning, and the run is complete
    evaluated = lungct(bin_dir, "evaluate", "--run", "run_train", "--out", "run_train/eval", "--quiet", cwd=cwd)
    assert evaluated.returncode == 0 and (cwd / "run_train" / "eval" / "metrics.json").is_file(), evaluated.stderr
    predicted = lungct(bin_dir, "predict", "--run", "run_train", str(project["data"] / "Normal cases"), cwd=cwd)
    assert predicted.returncode == 0 and len(predicted.stdout.splitlines()) == 6, predicted.stderr
    assert_names_extra(lungct(bin_dir, "serve", "--run", "run_train", cwd=cwd), "serve")
    tune = ["tune", "--config", str(project["config"]), "--trials", "1", "--study-dir", "study"]
    assert_names_extra(lungct(bin_dir, *tune, cwd=cwd), "mlops")


def test_pacs_extra_reaches_the_network_and_the_dicom_extra_names_it(envs, project):
    """[pacs] imports pynetdicom, highdicom and dicomweb-client (the command gets as far as the network: a
    closed port is one line); without it, the PACS commands name the extra (tests/pacs covers the rest)."""
    web = ["dicomweb", "--url", "http://127.0.0.1:9/dicom-web", "--study", "1.2.3", "--run", str(project["run"])]
    result = lungct(envs("pacs"), *web, cwd=project["root"])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "lungct: error: cannot retrieve the study from http://127.0.0.1:9/dicom-web: ConnectionError"
    ]
    assert_names_extra(lungct(envs("dicom"), *web, cwd=project["root"]), "pacs")


def test_dicom_extra_predicts_a_dicom_series(envs, project):
    from tests.conftest import synthetic_slice
    from tests.dicom.dicom_factory import write_study

    series = project["root"] / "series"
    series.mkdir()
    write_study(series, [synthetic_slice(0, i, 64) for i in range(3)])
    result = lungct(envs("dicom"), "predict-series", "--run", str(project["run"]), str(series), cwd=project["root"])
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 4  # three slices and the study line


def test_serve_extra_has_no_torch_and_serves_an_exported_run_through_the_hostile_input_suite(envs, project):
    """`lungct[serve]` alone: no torch or torchvision in the environment; it serves the run's ONNX export, answers
    every hostile request of tests/serve/test_serve_hostile.py as the full install does, and /v1/explain 501."""
    import httpx

    from lungct.export import export_onnx
    from tests.serve.conftest import LIMITS
    from tests.serve.test_serve_hostile import BAD_REQUESTS, EXPLAIN, check_hostile_request

    bin_dir, root = envs("serve"), project["root"]
    for module in ("torch", "torchvision", "timm", "sklearn"):
        found = subprocess.run(
            [str(bin_dir / "python"), "-c", f"import importlib.util as u; print(u.find_spec('{module}') is None)"],
            capture_output=True,
            text=True,
        )
        assert found.stdout.strip() == "True", f"lungct[serve] installs {module}"
    run = root / "run_onnx"
    shutil.copytree(project["run"], run)
    export_onnx(run)
    port = free_port()
    options = [f"--{k.replace('_', '-')}={v}" for k, v in LIMITS.items()]
    env = extra_env()
    process = subprocess.Popen(
        [str(bin_dir / "lungct"), "serve", "--run", str(run), "--port", str(port), "--no-log", *options],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(f"{url}/health", process) == 200
        with httpx.Client(base_url=url, timeout=60) as client:
            info = client.get("/v1/model").json()
            assert info["backend"] == "onnx" and info["explain_available"] is False
            for case in BAD_REQUESTS:
                if case[1].startswith(EXPLAIN) and case[4] != "invalid_request":  # past query validation: 501
                    case = (*case[:3], 501, "explain_unavailable", "lungct[train]")
                check_hostile_request(client, case)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_app_extra_starts_the_app(envs, project):
    port = free_port()
    args = ["app", "--run", str(project["run"]), "--port", str(port)]
    assert serve_and_check(envs("app"), args, f"http://127.0.0.1:{port}/_stcore/health", project["root"]) == 200


def test_mlops_extra_tunes_and_tracks_the_search(envs, project):
    bin_dir, cwd = envs("mlops"), project["root"]
    uri = f"sqlite:///{cwd}/mlruns/mlflow.db"
    tune = ["tune", "--config", str(project["config"]), "--trials", "1", "--study-dir", "study", "--quiet"]
    tuned = lungct(bin_dir, *tune, "--tracking-uri", uri, cwd=cwd)
    assert tuned.returncode == 0 and "lungct[mlops]" not in tuned.stderr, tuned.stderr
    assert (cwd / "study" / "study.db").is_file() and (cwd / "mlruns" / "mlflow.db").is_file()
