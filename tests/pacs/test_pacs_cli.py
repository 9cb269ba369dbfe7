"""Wrong arguments, credentials and operating points of `lungct dicom-listen` and `lungct dicomweb` end as one
clear line, never a traceback; credentials come from the environment only."""

from __future__ import annotations

import json
import shutil
import socket
import threading

import pytest

from lungct.cli import main
from lungct.errors import LungCTError
from lungct.pacs.analysis import Analyzer, operating_threshold
from lungct.pacs.dicomweb import session_from_env
from lungct.pacs.nodes import Node, parse_node
from tests.pacs.conftest import free_port

UID = "1.2.826.0.1.3680043.8.498.12345"
CREDENTIALS = ("LUNGCT_DICOMWEB_USER", "LUNGCT_DICOMWEB_PASSWORD", "LUNGCT_DICOMWEB_TOKEN")


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch):
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main([str(a) for a in argv]) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("lungct: error:"), err
    return err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ([], "results would go nowhere"),
        (["--forward", "pacs.example:104"], "is not HOST:PORT:AET"),
        (["--forward", "pacs.example:http:PACS"], "is not a port number"),
        (["--forward", "pacs.example:104:A_TITLE_FAR_TOO_LONG"], "not a valid AE title"),
        (["--out", "o", "--ae-title", "BAD\\AET"], "not a valid AE title"),
        (
            ["--out", "o", "--allow-ae", "ORTHANC", "--allow-ae", "BAD\\AET"],
            "--allow-ae 'BAD\\\\AET' is not a valid AE title",
        ),
        (["--out", "o", "--port", "70000"], "is not a TCP port"),
        (["--stow", "ftp://pacs/dicom-web"], "not a DICOMweb base URL"),
        (["--out", "o", "--tls-cert", "node.pem"], "DICOM TLS needs both --tls-cert and --tls-key"),
        (["--out", "o", "--tls-cert", "node.pem", "--tls-key", "node.key"], "--tls-cert node.pem: no such file"),
        (["--out", "o", "--tls-cert", "junk.pem", "--tls-key", "junk.pem"], "not a certificate and its private key"),
        (["--out", "o", "--tls-ca", "junk.pem"], "--tls-ca needs --tls-cert and --tls-key"),
        (["--out", "o", "--forward-tls"], "--forward-tls: there is no --forward destination"),
        (["--forward", "127.0.0.1:104:PACS", "--forward-tls", "--tls-ca", "junk.pem"], "not a CA certificate file"),
        # inf passed min=0, and a series was then never analysed (nor a result retried); the bad port makes the old
        # code fail on another message instead of listening
        (["--out", "o", "--port", "70000", "--series-timeout", "inf"], "Invalid value for '--series-timeout'"),
        (["--out", "o", "--port", "70000", "--retry-max", "inf"], "Invalid value for '--retry-max'"),
    ],
)
def test_listen_arguments(capsys, pacs_run, tmp_path, monkeypatch, extra, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert needle in _one_line_error(capsys, ["dicom-listen", "--run", pacs_run, *extra])


def test_listen_on_a_port_in_use_is_one_line(capsys, pacs_run, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["dicom-listen", "--run", str(pacs_run), "--host", "127.0.0.1", "--port", str(port),
                "--out", str(tmp_path / "out"), "--state", str(tmp_path / "state")]  # fmt: skip
        codes: list[int] = []
        worker = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
        worker.start()
        worker.join(30)
    assert codes == [1]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lungct: error: cannot listen on 127.0.0.1:") and "in use" in err[-1]


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--study", "1.2.3;drop"], {}, "is not a DICOM UID"),
        (["--url", "ftp://pacs/dicom-web"], {}, "not a DICOMweb base URL"),
        (["--url", "http://user:pw@pacs/dicom-web"], {}, "not in the URL"),
        ([], {"LUNGCT_DICOMWEB_USER": "lungct"}, "needs both"),
        ([], {"LUNGCT_DICOMWEB_TOKEN": "t", "LUNGCT_DICOMWEB_PASSWORD": "p"}, "not both"),
        (["--no-store"], {}, "results would go nowhere"),
        ([], {}, "cannot retrieve the study"),  # nothing listens on that port
        (["--wait", "inf"], {}, "Invalid value for '--wait'"),
    ],
)
def test_dicomweb_arguments(capsys, pacs_run, tmp_path, monkeypatch, argv, env, needle):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    base = ["dicomweb", "--url", f"http://127.0.0.1:{free_port()}/dicom-web", "--study", UID, "--run", pacs_run,
            "--state", tmp_path / "state"]  # fmt: skip
    # later options win in typer, so the case's own --url/--study replace the defaults above
    err = _one_line_error(capsys, [*base, *argv])
    assert needle in err
    assert "pw" not in err.replace("pw@", "") and "user:" not in err


def test_credentials_from_the_environment():
    assert session_from_env({}).auth is None and "Authorization" not in session_from_env({}).headers
    assert session_from_env({"LUNGCT_DICOMWEB_TOKEN": "abc"}).headers["Authorization"] == "Bearer abc"
    basic = session_from_env({"LUNGCT_DICOMWEB_USER": "u", "LUNGCT_DICOMWEB_PASSWORD": "p"})
    assert basic.auth == ("u", "p")


def test_nodes():
    assert parse_node("pacs.example:104:ORTHANC") == Node("pacs.example", 104, "ORTHANC")
    assert parse_node("[::1]:11112:PACS") == Node("::1", 11112, "PACS")
    for unpaired in ("[::1:104:PACS", "::1]:104:PACS", "[[::1]]:104:PACS"):
        with pytest.raises(LungCTError, match="brackets around the host"):
            parse_node(unpaired)


def test_the_operating_point_comes_from_the_run(pacs_run, tmp_path):
    run = shutil.copytree(pacs_run, tmp_path / "run")
    assert operating_threshold(run, None, "malignant") == (0.5, "default")
    (run / "operating_points.json").write_text(
        json.dumps({"positive_class": "malignant", "threshold": 0.31, "target_sensitivity": 0.95})
    )
    analyzer = Analyzer(run)
    assert analyzer.threshold == 0.31 and "operating_points.json" in analyzer.threshold_source
    assert not analyzer.loaded  # checking the run does not load the model
    assert Analyzer(run, threshold=0.7).threshold == 0.7
    with pytest.raises(LungCTError, match="not 'benign'"):
        Analyzer(run, positive_class="benign")
    with pytest.raises(LungCTError, match="between 0 and 1"):
        operating_threshold(run, 1.5, "malignant")
    (run / "operating_points.json").write_text("{")
    with pytest.raises(LungCTError, match="damaged"):
        operating_threshold(run, None, "malignant")


def test_a_malformed_instance_is_refused_without_pydicoms_warnings(recwarn):
    """The listener's log had pydicom's parser warnings (warnings.warn, which a logger level does not stop)
    above its own one-line refusal of a malformed instance."""

    import numpy as np

    from lungct.cli import main
    from lungct.cli.pacs import _quiet_libraries
    from lungct.dicom.errors import DicomError
    from lungct.pacs.accept import accept_instance
    from tests.dicom.dicom_factory import ct_dataset, to_bytes

    good = to_bytes(ct_dataset(np.zeros((16, 16))))
    main(["backbones"])  # every command, the node's included, starts in main, which quiets pydicom's warnings
    _quiet_libraries()
    with pytest.raises(DicomError):
        accept_instance(good[:300] + np.random.default_rng(0).bytes(700))  # a valid file meta, then garbage
    assert not [w for w in recwarn if "pydicom" in w.filename], [str(w.message) for w in recwarn]
