"""A tiny run trained and exported to ONNX once per session, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from lungct.export import export_onnx
from lungct.serve import ServeSettings, create_app
from lungct.training import train
from tests.conftest import tiny_config, write_dataset

# Small limits so that every limit can be broken with small test files.
LIMITS = {"max_file_mb": 1.0, "max_batch_files": 5, "max_batch_mb": 3.0, "max_pixels": 4_000_000}


@pytest.fixture(scope="session")
def onnx_run(tmp_path_factory, fake_pretrained) -> Path:
    """MobileNetV2 fine-tuned for one epoch per phase at 64 px (Grad-CAM needs a 2x2 last block), exported."""
    root = tmp_path_factory.mktemp("serve")
    data = write_dataset(root / "data", per_class=8)
    cfg = tiny_config(data, fake_pretrained)
    cfg.train.phase1.epochs = cfg.train.phase2.epochs = 1
    cfg.model.input_size = 64
    run = train(cfg, root / "run", progress=False).path
    export_onnx(run)
    return run


@pytest.fixture(scope="session")
def slice_dir(onnx_run) -> Path:
    return onnx_run.parent / "data"


class LiveServer:
    def __init__(self, app, log_path: Path):
        self.app = app
        self.log_path = log_path
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


@pytest.fixture(scope="session")
def live(onnx_run, tmp_path_factory):
    """The API for onnx_run served by uvicorn in a thread, with the small LIMITS and its own prediction log."""
    log_path = tmp_path_factory.mktemp("predlog") / "predictions.sqlite"
    app = create_app(ServeSettings(run=onnx_run, log_path=log_path, **LIMITS))
    with LiveServer(app, log_path) as server:
        yield server
