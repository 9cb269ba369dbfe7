"""`lungct serve --model-uri models:/lungct@champion`: the served model follows the registry alias, and the
switch drops no request."""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx
import pytest

from lungct.errors import LungCTError
from lungct.serve import ServeSettings, create_app
from lungct.tracking.registry import Registry, parse_model_uri
from tests.serve.conftest import LiveServer
from tests.serve.payloads import png


def test_a_running_server_switches_to_the_new_champion_without_a_failed_request(onnx_run, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    second = tmp_path / "second"
    shutil.copytree(onnx_run, second)
    (second / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": 2.0}))
    registry = Registry(uri)
    v1, v2 = registry.register(onnx_run), registry.register(second)
    registry.set_champion(v1)
    settings = ServeSettings(
        model_uri="models:/lungct@champion",
        tracking_uri=uri,
        model_cache=tmp_path / "cache",
        reload_interval_s=0.2,
        log_path=tmp_path / "predictions.sqlite",
    )
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def load(url: str) -> None:  # a bounded loop of requests on loopback, running through the switch
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(2000):
                if stop.is_set():
                    break
                r = client.post("/v1/predict", files={"file": (f"{i}.png", png(seed=i % 7), "image/png")})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["model_version"])

    with LiveServer(create_app(settings), settings.log_path) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/v1/model").json()["model_version"].startswith(f"lungct-v{v1}-")
        loader = threading.Thread(target=load, args=(server.url,))
        loader.start()
        while len(statuses) < 10:
            time.sleep(0.05)
        registry.set_champion(v2)  # what `lungct promote` does when the gate passes
        deadline = time.monotonic() + 60
        while not client.get("/v1/model").json()["model_version"].startswith(f"lungct-v{v2}-"):
            assert time.monotonic() < deadline, "the server did not switch within 60 s"
            time.sleep(0.1)
        switched_at = len(statuses)
        while len(statuses) < switched_at + 10:
            time.sleep(0.05)
        stop.set()
        loader.join(60)
        assert client.get("/v1/model").json()["model_uri"] == "models:/lungct@champion"
    assert statuses and set(statuses) == {200}, f"{sum(s != 200 for s in statuses)} failed requests"
    assert versions[0].startswith(f"lungct-v{v1}-") and versions[-1].startswith(f"lungct-v{v2}-")


@pytest.mark.parametrize("uri", ["lungct@champion", "models:/lungct", "models:/@champion", "runs:/abc/model"])
def test_a_model_uri_that_is_not_an_alias_is_a_clear_error(uri):
    with pytest.raises(LungCTError, match="models:/NAME@ALIAS"):
        parse_model_uri(uri)


def test_an_alias_that_points_nowhere_stops_the_server_at_start(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    settings = ServeSettings(model_uri="models:/lungct@champion", tracking_uri=uri, model_cache=tmp_path / "c")
    with pytest.raises(LungCTError, match=r"no model registry at .*mlflow\.db does not exist"):
        create_app(settings)  # a mistyped store is named, and not created empty
    assert not (tmp_path / "mlruns").exists()
    Registry(uri)  # an empty registry: the model exists, no alias points anywhere
    with pytest.raises(LungCTError, match="no version with the alias 'champion'"):
        create_app(settings)
