"""The model page's content, the page script's error messages (Streamlit's AppTest) and `lungct app`."""

from __future__ import annotations

import importlib
import json
import shutil
import sys

import pytest
from streamlit.testing.v1 import AppTest

from lungct.app.launch import PAGE, streamlit_argv
from lungct.app.model_info import card_rows, eval_info, history_info
from lungct.cli import main


def test_eval_info_has_metrics_with_confidence_intervals_and_plots(app_run):
    info = eval_info(app_run)
    assert info.message is None
    rows = {r["metric"]: r for r in info.summary_rows}
    assert set(rows) == {"accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece"}
    low, high = (float(x) for x in rows["accuracy"]["95% CI"].split(" – "))
    assert low <= float(rows["accuracy"]["value"]) <= high
    assert [r["class"] for r in info.class_rows] == ["benign", "malignant", "normal"]
    assert info.class_rows[0]["recall 95% CI"] != "n/a"
    assert info.confusion_png.name == "confusion_matrix.png" and info.roc_png.name == "roc.png"


def test_eval_info_explains_what_is_missing(app_run, tmp_path):
    none = eval_info(app_run, tmp_path / "no-eval")
    assert none.metrics is None and "no test metrics yet" in none.message and "lungct evaluate --run" in none.message
    old = tmp_path / "old"
    old.mkdir()
    metrics = json.loads((app_run / "eval" / "metrics.json").read_text())
    del metrics["ci95"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    info = eval_info(app_run, old)
    assert "no confidence intervals" in info.message
    assert info.summary_rows[0]["95% CI"] == "n/a" and info.confusion_png is None
    (old / "metrics.json").write_text("{not json")
    broken = eval_info(app_run, old)
    assert broken.metrics is None and "cannot be read" in broken.message


def test_history_prefers_curves_png_and_falls_back_to_history_csv(app_run, tmp_path):
    assert history_info(app_run).curves_png == app_run / "curves.png"
    run = tmp_path / "run"
    shutil.copytree(app_run, run, ignore=shutil.ignore_patterns("curves.png", "eval"))
    info = history_info(run)
    assert info.curves_png is None and len(info.rows) == 2 and info.rows[-1]["step"] == 2
    assert 0 <= info.rows[0]["val_accuracy"] <= 1
    (run / "history.csv").unlink()
    assert "no training history" in history_info(run).message
    rows = {r["item"]: r["value"] for r in card_rows(app_run)}
    assert rows["classes"] == "benign, malignant, normal" and rows["input"] == "64 px, grey"


def _page(monkeypatch, *args) -> AppTest:
    monkeypatch.setattr(sys, "argv", [str(PAGE), *map(str, args)])
    return AppTest.from_file(str(PAGE), default_timeout=60).run()


def test_page_without_a_run_shows_messages_not_tracebacks(monkeypatch, tmp_path):
    at = _page(monkeypatch, "--run", tmp_path / "missing")
    assert not at.exception
    assert [e.value for e in at.error] == [
        f"The model cannot be loaded: run directory not found: {tmp_path / 'missing'}"
    ]
    assert "not a diagnosis" in at.warning[0].value
    at = _page(monkeypatch)
    assert not at.exception and "lungct app --run RUN_DIR" in at.error[0].value


def test_page_for_a_run_without_eval_says_so(monkeypatch, app_run, tmp_path):
    at = _page(monkeypatch, "--run", app_run, "--log", tmp_path / "log.sqlite", "--eval", tmp_path / "no-eval")
    assert not at.exception and not at.error
    assert [t.label for t in at.tabs] == ["Predict", "Model"]
    assert any("no test metrics yet" in i.value for i in at.info)


def test_app_command_fails_fast_with_one_line(capsys, tmp_path):
    code = main(["app", "--run", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == f"lungct: error: run directory not found: {tmp_path / 'missing'}"


def test_the_page_takes_every_file_type_lungct_reads():
    """It took PNG, JPEG and DICOM only, where the API and predict take TIFF (16-bit exports) and BMP as well."""
    from lungct.app.page import UPLOAD_TYPES
    from lungct.data.images import IMAGE_EXTENSIONS

    assert {f".{t}" for t in UPLOAD_TYPES} >= IMAGE_EXTENSIONS and {"tif", "tiff", "dicom"} <= set(UPLOAD_TYPES)


def test_streamlit_command_line(tmp_path):
    argv = streamlit_argv(tmp_path / "run", tmp_path / "log.sqlite", port=8765)
    assert argv[1:5] == ["-m", "streamlit", "run", str(PAGE)]
    flags = dict(zip(argv[5 : argv.index("--") : 2], argv[6 : argv.index("--") : 2], strict=True))
    assert flags["--server.headless"] == "true" and flags["--browser.gatherUsageStats"] == "false"
    assert flags["--server.port"] == "8765" and flags["--server.address"] == "127.0.0.1"
    assert argv[argv.index("--") :] == ["--", "--run", str(tmp_path / "run"), "--log", str(tmp_path / "log.sqlite")]
    # the page reads what the launcher passes after "--"
    from lungct.app.page import parse_args

    argv = streamlit_argv(tmp_path / "run", tmp_path / "log.sqlite", hu_offset=1024)
    assert parse_args(argv[argv.index("--") + 1 :]).hu_offset == 1024


def test_app_command_execs_streamlit_on_the_page(monkeypatch, capsys, app_run, tmp_path):
    calls = []
    command = importlib.import_module("lungct.cli.app")  # not `lungct.cli.app`: lungct.cli binds `app` to its Typer
    monkeypatch.setattr(command.os, "execv", lambda exe, argv: calls.append((exe, argv)))
    log = tmp_path / "logs" / "p.sqlite"
    assert main(["app", "--run", str(app_run), "--log", str(log), "--port", "8765", "--hu-offset", "1024"]) == 0
    assert calls == [(sys.executable, streamlit_argv(app_run.resolve(), log.resolve(), 8765, hu_offset=1024))]
    assert log.is_file()  # created (and so known to be writable) before the server starts
    assert "http://127.0.0.1:8765" in capsys.readouterr().out


def test_app_on_a_port_in_use_is_one_line_and_starts_nothing(monkeypatch, capsys, app_run, tmp_path):
    """Streamlit used to print "Port N is not available" after lungct had announced the app's URL."""
    import socket

    command = importlib.import_module("lungct.cli.app")
    monkeypatch.setattr(command.os, "execv", lambda *a: pytest.fail("streamlit started on a port in use"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["app", "--run", str(app_run), "--log", str(tmp_path / "p.sqlite"), "--port", str(port)])
    captured = capsys.readouterr()
    assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in captured.err and "http://" not in captured.out


@pytest.mark.parametrize("flag", ["--help"])
def test_app_help_lists_options(capsys, flag):
    assert main(["app", flag]) == 0
    out = capsys.readouterr().out
    assert "--run" in out and "--log" in out and "--port" in out
