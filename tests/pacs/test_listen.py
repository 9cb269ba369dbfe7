"""`lungct dicom-listen` between two real DICOM nodes: Orthanc sends a CT study to lungct (C-STORE), lungct
returns an SR and a Grad-CAM Secondary Capture to Orthanc (C-STORE), and the SR says what `lungct
predict-series` says about the same files (acceptance 1); the SR and the overlay validate (acceptance 4);
results survive an outage of Orthanc and a restart of lungct, and arrive once (acceptance 3). Refused and
malformed instances get failure statuses while the association goes on.

The tests share one Orthanc and one listener (a listener process imports PyTorch: seconds), in file order."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pydicom
import pynetdicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    MRImageStorage,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from lungct.run import RunDir, model_version
from tests.dicom.dicom_factory import MALFORMED, ct_dataset, malformed_dicom, write
from tests.pacs.conftest import (
    Listener,
    Orthanc,
    assert_no_identifiers,
    client_tls,
    dciodvfy_errors,
    echo,
    free_port,
    make_pki,
    needs_orthanc,
    predict_series_lines,
    sop_id,
    sr_values,
    wait_for,
)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, pacs_run):
    """Orthanc and a lungct listener forwarding to it; series are analysed on SIGUSR1 (the explicit trigger)."""
    root = tmp_path_factory.mktemp("listen")
    port = free_port()
    orthanc = Orthanc(root / "orthanc", port).start()
    args = ["--forward", orthanc.node, "--series-timeout", "600", "--out", str(root / "out"),
            "--prediction-log", str(root / "predictions.db"), "--retry-initial", "0.2", "--retry-max", "1",
            "--allow-ae", "ORTHANC", "--allow-ae", "TESTSCU"]  # fmt: skip
    nodes = SimpleNamespace(orthanc=orthanc, listener=None, root=root, port=port, args=args)
    try:
        nodes.listener = Listener(pacs_run, port, root / "state", root / "listener.log", *args)
        yield nodes
    finally:
        if nodes.listener is not None:
            assert nodes.listener.stop() == 0, nodes.listener.log.read_text()[-2000:]
        orthanc.stop()


# pydicom warns while it reads the deliberately malformed instances before the listener refuses them; the
# refusal (status and comment) and the open association, not the warning, are what this test checks.
@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")
@needs_orthanc
def test_echo_refusals_and_malformed_instances_keep_the_association(nodes, tmp_path, monkeypatch):
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)  # file bytes sent undecoded
    assert echo(nodes.port, "NOTLUNGCT") is None  # an association addressed to another AE title is rejected
    assert echo(nodes.port, calling="INTRUDER") is None  # a sender missing from --allow-ae is rejected
    assert echo(nodes.port) == 0x0000  # one that is listed gets in
    wait_for(lambda: "calling AE title 'INTRUDER'" in nodes.listener.log.read_text(), 10, "the refusal in the log")
    ae = AE(ae_title="TESTSCU")
    for sop_class in (CTImageStorage, MRImageStorage, Verification):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", nodes.port, ae_title="LUNGCT")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        mr = ct_dataset(np.zeros((16, 16)), modality="MR")
        mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
        assert assoc.send_c_store(mr).Status == 0x0122  # SOP class not supported
        truncated = ct_dataset(np.zeros((16, 16)))
        truncated.PixelData = truncated.PixelData[:100]
        cases = {kind: malformed_dicom(kind) for kind in MALFORMED}
        cases["pixels"] = None
        for kind, data in cases.items():
            path = tmp_path / f"{kind}.dcm"
            path.write_bytes(data) if data is not None else write(truncated, path)
            status = assoc.send_c_store(path)  # the file's own bytes, as a broken modality would send them
            assert status.Status == 0xC000, kind
            assert MALFORMED.get(kind, "pixel data cannot be decoded") in status.ErrorComment, kind
            assert assoc.is_established, f"the association ended after the {kind} instance"
        good = ct_dataset(np.full((16, 16), -600.0))
        assert assoc.send_c_store(good).Status == 0x0000
    finally:
        assoc.release()
    spooled = list((nodes.root / "state" / "spool" / "incoming").rglob("*.dcm"))
    assert len(spooled) == 1 and pydicom.dcmread(spooled[0]).SOPInstanceUID == good.SOPInstanceUID


@needs_orthanc
def test_lossless_compressed_ct_is_taken_as_it_comes(nodes, tmp_path):
    """CT as PACS often keep it: JPEG Lossless (transcoded by Orthanc's own codec) and RLE Lossless (pydicom's
    encoder) are negotiated, stored and decoded to HU on arrival; lossy JPEG is not negotiated."""
    source = write(ct_dataset(np.full((16, 16), -600.0)), tmp_path / "plain.dcm")
    instance = json.loads(nodes.orthanc.request("POST", "/instances", source.read_bytes(), "application/dicom"))["ID"]
    body = json.dumps({"Transcode": str(JPEGLosslessSV1), "Force": True}).encode()
    jpeg_bytes = nodes.orthanc.request("POST", f"/instances/{instance}/modify", body, "application/json")
    jpeg = pydicom.dcmread(io.BytesIO(jpeg_bytes))
    rle = ct_dataset(np.full((16, 16), -300.0))
    rle.compress(RLELossless)
    assert jpeg.file_meta.TransferSyntaxUID == JPEGLosslessSV1 and rle.file_meta.TransferSyntaxUID == RLELossless
    ae = AE(ae_title="TESTSCU")
    for syntax in (JPEGLosslessSV1, RLELossless, JPEGBaseline8Bit):
        ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", nodes.port, ae_title="LUNGCT")
    assert assoc.is_established
    try:
        accepted = {str(c.transfer_syntax[0]) for c in assoc.accepted_contexts}
        assert accepted == {JPEGLosslessSV1, RLELossless}  # no lossy JPEG
        assert assoc.send_c_store(jpeg).Status == 0x0000
        assert assoc.send_c_store(rle).Status == 0x0000
    finally:
        assoc.release()
    spooled = {pydicom.dcmread(p).SOPInstanceUID: p for p in (nodes.root / "state" / "spool").rglob("*.dcm")}
    for ds in (jpeg, rle):
        kept = pydicom.dcmread(spooled[ds.SOPInstanceUID])
        assert kept.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID  # spooled as it came
        assert np.array_equal(kept.pixel_array, ds.pixel_array)


@needs_orthanc
def test_study_from_orthanc_comes_back_as_an_sr_and_an_overlay(nodes, pacs_run, ct_series, capsys, tmp_path):
    orthanc = nodes.orthanc
    study_id = orthanc.upload(ct_series)
    orthanc.send_study_to_lungct(study_id)  # Orthanc as the sender: C-STORE to lungct
    nodes.listener.signal(signal.SIGUSR1)  # the explicit trigger: analyse what is spooled now
    found = wait_for(
        lambda: (m := orthanc.instances_by_modality(study_id)).get("SR") and m.get("OT") and m,
        60, "the SR and the overlay in Orthanc's copy of the study", interval=0.3,
    )  # fmt: skip
    assert len(found["CT"]) == len(ct_series) and len(found["SR"]) == 1 and len(found["OT"]) == 1
    sr_path = orthanc.download(found["SR"][0], tmp_path / "sr.dcm")
    sc_path = orthanc.download(found["OT"][0], tmp_path / "sc.dcm")

    # acceptance 1: the SR's numbers are predict-series' on the same files
    slices, study = predict_series_lines(capsys, pacs_run, ct_series[0].parent)
    values = sr_values(sr_path)
    assert values["score"] == pytest.approx(study["score"], abs=1e-6)
    assert values["threshold"] == pytest.approx(0.5)  # the run has no operating_points.json
    assert values["decision"] == study["label"]
    by_id = {line["id"]: line for line in slices}
    assert [sop_id(uid) for uid in values["slices"]] == [d["id"] for d in study["driving_slices"]]
    for uid, probabilities in values["slices"].items():
        assert probabilities == pytest.approx(by_id[sop_id(uid)]["probabilities"], abs=1e-6)

    # the results belong to the source study, in new series, made by lungct and this model version
    source = pydicom.dcmread(ct_series[0])
    sr, sc = pydicom.dcmread(sr_path), pydicom.dcmread(sc_path)
    version = model_version(RunDir(pacs_run))
    for ds in (sr, sc):
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientName == source.PatientName and ds.PatientID == source.PatientID
        assert ds.PatientBirthDate == source.PatientBirthDate and ds.AccessionNumber == source.AccessionNumber
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.Manufacturer == "lungct" and ds.ManufacturerModelName == version
    assert sr.SeriesInstanceUID != sc.SeriesInstanceUID
    evidence = {r.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence[0].ReferencedSOPSequence}  # fmt: skip
    assert evidence == {pydicom.dcmread(p).SOPInstanceUID for p in ct_series}
    driving_uid = next(iter(values["slices"]))
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"] and "NOT FOR DIAGNOSTIC USE" in sc.ImageComments
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == driving_uid
    assert sc.pixel_array.shape == (64, 64, 3) and sc.PhotometricInterpretation == "RGB"

    # acceptance 4: dciodvfy finds no error; highdicom read the SR above, and reads the overlay back too
    for path in (sr_path, sc_path):
        assert dciodvfy_errors(path) == [], path.name
    overlay = hd.imread(sc_path)
    assert overlay.SOPInstanceUID == sc.SOPInstanceUID and overlay.get_frame(1).shape == (64, 64, 3)

    # --out holds the same objects
    written = {pydicom.dcmread(p).SOPInstanceUID for p in (nodes.root / "out").rglob("*.dcm")}
    assert {sr.SOPInstanceUID, sc.SOPInstanceUID} <= written

    # nothing identifying in the listener's log or the prediction log, which has a row per slice
    log_text = nodes.listener.log.read_text()
    assert "score" in log_text and "delivered" in log_text
    assert_no_identifiers(log_text, "the listener's log")
    db = nodes.root / "predictions.db"
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT source, probabilities FROM predictions").fetchall()
    assert len(rows) >= len(ct_series) and {r[0] for r in rows} == {"pacs"}
    for f in db.parent.glob("predictions.db*"):
        assert_no_identifiers(f.read_bytes().decode("latin-1"), f.name)


def _queued(outbox: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (outbox / "items").glob("*.json")]


def _journal(outbox: Path) -> list[str]:
    journal = outbox / "sent.jsonl"
    return [json.loads(line)["key"] for line in journal.read_text().splitlines()] if journal.exists() else []


@needs_orthanc
def test_results_survive_a_pacs_outage_and_a_restart(nodes, pacs_run, ct_series, tmp_path):
    orthanc, state = nodes.orthanc, nodes.root / "state"
    outbox = state / "outbox"
    wait_for(lambda: not _queued(outbox), 30, "earlier results to be delivered")
    study_id = orthanc.upload(ct_series)
    orthanc.send_study_to_lungct(study_id)  # returns when lungct has every instance
    orthanc.stop()  # Orthanc goes down (killed) before lungct has analysed the series
    nodes.listener.signal(signal.SIGUSR1)
    queued = wait_for(
        lambda: len(q := _queued(outbox)) == 2 and min(i["attempts"] for i in q) >= 2 and q,
        60, "the SR and the overlay queued, with failed attempts", interval=0.2,
    )  # fmt: skip
    assert nodes.listener.stop() == 0  # a clean stop (SIGTERM) leaves the queue on disk
    keys = {item["key"] for item in queued}
    assert {item["key"] for item in _queued(outbox)} == keys and not keys & set(_journal(outbox))
    assert not list((state / "spool").rglob("*.dcm"))  # analysed: nothing is left to analyse again
    first_log = nodes.listener.log.read_text()
    assert "not delivered" in first_log

    orthanc.start()  # the same storage folder and ports
    nodes.listener = Listener(pacs_run, nodes.port, state, nodes.root / "listener2.log", *nodes.args)
    found = wait_for(
        lambda: not _queued(outbox) and (m := orthanc.instances_by_modality(study_id)).get("SR") and m,
        60, "the queued results in Orthanc after both restarts", interval=0.2,
    )  # fmt: skip
    assert len(found["SR"]) == 1 and len(found["OT"]) == 1 and len(found["CT"]) == len(ct_series)
    journal = _journal(outbox)
    assert sorted(k for k in journal if k in keys) == sorted(keys)  # each delivered exactly once
    sr = pydicom.dcmread(orthanc.download(found["SR"][0], tmp_path / "sr.dcm"))
    assert sr.StudyInstanceUID == pydicom.dcmread(ct_series[0]).StudyInstanceUID
    second_log = nodes.listener.log.read_text()
    assert "delivered 2 results" in second_log
    assert_no_identifiers(first_log + second_log, "the listener's logs")


def test_dicom_tls_takes_only_senders_with_a_certificate_from_the_ca(pacs_run, tmp_path):
    """--tls-cert/--tls-key/--tls-ca: plain TCP, TLS without a certificate and a certificate the CA did not sign
    get no association; a sender with the CA's certificate stores a CT instance over TLS."""
    pki = make_pki(tmp_path / "pki")
    port, state = free_port(), tmp_path / "state"
    args = ["--out", str(tmp_path / "out"), "--series-timeout", "600", "--tls-cert", str(pki["server"]),
            "--tls-key", str(pki["server_key"]), "--tls-ca", str(pki["ca"])]  # fmt: skip
    listener = Listener(pacs_run, port, state, tmp_path / "listener.log", *args, tls_args=client_tls(pki))
    try:
        assert echo(port) is None
        assert echo(port, tls_args=client_tls(pki, None)) is None
        assert echo(port, tls_args=client_tls(pki, "rogue")) is None
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="LUNGCT", tls_args=client_tls(pki))
        assert assoc.is_established
        try:
            good = ct_dataset(np.full((16, 16), -600.0))
            assert assoc.send_c_store(good).Status == 0x0000
        finally:
            assoc.release()
        assert "(DICOM TLS)" in listener.log.read_text()
    finally:
        assert listener.stop() == 0, listener.log.read_text()[-2000:]
    spooled = list((state / "spool" / "incoming").rglob("*.dcm"))
    assert len(spooled) == 1 and pydicom.dcmread(spooled[0]).SOPInstanceUID == good.SOPInstanceUID


@needs_orthanc
def test_a_study_comes_in_and_its_results_go_out_over_dicom_tls(pacs_run, ct_series, tmp_path):
    """Orthanc with DICOM TLS only (it refuses plain TCP) and a certificate from the test CA sends a study to lungct
    over TLS; lungct (--forward-tls) stores the SR and the overlay back over TLS."""
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", port, tls=pki).start()
    args = ["--forward", orthanc.node, "--forward-tls", "--series-timeout", "600", "--tls-cert", str(pki["server"]),
            "--tls-key", str(pki["server_key"]), "--tls-ca", str(pki["ca"]), "--allow-ae", "ORTHANC",
            "--allow-ae", "TESTSCU", "--retry-initial", "0.2", "--retry-max", "1"]  # fmt: skip
    listener = None
    try:
        assert echo(orthanc.dicom_port, "ORTHANC") is None  # this Orthanc speaks TLS only
        listener = Listener(
            pacs_run, port, tmp_path / "state", tmp_path / "listener.log", *args, tls_args=client_tls(pki)
        )
        study_id = orthanc.upload(ct_series)
        orthanc.send_study_to_lungct(study_id)
        listener.signal(signal.SIGUSR1)
        found = wait_for(
            lambda: (m := orthanc.instances_by_modality(study_id)).get("SR") and m.get("OT") and m,
            60, "the SR and the overlay in Orthanc over TLS", interval=0.3,
        )  # fmt: skip
        assert len(found["CT"]) == len(ct_series) and len(found["SR"]) == 1 and len(found["OT"]) == 1
    finally:
        if listener is not None:
            assert listener.stop() == 0, listener.log.read_text()[-2000:]
        orthanc.stop()
