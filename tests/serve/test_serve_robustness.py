"""The rest of the hardening issue: explanations that cannot starve predictions or hang shutdown, multipart
edge cases, non-finite pixels, zip member names and totals, request pixel budget, FIFOs and unfinished runs in
`lungct predict`."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lungct.cli import main
from lungct.serve import ServeSettings, create_app
from tests.serve.conftest import LiveServer
from tests.serve.payloads import make_zip, pixel_bomb, png

CLASSES = {"benign", "malignant", "normal"}
ROOT = Path(__file__).resolve().parents[2]


def _wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class SlowExplain:
    """Stands in for InferenceService.explain: blocks until released (30 s at most), then explains for real."""

    def __init__(self, real):
        self.real = real
        self.release = threading.Event()
        self.started = 0
        self.finished = 0
        self.lock = threading.Lock()

    def __call__(self, *args):
        with self.lock:
            self.started += 1
        try:
            self.release.wait(30)
            return self.real(*args)
        finally:
            with self.lock:
                self.finished += 1


def _serve(onnx_run, tmp_path, **settings) -> tuple[LiveServer, SlowExplain]:
    app = create_app(ServeSettings(run=onnx_run, log_path=tmp_path / "log.sqlite", **settings))
    slow = SlowExplain(app.state.service.explain)
    app.state.service.explain = slow
    return LiveServer(app, tmp_path / "log.sqlite"), slow


def _post_in_thread(url: str, path: str, data: bytes, out: list) -> threading.Thread:
    def go() -> None:
        try:
            with httpx.Client(base_url=url, timeout=90) as client:
                out.append(client.post(path, files={"file": ("slice.png", data, "image/png")}))
        except httpx.HTTPError as exc:  # the server went away (the shutdown test)
            out.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


# -- A. explanations have their own bounded concurrency, queue and time limit -----------------------------------
def test_slow_explanations_do_not_starve_predictions(onnx_run, tmp_path):
    """Two slow explanations used to hold both model workers, so /v1/predict waited for them."""
    server, slow = _serve(onnx_run, tmp_path, workers=2, explain_concurrency=1, explain_queue=2)
    with server:
        answers: list[httpx.Response] = []
        threads = [_post_in_thread(server.url, "/v1/explain", png(seed=i), answers) for i in range(2)]
        _wait_for(lambda: slow.started >= 1, "an explanation to start")
        gate = server.app.state.explain_gate
        _wait_for(lambda: gate.running == 1 and gate.waiting == 1, "one explanation running and one waiting")
        with server.client() as client:
            r = client.post("/v1/predict", files={"file": ("a.png", png(seed=5), "image/png")})
            health = client.get("/health")
        # the prediction was answered while both explanations were still unanswered
        assert r.status_code == 200 and r.json()["label"] in CLASSES, r.text
        assert health.status_code == 200
        assert slow.finished == 0 and answers == [] and all(t.is_alive() for t in threads)
        assert slow.started == 1  # explain_concurrency=1: the second one waits in the queue
        slow.release.set()
        for t in threads:
            t.join(60)
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        assert all(a.headers["content-type"] == "image/png" for a in answers)


def test_a_full_explain_queue_is_a_503_with_retry_after(onnx_run, tmp_path):
    server, slow = _serve(onnx_run, tmp_path, explain_concurrency=1, explain_queue=1)
    with server:
        answers: list[httpx.Response] = []
        threads = [_post_in_thread(server.url, "/v1/explain", png(seed=i), answers) for i in range(2)]
        gate = server.app.state.explain_gate
        _wait_for(lambda: gate.running == 1 and gate.waiting == 1, "one explanation running and one waiting")
        with server.client() as client:
            busy = client.post("/v1/explain", files={"file": ("c.png", png(seed=3), "image/png")})
            ok = client.post("/v1/predict", files={"file": ("c.png", png(seed=3), "image/png")})
            limits = client.get("/v1/model").json()["limits"]
        assert busy.status_code == 503, busy.text
        assert busy.json()["error"]["code"] == "explain_busy" and "try again" in busy.json()["error"]["message"]
        assert int(busy.headers["retry-after"]) > 0
        assert ok.status_code == 200
        assert (limits["explain_concurrency"], limits["explain_queue"]) == (1, 1)
        slow.release.set()
        for t in threads:
            t.join(60)
        assert sorted(a.status_code for a in answers) == [200, 200]


def test_an_explanation_past_its_time_limit_is_a_504_and_predictions_go_on(onnx_run, tmp_path):
    server, slow = _serve(onnx_run, tmp_path, explain_timeout_s=1.0, explain_queue=0)
    with server, server.client() as client:
        r = client.post("/v1/explain", files={"file": ("a.png", png(), "image/png")})
        assert r.status_code == 504, r.text
        error = r.json()["error"]
        assert error["code"] == "explain_timeout" and "explain_timeout_s" in error["message"]
        gate = server.app.state.explain_gate
        assert gate.running == 1 and slow.finished == 0  # still working in the background, holding its slot
        p = client.post("/v1/predict", files={"file": ("a.png", png(), "image/png")})
        assert p.status_code == 200 and slow.finished == 0
        busy = client.post("/v1/explain", files={"file": ("a.png", png(), "image/png")})
        assert busy.status_code == 503  # the abandoned worker still counts: never more than explain_concurrency
        slow.release.set()
        _wait_for(lambda: gate.running == 0 and slow.finished == 1, "the abandoned explanation to finish")


SERVE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import lungct.serve.app as app_module
    from lungct.cli.serve import serve
    from lungct.serve.settings import ServeSettings

    run, port, marker = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    real_create_app = app_module.create_app

    def create_app(settings):
        app = real_create_app(settings)
        def never_ending_explain(*args):
            marker.write_text("explaining")
            time.sleep(600)
        app.state.service.explain = never_ending_explain
        return app

    app_module.create_app = create_app
    serve(ServeSettings(run=run, port=port, log_predictions=False))
    """
)


def test_sigterm_does_not_wait_for_a_running_explanation(onnx_run, tmp_path):
    """SIGTERM used to hang (40 s and more) until the running explanations finished."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    marker = tmp_path / "explaining"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE_SCRIPT, str(onnx_run), str(port), str(marker)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                return httpx.get(url + "/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for(up, "the server to start", timeout=120)
        answers: list = []
        _post_in_thread(url, "/v1/explain", png(), answers)
        _wait_for(marker.exists, "the explanation to start")
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("lungct serve did not exit within 60 s of SIGTERM while an explanation was running")
        elapsed = time.monotonic() - start
        # uvicorn re-raises the signal once it has shut down: killed by SIGTERM, after a clean shutdown
        assert code in (0, -signal.SIGTERM), log.read_text()[-2000:]
        assert "Application shutdown complete" in log.read_text() and elapsed < 60
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- B. multipart edge cases --------------------------------------------------------------------------------------
def _multipart(boundary: str, parts: list[tuple[str, str | None, bytes, str | None]]) -> bytes:
    out = b""
    for name, filename, data, ctype in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += f"Content-Type: {ctype}\r\n".encode() if ctype else b""
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("length", [71, 5000])
def test_an_over_long_multipart_boundary_is_a_400(live, length):
    boundary = "b" * length
    body = _multipart(boundary, [("file", "a.png", png(), "image/png")])
    with live.client() as client:
        r = client.post(
            "/v1/predict", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
        )
        ok = client.post(
            "/v1/predict",
            content=_multipart("b" * 70, [("file", "a.png", png(), "image/png")]),
            headers={"content-type": "multipart/form-data; boundary=" + "b" * 70},
        )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "malformed_multipart" and f"{length} characters" in error["message"]
    assert "70" in error["message"]
    assert ok.status_code == 200, ok.text  # 70 characters is allowed


def test_form_text_fields_beside_the_files_are_ignored(live):
    with live.client() as client:
        single = client.post(
            "/v1/predict",
            data={"note": "left lung, follow-up", "patient": "x"},
            files={"file": ("a.png", png(seed=1), "image/png")},
        )
        batch = client.post(
            "/v1/predict/batch",
            data={"note": "study 7"},
            files=[("files", ("a.png", png(seed=1), "image/png")), ("files", ("b.png", png(seed=2), "image/png"))],
        )
        explain = client.post(
            "/v1/explain?output=json", data={"note": "x"}, files={"file": ("a.png", png(seed=1), "image/png")}
        )
        only_text = client.post(
            "/v1/predict",
            content=_multipart("zz", [("note", None, b"no file here", None)]),
            headers={"content-type": "multipart/form-data; boundary=zz"},
        )
    assert single.status_code == 200, single.text
    assert single.json()["file"] == "a.png" and single.json()["label"] in CLASSES
    assert batch.status_code == 200, batch.text
    assert batch.json()["n_files"] == 2 and [x["file"] for x in batch.json()["results"]] == ["a.png", "b.png"]
    assert explain.status_code == 200, explain.text
    assert only_text.status_code == 400 and only_text.json()["error"]["code"] == "missing_file"


# -- C. non-finite pixels ---------------------------------------------------------------------------------------
def _float_tiff(value: float) -> bytes:
    arr = np.linspace(0, 1000, 64 * 64, dtype=np.float32).reshape(64, 64)
    arr[10, 10] = value
    buf = io.BytesIO()
    Image.fromarray(arr, mode="F").save(buf, format="TIFF")
    return buf.getvalue()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_float_tiff_with_non_finite_pixels_is_a_422(live, value):
    with live.client() as client:
        r = client.post("/v1/predict", files={"file": ("scan.tif", _float_tiff(value), "image/tiff")})
        batch = client.post(
            "/v1/predict/batch",
            files=[
                ("files", ("bad.tif", _float_tiff(value), "image/tiff")),
                ("files", ("good.tif", _float_tiff(5.0), "image/tiff")),
            ],
        )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "unreadable_image" and error["message"].startswith("scan.tif: non-finite pixel values")
    results = batch.json()["results"]
    assert results[0]["error"]["status"] == 422 and "non-finite pixel values" in results[0]["error"]["message"]
    assert results[1]["label"] in CLASSES


# -- D. zip member names, archive totals, pixels per request -------------------------------------------------------
def test_zip_member_names_are_cleaned_and_shortened(live):
    long_name = "Doe^Jane_1957/" + "\x1b[31m\r\nslice\u202e" + "a" * 3000 + ".png"
    archive = make_zip({long_name: png(seed=1), "Doe^Jane_1957/ok.png": png(seed=2)})
    with live.client() as client:
        r = client.post("/v1/predict/batch", files={"files": ("study.zip", archive, "application/zip")})
    assert r.status_code == 200, r.text
    names = [x["file"] for x in r.json()["results"]]
    assert names[1] == "ok.png"
    assert len(names[0]) <= 100 and names[0].startswith("[31mslicea")
    assert not any(ord(c) < 32 or c in "\x7f\u202e" for c in names[0])
    assert "Doe" not in r.text and "\x1b" not in r.text


@pytest.mark.parametrize(
    ("members", "status", "code"),
    [
        ({"Smith_John_1960/../../x.png": png()}, 400, "unsafe_archive"),
        ({"Smith_John_1960/big.png": bytes(1_200_000)}, 413, "archive_too_large"),  # over the live 1 MB limit
        ({"Smith_John_1960/" + "b" * 500 + "\n.png": bytes(1_200_000)}, 413, "archive_too_large"),
    ],
)
def test_archive_errors_name_the_member_by_its_base_name_only(live, members, status, code):
    with live.client() as client:
        r = client.post("/v1/predict/batch", files={"files": ("study.zip", make_zip(members), "application/zip")})
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert r.json()["error"]["code"] == code
    assert "Smith_John" not in message and "\n" not in message and len(message) < 300, message


def test_a_zip_of_many_small_members_of_zeros_is_refused_as_a_whole(onnx_run, tmp_path):
    """200 x 1 MiB of zeros is a 225 kB zip; each member is under the 1 MiB ratio floor, so it was accepted."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(200):
            zf.writestr(f"{i}.png", bytes(1024 * 1024))
    data = buf.getvalue()
    assert len(data) < 300_000
    settings = ServeSettings(run=onnx_run, log_path=tmp_path / "log.sqlite")  # the default limits
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/predict/batch", files={"files": ("zeros.zip", data, "application/zip")})
    assert r.status_code == 413, r.text[:500]
    error = r.json()["error"]
    assert error["code"] == "archive_too_large" and "100:1" in error["message"]


def test_the_decoded_pixels_of_a_request_are_bounded(onnx_run, tmp_path):
    settings = ServeSettings(run=onnx_run, log_path=tmp_path / "log.sqlite")
    assert settings.max_request_pixels == 128_000_000
    bomb = pixel_bomb(7000)  # 49 megapixels each, a few kB: three over the request limit, judged before any one
    archive = make_zip({f"{i}.png": bomb for i in range(3)})
    small = ServeSettings(run=onnx_run, log_path=tmp_path / "log2.sqlite", max_request_pixels=10_000)
    slices = [("files", (f"{i}.png", png(seed=i), "image/png")) for i in range(5)]  # 48 x 48 = 2304 pixels each
    with TestClient(create_app(settings)) as client:
        zipped = client.post("/v1/predict/batch", files={"files": ("bombs.zip", archive, "application/zip")})
        loose = client.post("/v1/predict/batch", files=[("files", (f"{i}.png", bomb, "image/png")) for i in range(3)])
    with TestClient(create_app(small)) as client:
        five = client.post("/v1/predict/batch", files=slices)
        four = client.post("/v1/predict/batch", files=slices[:4])
        one_big = client.post("/v1/predict", files={"file": ("big.png", pixel_bomb(200), "image/png")})
        limits = client.get("/v1/model").json()["limits"]
    for r in (zipped, loose, five):
        assert r.status_code == 413, r.text[:300]
        assert r.json()["error"]["code"] == "too_many_pixels" and "max_request_pixels" in r.json()["error"]["message"]
    assert four.status_code == 200 and four.json()["n_ok"] == 4
    assert one_big.status_code == 413 and one_big.json()["error"]["code"] == "too_many_pixels"
    assert limits["max_request_pixels"] == 10_000


# -- E. lungct predict: special files and unfinished runs ----------------------------------------------------------
def test_predict_reports_a_fifo_instead_of_hanging(onnx_run, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "1.png").write_bytes(png(seed=1))
    os.mkfifo(folder / "2.png")  # a FIFO with an image name inside a folder
    fifo = tmp_path / "upload"
    os.mkfifo(fifo)  # and one as an argument, without an extension: its header was read to look for DICM
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "LUNGCT_TRACKING": "off"}
    code = "import sys; from lungct.cli import main; sys.exit(main(sys.argv[1:]))"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, "predict", "--run", str(onnx_run), str(folder), str(fifo), "/dev/null"],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("lungct predict hung on a FIFO")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    by_name = {Path(r.get("path") or r["file"]).name: r for r in rows}
    assert set(by_name) == {"1.png", "2.png", "upload", "null"}
    assert by_name["1.png"]["label"] in CLASSES
    for name in ("2.png", "upload", "null"):
        assert by_name[name]["error"] == "not a regular file", by_name[name]
    assert "Traceback" not in done.stderr and "3 of 4 files could not be predicted" in done.stderr


def _run_with_status(onnx_run: Path, dest: Path, status: str | None) -> Path:
    run = Path(shutil.copytree(onnx_run, dest, ignore=shutil.ignore_patterns("predictions.sqlite*")))
    summary = json.loads((run / "summary.json").read_text())
    if status is None:
        (run / "summary.json").write_text("{not json")
    else:
        (run / "summary.json").write_text(json.dumps({**summary, "status": status}))
    return run


@pytest.mark.parametrize("status", ["running", None])
def test_predict_warns_about_an_unfinished_run(onnx_run, tmp_path, capsys, status):
    assert json.loads((onnx_run / "summary.json").read_text())["status"] == "complete"
    image = tmp_path / "a.png"
    image.write_bytes(png(seed=1))
    assert main(["predict", "--run", str(onnx_run), str(image)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["label"] in CLASSES and "unfinished" not in err and "warning" not in err

    run = _run_with_status(onnx_run, tmp_path / "run", status)
    assert main(["predict", "--run", str(run), str(image)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["label"] in CLASSES  # still predicts
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lungct: warning: "), err
    if status == "running":
        assert "unfinished run" in lines[0] and "'running'" in lines[0]
    else:
        assert "summary.json cannot be read" in lines[0]


# -- 405 answers say what is allowed ---------------------------------------------------------------------------
def test_method_not_allowed_carries_an_allow_header(live):
    with live.client() as client:
        r = client.get("/v1/predict")
        h = client.post("/health")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert h.status_code == 405 and "GET" in h.headers["allow"]
    assert r.json()["error"]["code"] == "method_not_allowed"


# -- H. every limit is documented with its default ---------------------------------------------------------------
NOT_LIMITS = {
    "run",
    "host",
    "port",
    "backend",
    "tta",
    "hu_offset",
    "precision",
    "batching",
    "log_path",
    "log_predictions",
    "keep_uploads",
    "keep_feedback_images",
    "model_uri",
    "tracking_uri",
    "model_cache",
    "reload_interval_s",
}


def test_every_limit_is_in_the_limits_section_of_docs_serve_md():
    text = (ROOT / "docs" / "serve.md").read_text()
    limits = text[text.index("## Limits") :]
    limits = limits[: limits.index("\n## ", 1)]
    settings = ServeSettings.model_fields
    assert set(settings) >= NOT_LIMITS
    for name in sorted(set(settings) - NOT_LIMITS):
        row = next((line for line in limits.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"docs/serve.md's Limits section has no row for {name}"
        default = settings[name].default
        if isinstance(default, (int, float)):
            shown = {f"{default:,g}", f"{default:,}", f"{default:g}"}
            assert any(v in row for v in shown), (name, default, row)
    for name in sorted(set(settings)):
        assert f"`{name}`" in text, f"docs/serve.md does not mention the setting {name}"


@pytest.mark.parametrize(
    ("option", "value", "setting"),
    [
        ("--explain-concurrency", "0", "explain_concurrency"),
        ("--explain-queue", "-1", "explain_queue"),
        ("--explain-timeout-s", "0", "explain_timeout_s"),
        ("--max-request-pixels", "0", "max_request_pixels"),
        ("--shutdown-timeout-s", "-1", "shutdown_timeout_s"),
    ],
)
def test_new_serve_options_are_checked_in_one_line(capsys, option, value, setting):
    assert main(["serve", "--run", ".", option, value]) == 1
    err = capsys.readouterr().err
    assert f"invalid serve settings: {setting}" in err and len(err.strip().splitlines()) == 1
