"""`lungct retrain`: a challenger from feedback, and whether it may replace the champion (docs/feedback.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import NoTrack, Quiet, TrackingUri, setup_logging
from lungct.errors import LungCTError
from lungct.files import output_folder
from lungct.run import RunDir


def retrain_command(
    champion: Annotated[Path, typer.Option("--champion", help="the run in service")],
    feedback: Annotated[Path, typer.Option("--feedback", help="lungct feedback export's folder (or its manifest.csv)")],
    out: Annotated[Path, typer.Option("--out", help="run directory for the challenger")],
    margin: Annotated[
        float, typer.Option("--margin", max=0.0, help="non-inferiority margin of the paired interval (-0.01)")
    ] = -0.01,
    tracking_uri: TrackingUri = None,
    no_track: NoTrack = False,
    quiet: Quiet = False,
) -> None:
    """Train a challenger with the champion's config on its data plus the feedback; promote only if it is not
    worse on balanced accuracy and malignant recall (paired group bootstrap) and better on one. Writes
    OUT/promotion.json."""
    from lungct.retrain.challenger import PROMOTION_FILE, retrain, retrain_inputs
    from lungct.tracking import log_training_run, run_config, tracked_run

    setup_logging(quiet)
    inputs = retrain_inputs(champion, feedback)  # before tracking: bad inputs leave no MLflow run behind
    if RunDir(out).read_summary().complete:  # the trainer's own refusal names --overwrite, which retrain has not
        raise LungCTError(f"--out {out} already holds a finished run; give the challenger a new folder")
    output_folder(out, "--out")  # before tracking, like the inputs
    name = out.resolve().name
    with tracked_run(
        "retrain", name, config=run_config(champion), tracking_uri=tracking_uri, enabled=not no_track
    ) as t:
        result = retrain(inputs, out, margin, progress=not quiet)
        log_training_run(t, out)
        t.log_metrics(
            {
                f"gate.{key}.{field}": value
                for key, m in result["comparison"]["metrics"].items()
                for field, value in (("change", m["change"]), ("ci95_low", m["ci95"][0]))
            }
            | {"gate.promote": float(result["promote"])}
        )
        t.set_tags(
            {"lungct.promote": str(result["promote"]).lower(), "lungct.champion": result["champion"]["model_version"]}
        )
        t.log_artifact(out / PROMOTION_FILE)
    verdict = "PROMOTE" if result["promote"] else "REFUSED"
    versions = result["challenger"]["model_version"], result["champion"]["model_version"]
    typer.echo(f"{verdict}: challenger {versions[0]} against champion {versions[1]}")
    for reason in result["reasons"]:
        typer.echo(f"  {reason}")
    typer.echo(f"written: {out / 'promotion.json'}")
