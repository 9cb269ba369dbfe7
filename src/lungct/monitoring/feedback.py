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
    out = output_folder(out, "--out")
    lines = []
    for r in kept:
        target = out / r["label"] / f"{r['sha256']}.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(r["image"], target)
        lines.append({"path": str(target.relative_to(out)), "label": r["label"], "group": f"upload-{r['sha256'][:16]}"})
    unique = list({line["path"]: line for line in lines}.values())  # one slice uploaded twice: once
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
