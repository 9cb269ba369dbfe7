"""`lungct drift` behind the command: read the prediction log, compare with the run's reference, write the report.

Intensity statistics do not depend on the model, so every selected row counts. Embeddings, confidences and
class shares do: only rows of the run's own model version count there (unless `all_versions`), and only
rows that carry an embedding count for the embedding check.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lungct.files import output_folder
from lungct.inference.familiarity import unfamiliar_share
from lungct.monitoring.drift import (
    PSI_MODERATE,
    PSI_SIGNIFICANT,
    DriftSettings,
    compare_observations,
    decide,
)
from lungct.monitoring.drift_reference import STAT_KEYS, Observations, load_reference
from lungct.monitoring.predlog import open_existing_log
from lungct.run import RunDir, model_version


def log_observations(rows: list[dict], classes: list[str], version: str, all_versions: bool = False) -> Observations:
    """Rows of the prediction log as Observations (embeddings and probabilities only where they apply)."""
    stats = np.array([[float(r["stats"][k]) for k in STAT_KEYS] for r in rows], dtype=np.float64)
    own = [r for r in rows if all_versions or r["model_version"] == version]
    probs = [[r["probabilities"][c] for c in classes] for r in own if set(r["probabilities"]) == set(classes)]
    embs = [r["embedding"] for r in own if r.get("embedding") is not None]
    widths = Counter(len(e) for e in embs)
    width = widths.most_common(1)[0][0] if widths else 0  # one model version has one width
    kept = [e for e in embs if len(e) == width]
    return Observations(
        stats.reshape(-1, len(STAT_KEYS)),
        np.array(kept, dtype=np.float32) if kept else np.zeros((0, 0), dtype=np.float32),
        np.array(probs, dtype=np.float64).reshape(-1, len(classes)),
        classes,
        version,
    )


def drift_report(
    run_dir: str | Path,
    log_path: str | Path,
    out_dir: str | Path,
    since: str | None = None,
    last: int | None = None,
    settings: DriftSettings | None = None,
    all_versions: bool = False,
    refresh_reference: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Compare recent log rows with the run's training reference; write drift.json and drift.md into out_dir."""
    settings = settings or DriftSettings()
    run = RunDir(run_dir)
    run.require_model()
    version = model_version(run)
    log = open_existing_log(log_path)
    try:
        rows = log.read(since=since, limit=last)
    finally:
        log.close()
    out = output_folder(out_dir, "--out")  # before the reference, which may predict the whole training part
    reference = load_reference(run.path, progress, refresh_reference)
    current = log_observations(rows, reference.classes, version, all_versions)
    checks = compare_observations(reference, current, settings)
    versions = Counter(r["model_version"] for r in rows)
    novelty = [r["novelty"] for r in rows if r.get("novelty") is not None and r["model_version"] == version]
    report = {
        **decide(checks),
        "run": str(run.path),
        "model_version": version,
        "log": str(log_path),
        "rows": {
            "selected": len(rows),
            "this_model_version": versions.get(version, 0),
            "with_embedding": len(current.embeddings),
            "first": rows[0]["ts"] if rows else None,
            "last": rows[-1]["ts"] if rows else None,
            "versions_seen": dict(versions),
            "all_versions": all_versions,
        },
        "reference": {
            "n": len(reference),
            "parts": {p: int((reference.parts == p).sum()) for p in sorted(set(reference.parts.tolist()))},
            "model_version": reference.model_version,
        },
        "thresholds": {
            "psi_moderate": PSI_MODERATE,
            "psi_significant": PSI_SIGNIFICANT,
            "alpha": settings.alpha,
            "min_rows": settings.min_rows,
            "bins": settings.bins,
            "components": settings.components,
            "resamples": settings.resamples,
        },
        "checks": checks,
        # Inputs unlike the training images, where the run has a familiarity reference: reported, not a verdict (a
        # share of figures or screenshots says how the model is used, not that the data moved).
        "unfamiliar": {
            "rows_with_novelty": len(novelty),
            "share": unfamiliar_share(novelty) if novelty else None,
        },
    }
    (out / "drift.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "drift.md").write_text(drift_markdown(report), encoding="utf-8")
    return report


def _g(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def drift_markdown(report: dict[str, Any]) -> str:
    rows, ref, th = report["rows"], report["reference"], report["thresholds"]
    lines = [
        "# Drift report",
        "",
        f"**Verdict: {report['verdict']}** (retraining due: {'yes' if report['retraining_due'] else 'no'}). "
        f"{report['advice']}",
        "",
        f"- Run `{report['run']}`, model version `{report['model_version']}`.",
        "- Reference: " + ", ".join(f"{n} {p}" for p, n in ref["parts"].items()) + " images of the run's split "
        "(inputs against train, predictions against val/calib).",
        f"- Log `{report['log']}`: {rows['selected']} rows ({rows['first']} to {rows['last']}); "
        f"{rows['this_model_version']} of this model version, {rows['with_embedding']} with embeddings used.",
    ]
    unfamiliar = report["unfamiliar"]
    if unfamiliar["share"] is not None:
        lines.append(
            f"- Unlike the training images (lungct familiarity): {unfamiliar['share']:.1%} of the "
            f"{unfamiliar['rows_with_novelty']} rows of this model version that say so."
        )
    lines.append("")
    if report["reasons"]:
        lines += ["## Reasons", "", *[f"- {r}" for r in report["reasons"]], ""]
    for name, check in report["checks"].items():
        lines += [f"## {name}: {check['status']}", ""]
        parts = "/".join(check["reference_parts"])
        lines.append(
            f"{check['n_current']} recent rows against {check['n_reference']} {parts} images "
            f"({check['n_reference_groups']} groups)."
        )
        if check.get("note"):
            lines.append(check["note"] + ".")
        if check.get("matched_to_recent_class_mix"):
            lines.append("The reference was resampled to the recent predicted class mix.")
        if check.get("explained_variance") is not None:
            lines.append(f"The {check['components']} components explain {check['explained_variance']:.0%} of the "
                         "reference embeddings' variance.")  # fmt: skip
        lines.append("")
        if check["features"] and name != "class_mix":
            lines += [
                "| feature | reference median | recent median | PSI | KS D | KS D, 99% of group null "
                "| p (group null, Bonferroni) | level |",
                "|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {f['feature']} | {_g(f['reference_median'])} | {_g(f['current_median'])} | {f['psi']:.3f} | "
                f"{f['ks_statistic']:.3f} | {f['ks_null_q99']:.3f} | {f['p_adjusted']:.2g} | {f['level']} |"
                for f in check["features"]
            ]
            lines.append("")
        elif check["features"]:
            f = check["features"][0]
            shares = " | ".join(
                f"{c} {f['reference_shares'][c]:.2f} -> {f['current_shares'][c]:.2f}" for c in f["reference_shares"]
            )
            lines += [f"Predicted shares (reference -> recent): {shares}; PSI {f['psi']:.3f} (99% of group null "
                      f"{f['psi_null_q99']:.3f}), p {f['p_value']:.2g}: {f['level']}.", ""]  # fmt: skip
    lines += [
        "## How this is decided",
        "",
        f"A feature drifts when its PSI exceeds {th['psi_significant']} and its Kolmogorov-Smirnov distance is "
        f"significant (p < {th['alpha']} after Bonferroni within the check); PSI {th['psi_moderate']}-"
        f"{th['psi_significant']} with a significant distance is moderate. The p-value compares the distance with "
        f"{th['resamples']} batches of whole reference groups (patients or look-alike slices) of the same size, so "
        "ordinary patient-to-patient variation is not called drift. PSI uses "
        f"{th['bins']} quantile bins of the reference. Embeddings are compared on the reference's top "
        f"{th['components']} principal components and on the distance from them (residual). Slices of "
        "different classes differ in size, brightness and "
        "embedding, so the training reference is resampled to the recent predicted class mix before the input "
        "checks: a change of case mix alone shows in the class-mix check, not as input drift. "
        f"Fewer than {th['min_rows']} rows: not enough data. Drift in "
        "intensity, embedding or confidence means retraining is due; a change in the predicted class mix alone "
        "means watch (it may be a real change in prevalence).",
    ]
    return "\n".join(lines) + "\n"
