"""`lungct compare`: parse, call lungct.compare.core.compare inside an MLflow run, print the leaderboard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import NoTrack, Quiet, TrackingUri, setup_logging
from lungct.files import output_folder


def compare_command(
    config: Annotated[Path, typer.Option("--config", exists=True, dir_okay=False, help="experiment YAML")],
    archs: Annotated[str, typer.Option("--archs", help="comma-separated backbones, e.g. mobilenetv2_100,small_cnn")],
    out: Annotated[Path | None, typer.Option("--out", help="folder (default runs/compare/<config name>)")] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="pretrained weights for the config's own backbone only")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", help="torch threads for the CPU latency measurement")] = 1,
    latency_budget_ms: Annotated[
        float, typer.Option("--latency-budget-ms", help="per-image budget for the CPU-only recommendation")
    ] = 50.0,
    accuracy_tolerance: Annotated[
        float, typer.Option("--accuracy-tolerance", help="'acceptable' accuracy for mobile: this close to the best")
    ] = 0.05,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="bootstrap resamples for the 95% intervals")] = 1000,
    tracking_uri: TrackingUri = None,
    no_track: NoTrack = False,
    quiet: Quiet = False,
) -> None:
    """Train and test several backbones on one group split; leaderboard, ROC overlay and recommendations."""
    from lungct.compare.core import compare
    from lungct.compare.settings import CompareSettings
    from lungct.config import load_config
    from lungct.data.sources import check_sources
    from lungct.tracking import tracked_run

    setup_logging(quiet)
    cfg = load_config(config)
    check_sources(cfg.data)
    if weights is not None and weights not in ("hub",):
        weights = str(Path(weights).expanduser().resolve())
    settings = CompareSettings(
        archs=archs.split(","),
        out=out or Path("runs") / "compare" / cfg.name,
        weights=weights,
        threads=threads,
        latency_budget_ms=latency_budget_ms,
        accuracy_tolerance=accuracy_tolerance,
        n_bootstrap=bootstrap,
        progress=not quiet,
        track=not no_track,
    )
    output_folder(settings.out, "--out")  # before tracking
    name = f"compare-{settings.out.resolve().name}"
    params = {"compare.archs": ",".join(settings.archs), "compare.threads": threads}
    with tracked_run("compare", name, params, cfg, tracking_uri, enabled=not no_track) as tracker:
        result = compare(cfg, settings)
        for row in result["rows"]:
            tracker.log_metrics({f"{row['arch']}.{k}": row[k] for k in ("accuracy", "auc", "latency_ms", "mflops")})
        for name in ("leaderboard.md", "leaderboard.json", "leaderboard.csv", "roc.png"):
            tracker.log_artifact(settings.out / name, "compare")
    for row in sorted(result["rows"], key=lambda r: r["accuracy"], reverse=True):
        typer.echo(
            f"{row['arch']:24s} {row['init']:40s} accuracy={row['accuracy']:.3f} "
            f"{row['latency_ms']:.1f} ms/image {row['mflops']:.0f} MFLOPs"
        )
    for rec in result["recommendations"]:
        typer.echo(f"{rec['setting']}: {rec['arch']}")
    typer.echo(f"leaderboard written to {settings.out}/leaderboard.md")
