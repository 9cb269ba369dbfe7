"""End to end: `streamlit run` on the packaged page, headless Chromium uploads a slice, the page shows the result.

Chromium is Debian's package (`make setup` installs it), driven by Playwright's Python package; Playwright's
own browser download is never used (no internet). Screenshots go to test-artifacts/ at the repo root (for
a person to look at) and to tmp_path.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from lungct.app.launch import streamlit_argv
from lungct.monitoring.predlog import open_existing_log
from tests.conftest import synthetic_slice

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="/usr/bin/chromium is missing: `make setup` installs Debian's chromium"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(proc: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"streamlit did not answer at {url} within {timeout:.0f} s")


@pytest.fixture
def familiar_run(app_run, tmp_path) -> Path:
    """The tiny run with a familiarity reference, so the page can warn of an upload unlike its training images.

    The tiny run's backbone has random weights, whose features barely tell a slice from others: the threshold at the
    validation part's median (not the 99th percentile) is what lets a slice shrunk onto a white page be unfamiliar."""
    from lungct.cli import main

    run = shutil.copytree(app_run, tmp_path / "run")
    assert main(["familiarity", "--run", str(run), "--percentile", "50", "-q"]) == 0
    return run


@pytest.fixture
def app_url(familiar_run, tmp_path):
    """The app serving the tiny run on a free loopback port; always stopped at the end."""
    app_run = familiar_run
    port = _free_port()
    log = tmp_path / "predictions.sqlite"
    env = {**os.environ, "HOME": str(tmp_path)}  # streamlit's ~/.streamlit stays out of the real home
    # The exact command line `lungct app` execs (test_app_page checks that wiring without a server).
    proc = subprocess.Popen(
        streamlit_argv(app_run, log, port=port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(proc, url)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _screenshot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name))  # Streamlit scrolls inside the page: the viewport is tall
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / name, ARTIFACTS / name)


def test_upload_shows_prediction_probabilities_and_heatmap(app_url, familiar_run, tmp_path):
    import numpy as np
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    from lungct.app.page import UNFAMILIAR
    from lungct.inference import Predictor

    expect.set_options(timeout=60_000)  # the first page load imports torch and loads the model
    url, log = app_url
    slice_path = tmp_path / "Patient Jane 0042.png"
    synthetic_slice(0, 5, 48).save(slice_path)
    page_path = tmp_path / "figure.png"  # a slice shrunk onto a white page, as in an article's figure
    Image.fromarray(np.pad(np.asarray(synthetic_slice(0, 5, 24)), 12, constant_values=255)).save(page_path)
    slice_seen, page_seen = Predictor(familiar_run).predict([slice_path, page_path])
    assert page_seen["familiar"] is False, page_seen  # the precondition of the warning checked below
    warning = UNFAMILIAR.split(" (")[0]  # "This image is unlike the CT slices the model was trained on"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(60_000)
            page.goto(url)
            expect(page.get_by_text("Decision support, not a diagnosis")).to_be_visible()
            page.locator("input[type=file]").set_input_files(str(slice_path))

            predicted = page.get_by_text("Predicted class:")
            expect(predicted).to_be_visible()
            label = predicted.locator("strong").inner_text()
            assert label in {"benign", "malignant", "normal"}
            expect(page.get_by_text("Probability:")).to_contain_text(r"0.")
            probs = page.get_by_text(" · malignant: ")
            expect(probs).to_contain_text("benign: ")
            expect(page.get_by_text(f"Grad-CAM heatmap for {label}")).to_be_visible()
            heatmap = page.locator("[data-testid=stImage] img").first
            expect(heatmap).to_be_visible()
            assert heatmap.evaluate("img => img.complete && img.naturalWidth") > 200  # the overlay, not the slice
            page.wait_for_timeout(500)  # let the bar chart finish drawing
            expect(page.get_by_text(warning)).to_have_count(0 if slice_seen["familiar"] else 1)
            _screenshot(page, tmp_path, "app_prediction.png")

            page.locator("input[type=file]").set_input_files(str(page_path))
            expect(page.get_by_text(warning)).to_be_visible()
            expect(page.get_by_text(warning)).to_contain_text(f"novelty {page_seen['novelty']:.1f}")
            _screenshot(page, tmp_path, "app_unfamiliar.png")

            page.get_by_role("tab", name="Model").click()
            expect(page.get_by_text("Test metrics")).to_be_visible()
            expect(page.get_by_text("Confusion matrix (test part)")).to_be_visible()
            expect(page.get_by_text("percentile bootstrap")).to_be_visible()
            _screenshot(page, tmp_path, "app_model.png")
        finally:
            browser.close()
    assert (tmp_path / "app_prediction.png").stat().st_size > 10_000
    rows = open_existing_log(log).read()
    assert len(rows) == 2 and {r["source"] for r in rows} == {"app"} and rows[0]["label"] == label
    assert rows[1]["novelty"] == pytest.approx(page_seen["novelty"], abs=1e-3)
    assert "Jane" not in str(rows[0]) and "0042" not in str(rows[0])
