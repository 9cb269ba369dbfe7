"""Clinicians' feedback, from the prediction log to a dataset that `lungct train` reads like any other source.

The log (lungct.monitoring.predlog) records feedback beside the prediction it corrects. Slices are kept for
retraining only where the server runs with --keep-feedback-images: then every predicted slice is saved as a
de-identified PNG (decoded pixels only) named by the upload's sha256, and feedback points at it. Without it,
feedback is recorded for monitoring only (how often, and where, the model was corrected) and there is
nothing to train on.

`export_feedback` writes OUT/<label>/<sha256>.png for every prediction's latest feedback whose slice was kept,
and OUT/manifest.csv (path,label,group) in which each upload is its own group, so that the same slice can
never land in two parts of a split. Train on OUT (class folders) or OUT/manifest.csv (with the groups).
"""

from __future__ import annotations

import csv
import re
import shutil
from collections import Counter
from pathlib import Path

from lungct.errors import LungCTError
from lungct.files import output_folder
from lungct.monitoring.predlog import open_existing_log

MANIFEST = "manifest.csv"


def export_feedback(log_path: str | Path, out: str | Path) -> dict:
    """Write the feedback dataset; returns counts. LungCTError when the log has no feedback with a kept slice."""
    log = open_existing_log(log_path)
    try:
        rows = log.read_feedback()
    finally:
        log.close()
    if not rows:
        raise LungCTError(f"{log_path} holds no feedback (POST /v1/feedback, or the app's 'correct this')")
    kept = [r for r in rows if r["image"] and Path(r["image"]).is_file()]
    if not kept:
        raise LungCTError(
            f"{log_path} holds {len(rows)} feedback records but no kept slices: feedback was recorded for "
            "monitoring only (serve with --keep-feedback-images DIR to keep slices for retraining)"
        )
    previous = _previous_export(Path(out))
    out = output_folder(out, "--out")
    lines = []
    for r in kept:
        target = out / r["label"] / f"{r['sha256']}.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(r["image"], target)
        lines.append({"path": str(target.relative_to(out)), "label": r["label"], "group": f"upload-{r['sha256'][:16]}"})
    unique = list({line["path"]: line for line in lines}.values())  # one slice uploaded twice: once
    for stale in previous - {line["path"] for line in unique}:  # a slice relabelled since: not under its old label
        (out / stale).unlink(missing_ok=True)
        if (out / stale).parent.is_dir() and not any((out / stale).parent.iterdir()):
            (out / stale).parent.rmdir()  # an empty class folder would read as a class without slices
    with (out / MANIFEST).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "group"])
        writer.writeheader()
        writer.writerows(unique)
    return {
        "feedback": len(rows),
        "exported": len(unique),
        "monitoring_only": len(rows) - len(kept),
        "corrections": sum(r["label"] != r["predicted"] for r in rows),
        "per_class": dict(Counter(line["label"] for line in unique)),
        "manifest": str(out / MANIFEST),
    }


EXPORTED = re.compile(r"[^/\\]+/[0-9a-f]{64}\.png")  # LABEL/<sha256>.png, as export_feedback names slices


def _previous_export(out: Path) -> set[str]:
    """The slices an earlier export wrote into `out` (its manifest's paths); empty for a new or empty folder.

    A re-export replaces it: a slice relabelled since then would otherwise stay under its old label as well, and a
    folder source would train on both. Any other non-empty folder is refused: the export replaced a manifest.csv
    it did not write and mixed its class folders into whatever was there (a dataset).
    """
    if not out.is_dir() or not any(out.iterdir()):
        return set()
    try:
        with (out / MANIFEST).open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            paths = [row.get("path") or "" for row in reader]
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error):
        paths, columns = [], []
    if columns != ["path", "label", "group"] or not all(EXPORTED.fullmatch(p) for p in paths):
        raise LungCTError(
            f"--out {out} holds files but no feedback export (no {MANIFEST} of one); choose a new or empty folder"
        )
    return set(paths)
