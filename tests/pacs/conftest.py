"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, on free loopback ports, with a
temporary storage folder and a generated configuration; a tiny trained run; CT series made from real
IQ-OTH/NCCD slices carrying patient tags; and `lungct dicom-listen` as a real process."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from pydicom.uid import generate_uid

from lungct.files import natural_key
from lungct.training import train
from tests.conftest import IQ_OTH, needs_shared, tiny_config, write_dataset
from tests.dicom.dicom_factory import ct_dataset, hu_from_grey, write

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "lungct", "s3cret-pw"
LUNGCT = Path(sys.executable).with_name("lungct")  # the console script of this environment

# Patient, study and staff values that must never reach a log or the prediction log (the results carry the
# patient and study modules, as they belong to the study).
PATIENT = {
    "PatientName": "Fakename^Orla^M",
    "PatientID": "MRN-4417092",
    "PatientBirthDate": "19490722",
    "PatientSex": "F",
    "AccessionNumber": "ACC-903311",
    "ReferringPhysicianName": "Quill^Harriet",
    "InstitutionName": "Hillside General",
}
SECRETS = ["Fakename", "Orla", "MRN-4417092", "4417092", "19490722", "ACC-903311", "Quill", "Hillside"]


def needs_orthanc(test):
    reason = f"Orthanc is not installed ({ORTHANC}); `make setup` installs Debian's orthanc and orthanc-dicomweb"
    plugin = "Orthanc's DICOMweb plugin is not installed; `make setup` installs Debian's orthanc-dicomweb"
    test = pytest.mark.skipif(not os.access(ORTHANC, os.X_OK), reason=reason)(test)
    return needs_shared(pytest.mark.skipif(not Path(DICOMWEB_PLUGIN).is_file(), reason=plugin)(test))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, interval: float = 0.1):
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Orthanc:
    """One Orthanc server: DICOM (AET ORTHANC) and HTTP with basic authentication, DICOMweb at /dicom-web."""

    def __init__(self, root: Path, lungct_port: int, tls: dict[str, Path] | None = None):
        """`tls` (make_pki's files): DICOM TLS both ways, with the "client" certificate as Orthanc's own, the CA
        trusted, and a certificate required of lungct when it sends."""
        self.root = root
        self.http_port, self.dicom_port = free_port(), free_port()
        self.config = root / "orthanc.json"
        storage = root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            json.dumps(
                {
                    "Name": "lungct-test",
                    "StorageDirectory": str(storage),
                    "IndexDirectory": str(storage),
                    "StorageCompression": False,
                    "HttpPort": self.http_port,
                    "DicomPort": self.dicom_port,
                    "DicomAet": "ORTHANC",
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": True,
                    "RegisteredUsers": {USER: PASSWORD},
                    "DicomModalities": {
                        "lungct": {"AET": "LUNGCT", "Host": "127.0.0.1", "Port": lungct_port, "UseDicomTls": bool(tls)}
                    },
                    **(
                        {
                            "DicomTlsEnabled": True,
                            "DicomTlsCertificate": str(tls["client"]),
                            "DicomTlsPrivateKey": str(tls["client_key"]),
                            "DicomTlsTrustedCertificates": str(tls["ca"]),
                            "DicomTlsRemoteCertificateRequired": True,
                        }
                        if tls
                        else {}
                    ),
                    "DicomScuTimeout": 10,
                    "Plugins": [DICOMWEB_PLUGIN],
                    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                    "SaveJobs": False,
                    "HttpThreadsCount": 8,
                }
            )
        )
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def node(self) -> str:
        return f"127.0.0.1:{self.dicom_port}:ORTHANC"

    def start(self) -> Orthanc:
        log = (self.root / "orthanc.log").open("ab")
        self.process = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._up, 20, "Orthanc to answer")
        return self

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """Kill it: an outage as abrupt as a crash (and no 3 s graceful shutdown in every test)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(20)
        self.process = None

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        req = urllib.request.Request(self.url + path, data=body, method=method)
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        if content_type:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.read()

    def get(self, path: str):
        return json.loads(self.request("GET", path))

    def upload(self, files: list[Path]) -> str:
        """POST each file to /instances; the study's Orthanc id."""
        ids = {
            json.loads(self.request("POST", "/instances", f.read_bytes(), "application/dicom"))["ParentStudy"]
            for f in files
        }
        assert len(ids) == 1
        return ids.pop()

    def send_study_to_lungct(self, study_id: str) -> None:
        """Orthanc as the sender: C-STORE of the whole study to the 'lungct' modality (returns when done)."""
        self.request("POST", "/modalities/lungct/store", json.dumps({"Resources": [study_id]}).encode())

    def instances_by_modality(self, study_id: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for series in self.get(f"/studies/{study_id}/series"):
            out.setdefault(series["MainDicomTags"].get("Modality", ""), []).extend(series["Instances"])
        return out

    def download(self, instance_id: str, path: Path) -> Path:
        path.write_bytes(self.request("GET", f"/instances/{instance_id}/file"))
        return path


@pytest.fixture
def orthanc_factory(tmp_path):
    """orthanc_factory(lungct_port) -> a started Orthanc; every one is stopped at the end of the test."""
    made: list[Orthanc] = []

    def make(lungct_port: int) -> Orthanc:
        made.append(Orthanc(tmp_path / f"orthanc{len(made)}", lungct_port).start())
        return made[-1]

    yield make
    for o in made:
        o.stop()


@pytest.fixture(scope="session")
def pacs_run(tmp_path_factory, fake_pretrained) -> Path:
    """A tiny trained run: MobileNetV2's head on the fixed fake-pretrained backbone, one epoch, about five seconds.
    64 px, not the usual 32: the last block is then 2x2, so Grad-CAM has a map to draw (at 32 px it is 1x1)."""
    base = tmp_path_factory.mktemp("pacsrun")
    cfg = tiny_config(write_dataset(base / "data", per_class=6), fake_pretrained)
    cfg.train.phase1.epochs, cfg.train.phase2.epochs = 1, 0
    cfg.model.input_size = 64
    return train(cfg, base / "run", progress=False).path


def real_slices(n: int) -> list[Path]:
    """n real IQ-OTH/NCCD slices, the first of each class folder in turn (malignant, normal, benign)."""
    folders = [
        sorted((IQ_OTH / f).glob("*.jpg"), key=lambda p: natural_key(p.name))
        for f in ("Malignant cases", "Normal cases", "Bengin cases")
    ]
    return [folders[i % 3][i // 3] for i in range(n)]


def write_ct_series(folder: Path, n: int = 4, size: int = 64) -> list[Path]:
    """A CT series made from real IQ-OTH/NCCD slices (shrunk to size x size), with patient and study tags."""
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for i, jpg in enumerate(real_slices(n)):
        img = Image.open(jpg).convert("L").resize((size, size), Image.BILINEAR)
        ds = ct_dataset(hu_from_grey(img), position=(0.0, 0.0, 2.5 * i), instance=i + 1, series_uid=series_uid)
        for key, value in PATIENT.items():
            setattr(ds, key, value)
        ds.StudyInstanceUID = study_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240105", "101500", "ST-1"
        ds.SeriesNumber, ds.BodyPartExamined, ds.PixelSpacing = 2, "CHEST", [0.7, 0.7]
        paths.append(write(ds, folder / f"slice{i:02d}.dcm"))
    return paths


@pytest.fixture
def ct_series(tmp_path) -> list[Path]:
    return write_ct_series(tmp_path / "source")


class Listener:
    """`lungct dicom-listen` as a real process; its stderr goes to a file the test reads."""

    def __init__(self, run: Path, port: int, state: Path, log: Path, *args: str, tls_args=None):
        self.port, self.log, self.tls_args = port, log, tls_args
        argv = [
            str(LUNGCT),
            "dicom-listen",
            "--run",
            str(run),
            "--ae-title",
            "LUNGCT",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--state",
            str(state),
            *args,
        ]
        env = {**os.environ, "LUNGCT_TRACKING": "off", "PYTHONUNBUFFERED": "1"}
        with log.open("ab") as fh:
            self.process = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
        wait_for(self._ready, 90, "lungct dicom-listen to answer C-ECHO", interval=0.3)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"lungct dicom-listen exited: {self.log.read_text()[-3000:]}")
        return echo(self.port, tls_args=self.tls_args) == 0x0000

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise
        return self.process.returncode


def echo(port: int, ae_title: str = "LUNGCT", calling: str = "TESTSCU", tls_args=None) -> int | None:
    """C-ECHO status from the listener, or None when no association could be made. `tls_args`: pynetdicom's
    (ssl.SSLContext, server hostname) for DICOM TLS."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title, tls_args=tls_args)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return getattr(status, "Status", None)
    finally:
        assoc.release()


def predict_series_lines(capsys, run: Path, folder: Path) -> tuple[list[dict], dict]:
    """`lungct predict-series` on the same files, through the real command: (slice lines, study line)."""
    from lungct.cli import main

    capsys.readouterr()
    code = main(["predict-series", "--run", str(run), str(folder)])
    out, err = capsys.readouterr()
    assert code == 0, err
    *slices, study = [json.loads(line) for line in out.splitlines()]
    return slices, study


def sr_values(path: Path) -> dict:
    """The SR read back with highdicom: score, threshold, decision and, per referenced slice, probabilities."""
    import highdicom as hd

    sr = hd.sr.srread(path)
    groups = sr.content.get_image_measurement_groups()
    study_group = next(g for g in groups if g.tracking_identifier == "lungct study result")
    values = {
        "score": study_group.get_measurements(name=study_group.get_measurements()[0].name)[0].value,
        "threshold": next(m.value for m in study_group.get_measurements() if m.name.value == "122411"),
        "decision": study_group.get_qualitative_evaluations()[0].value.meaning,
        "slices": {},
    }
    for g in groups:
        if g is study_group:
            continue
        uid = g.source_images[0].referenced_sop_instance_uid
        values["slices"][uid] = {m.name.meaning.removeprefix("Probability of "): m.value for m in g.get_measurements()}
    return values


def sop_id(uid: str) -> str:
    """How `lungct predict-series` names a slice."""
    import hashlib

    return "sop-" + hashlib.sha256(uid.encode()).hexdigest()[:16]


def assert_no_identifiers(text: str, where: str) -> None:
    for value in SECRETS:
        assert value.lower() not in text.lower(), f"{value!r} leaked into {where}"


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines of dicom3tools' validator (its warnings are advice: DICOMDIR needs, private schemes)."""
    assert shutil.which("dciodvfy"), "dciodvfy is missing: `make setup` installs Debian's dicom3tools"
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def make_pki(folder: Path) -> dict[str, Path]:
    """A test CA and two node certificates it signs, "server" (lungct) and "client" (the sender, or Orthanc), each
    for 127.0.0.1 and good for both TLS roles; and a self-signed "rogue" certificate. PEM files in `folder`, keyed
    ca, server, server_key, client, client_key, rogue, rogue_key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def issue(common: str, key, issuer: str, issuer_key, ca: bool = False) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
            builder = builder.add_extension(usage, critical=True).add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        else:
            roles = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            builder = (
                builder.add_extension(x509.ExtendedKeyUsage(roles), critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False)
            )
        return builder.sign(issuer_key, hashes.SHA256())

    def save(label: str, cert: x509.Certificate, key=None) -> None:
        paths[label] = folder / f"{label}.pem"
        paths[label].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            paths[f"{label}_key"] = folder / f"{label}.key"
            raw = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            paths[f"{label}_key"].write_bytes(raw)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    save("ca", issue("lungct test CA", ca_key, "lungct test CA", ca_key, ca=True))
    for label in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        save(label, issue(label, key, "lungct test CA", ca_key), key)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    save("rogue", issue("rogue", rogue_key, "rogue", rogue_key), rogue_key)
    return paths


def client_tls(pki: dict[str, Path], who: str | None = "client") -> tuple:
    """pynetdicom's tls_args for a sender that trusts the test CA and presents `who`'s certificate (or none)."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
    if who is not None:
        context.load_cert_chain(str(pki[who]), str(pki[f"{who}_key"]))
    return context, "127.0.0.1"
