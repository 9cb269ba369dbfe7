"""`lungct serve` options and settings, and the OpenAPI schema kept in docs/openapi.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lungct.cli import main
from lungct.serve import ServeSettings, openapi_schema
from lungct.serve.openapi import REGENERATE

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_openapi_file_is_up_to_date():
    assert OPENAPI.is_file(), f"docs/openapi.json is missing; create it with: {REGENERATE}"
    kept = json.loads(OPENAPI.read_text())
    assert kept == openapi_schema(), f"docs/openapi.json is out of date; regenerate it with: {REGENERATE}"
    paths = kept["paths"]
    assert {"/health", "/v1/model", "/v1/predict", "/v1/predict/batch", "/v1/explain"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"400", "413", "415", "422"} <= set(paths["/v1/predict/batch"]["post"]["responses"])


def test_openapi_out_writes_the_schema(tmp_path, capsys):
    assert main(["serve", "--openapi-out", str(tmp_path / "api.json")]) == 0
    assert json.loads((tmp_path / "api.json").read_text())["info"]["title"] == "lungct"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve"], "invalid serve settings: give exactly one of run (a run directory) and model_uri"),
        (["serve", "--run", "/nonexistent/run"], "run directory not found"),
        (["serve", "--run", ".", "--max-file-mb", "-1"], "invalid serve settings: max_file_mb"),
        (["serve", "--run", ".", "--explain-max-side", "10"], "invalid serve settings: explain_max_side"),
        # inf passed gt=0, and every batch request then failed with a 500 (int(inf) where the limit becomes bytes)
        (["serve", "--run", ".", "--max-batch-mb", "inf"], "invalid serve settings: max_batch_mb"),
        (["serve", "--run", ".", "--max-zip-ratio", "inf"], "invalid serve settings: max_zip_ratio"),
    ],
)
def test_serve_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_unknown_backend_is_a_usage_error_naming_the_choices(capsys):
    assert main(["serve", "--run", ".", "--backend", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "'tpu' is not one of 'auto', 'onnx', 'torch'" in err and len(err.strip().splitlines()) == 1


def test_settings_read_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LUNGCT_SERVE_MAX_FILE_MB", "5")
    monkeypatch.setenv("LUNGCT_SERVE_BACKEND", "torch")
    s = ServeSettings(run=tmp_path, workers=4, threads=1)
    assert (s.max_file_bytes, s.backend, s.model_threads) == (5 * 1024 * 1024, "torch", 1)
    assert s.resolved_log_path == tmp_path / "predictions.sqlite"
    assert ServeSettings(run=tmp_path, log_predictions=False).resolved_log_path is None


def test_uploads_are_kept_only_when_asked(onnx_run, tmp_path):
    from fastapi.testclient import TestClient

    from lungct.serve import create_app
    from tests.serve.payloads import png

    kept = tmp_path / "kept"
    data = png(seed=4)
    for keep in (None, kept):
        settings = ServeSettings(run=onnx_run, keep_uploads=keep, log_path=tmp_path / "log.sqlite")
        with TestClient(create_app(settings)) as client:
            r = client.post("/v1/predict", files={"file": ("Doe_Jane.png", data, "image/png")})
        assert r.status_code == 200
    assert [p.name for p in kept.iterdir()] == [f"{r.json()['sha256']}.png"]
    assert {p.name for p in tmp_path.iterdir()} <= {"kept", "log.sqlite", "log.sqlite-shm", "log.sqlite-wal"}


def test_a_port_in_use_is_one_line_before_the_model_loads(onnx_run, capsys, monkeypatch):
    """uvicorn used to load the model, then log `[Errno 98] ... address already in use` and exit with status 3."""
    import socket

    import lungct.serve.app as app_module

    def must_not_load(settings):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(app_module, "create_app", must_not_load)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--run", str(onnx_run), "--port", str(port), "--no-log"]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "in use" in err, err
    assert "Traceback" not in err


def test_port_zero_binds_a_free_port_and_a_bad_host_is_named():
    from lungct.cli.ports import listen_socket
    from lungct.errors import LungCTError

    with listen_socket("127.0.0.1", 0) as sock:
        assert sock.getsockname()[1] > 0
    with pytest.raises(LungCTError, match=re.escape("cannot listen on no-such-host.invalid:8000")):
        listen_socket("no-such-host.invalid", 8000)


def test_a_keep_uploads_folder_that_cannot_be_made_is_one_line(onnx_run, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = ["serve", "--run", str(onnx_run), "--port", "0", "--no-log", "--keep-uploads", str(tmp_path / "file")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"keep_uploads folder {tmp_path / 'file'} cannot be used: exists and is not a folder" in err, err
    assert "Traceback" not in err


def test_the_command_takes_port_host_run_and_log_from_the_environment(monkeypatch, tmp_path, capsys):
    """The options' defaults were always passed on, so LUNGCT_SERVE_PORT, _HOST, _RUN and _LOG_PREDICTIONS were
    ignored (even invalid ones) and a deployment got port 8000 and a prediction log."""
    import lungct.cli.serve as serve_cli

    started: list[ServeSettings] = []
    monkeypatch.setattr(serve_cli, "serve", started.append)
    monkeypatch.setenv("LUNGCT_SERVE_PORT", "18601")
    monkeypatch.setenv("LUNGCT_SERVE_HOST", "0.0.0.0")
    monkeypatch.setenv("LUNGCT_SERVE_RUN", str(tmp_path))
    monkeypatch.setenv("LUNGCT_SERVE_LOG_PREDICTIONS", "false")
    assert main(["serve"]) == 0
    (s,) = started
    assert (s.port, s.host, s.run, s.log_predictions) == (18601, "0.0.0.0", tmp_path, False)
    assert main(["serve", "--port", "18602", "--host", "127.0.0.1"]) == 0  # options still win
    assert (started[-1].port, started[-1].host) == (18602, "127.0.0.1")
    monkeypatch.setenv("LUNGCT_SERVE_PORT", "abc")
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "invalid serve settings: port" in err and len(err.strip().splitlines()) == 1, err
