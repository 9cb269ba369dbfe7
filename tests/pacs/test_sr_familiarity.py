"""With a familiarity reference in the run, the DICOM node's SR says how unlike the training images each driving
slice is, and how many of the series' slices are, as `lungct predict-series` does (no PACS needed here)."""

from __future__ import annotations

import shutil

import highdicom as hd
import pytest

from lungct.cli import main
from lungct.pacs.analysis import Analyzer
from tests.pacs.conftest import dciodvfy_errors, predict_series_lines, sop_id, write_ct_series


def test_the_sr_carries_novelty_per_driving_slice_and_the_unfamiliar_count(pacs_run, tmp_path, capsys):
    run = shutil.copytree(pacs_run, tmp_path / "run")
    assert main(["familiarity", "--run", str(run), "-q"]) == 0
    folder = write_ct_series(tmp_path / "series")[0].parent
    sr_path = tmp_path / "sr.dcm"
    Analyzer(run, aggregate="topk", top_k=2).analyse(folder).objects[0].save_as(sr_path)
    slices, study = predict_series_lines(capsys, run, folder)

    groups = hd.sr.srread(sr_path).content.get_image_measurement_groups()
    study_group = next(g for g in groups if g.tracking_identifier == "lungct study result")
    unfamiliar = [m.value for m in study_group.get_measurements() if m.name.value == "UNFAMILIAR"]
    assert unfamiliar == [len(study["unfamiliar_slices"])]
    by_id = {line["id"]: line for line in slices}
    driving = [g for g in groups if g is not study_group]
    assert len(driving) == 2
    for group in driving:
        novelty = [m.value for m in group.get_measurements() if m.name.value == "NOVELTY"]
        line = by_id[sop_id(group.source_images[0].referenced_sop_instance_uid)]
        assert novelty == [pytest.approx(line["novelty"], abs=1e-3)]
    assert dciodvfy_errors(sr_path) == []
