"""CLI commands of the honest-evaluation concern (cv, calibrate, threshold): parse, call the API, print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import ConfigFile, NoTrack, Quiet, TrackingUri, setup_logging, warn_if_unfinished
from lungct.contracts import CalibrationMethod
from lungct.files import output_folder


def cv_command(
    folds: Annotated[int, typer.Option("--folds", help="number of folds K")],
    out: Annotated[Path, typer.Option("--out", help="folder for fold runs, cv.json, cv.csv and cv.md")],
    config: ConfigFile = None,
    within: Annotated[
        Path | None,
        typer.Option(
            "--within",
            exists=True,
            file_okay=False,
            help="a trained run: fold over its images except its test part, with its config unless --config is given "
            "(for `lungct calibrate --from-cv`)",
        ),
    ] = None,
    tracking_uri: TrackingUri = None,
    no_track: NoTrack = False,
    quiet: Quiet = False,
) -> None:
    """Stratified group k-fold cross-validation: mean and spread of every metric over K folds."""
    from lungct.config import load_config
    from lungct.crossval.folds import cross_validate, plan_folds
    from lungct.data.sources import check_sources
    from lungct.run import RunDir
    from lungct.tracking import log_cv, tracked_run

    setup_logging(quiet)
    if config is None and within is not None:
        config = RunDir(within).config
    cfg = load_config(config)
    if within is None:  # --within takes its images from that run
        check_sources(cfg.data)
    plan = plan_folds(cfg, folds, progress=not quiet, within=within)  # bad --folds fails before tracking
    output_folder(out, "--out")  # and so does a bad --out
    name = f"cv-{out.resolve().name}"
    params = {"folds": folds, "within": str(within) if within else None}
    with tracked_run("cv", name, params, cfg, tracking_uri, enabled=not no_track) as tracker:
        result = cross_validate(cfg, folds, out, progress=not quiet, within=within, plan=plan)
        log_cv(tracker, out, result, cfg.train.early_stopping.monitor)
    s = result["summary"]
    for row in result["per_fold"]:
        typer.echo(
            f"fold {row['fold']}: n={row['n_test']} accuracy={row['accuracy']:.3f} "
            f"balanced_accuracy={row['balanced_accuracy']:.3f} macro_auc={row['macro_auc'] or float('nan'):.3f}"
        )
    typer.echo(
        f"mean ± sd: accuracy={s['accuracy']['mean']:.3f} ± {s['accuracy']['std']:.3f} "
        f"balanced_accuracy={s['balanced_accuracy']['mean']:.3f} ± {s['balanced_accuracy']['std']:.3f}"
    )
    cal = result["calibration"]
    ece = cal["change"]["ece"]
    typer.echo(
        f"temperature fitted on each fold's validation part: test ECE lower in {cal['folds_with_lower_ece']} of "
        f"{folds} folds; mean {cal['mean_before']['ece']:.3f} -> {cal['mean_after']['ece']:.3f} (change "
        f"{ece['delta']:+.3f}, 95% paired group-bootstrap interval [{ece['ci95'][0]:+.3f}, {ece['ci95'][1]:+.3f}])"
    )
    typer.echo(f"report written to {out}/cv.md ({result['seconds']:.0f} s)")


def familiarity_command(
    run: Annotated[Path, typer.Option("--run", exists=True, file_okay=False, help="run directory")],
    percentile: Annotated[
        float,
        typer.Option(
            "--percentile",
            help="the threshold: this percentile of the validation part's distances (an ensemble of "
            "linear-probe folds without one: of held-out groups)",
        ),
    ] = 99.0,
    quiet: Quiet = False,
) -> None:
    """Fit the run's familiarity reference: predictions then say whether an input is like the training images."""
    from lungct.evaluation.familiarity import familiarity_run

    setup_logging(quiet)
    warn_if_unfinished(run)
    report = familiarity_run(run, percentile, progress=not quiet)
    shares = ", ".join(f"{part} {report['flagged'][part]:.1%} of {n}" for part, n in report["n"].items())
    typer.echo(f"unfamiliar at the {percentile:g}th validation percentile: {shares}")
    typer.echo(f"threshold from {report['threshold_from']}")
    typer.echo(f"familiarity reference saved to {report['file']}")


def calibrate_command(
    run: Annotated[Path, typer.Option("--run", exists=True, file_okay=False, help="run directory")],
    method: Annotated[
        CalibrationMethod, typer.Option("--method", help="calibration map")
    ] = CalibrationMethod.temperature,
    from_cv: Annotated[
        Path | None,
        typer.Option(
            "--from-cv",
            exists=True,
            file_okay=False,
            help="fit on the out-of-fold predictions of `lungct cv --within RUN` instead of one held-out part",
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Fit calibration on the run's calibration part (or validation) and save it in the run (predict uses it)."""
    from lungct.evaluation.calibrate import calibrate_run

    setup_logging(quiet)
    warn_if_unfinished(run)
    report = calibrate_run(run, method.value, progress=not quiet, from_cv=from_cv)
    if method == "temperature":
        images = "" if report["cross_fitted"] else " images"
        fitted = f"fitted on {report['n_fit']} {report['fitted_on']}{images}"
        typer.echo(f"temperature {report['temperature']:.3f} ({fitted})")
    for part, r in report["parts"].items():
        b, a = r["before"], r["after"]
        typer.echo(
            f"{part}: ECE {b['ece']:.3f} -> {a['ece']:.3f}, MCE {b['mce']:.3f} -> {a['mce']:.3f}, "
            f"Brier {b['brier']:.3f} -> {a['brier']:.3f}, NLL {b['nll']:.3f} -> {a['nll']:.3f}"
        )
    for key, c in report.get("test_change", {}).items():
        typer.echo(
            f"test {key.upper()} change {c['delta']:+.4f}, 95% paired group-bootstrap interval "
            f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"
        )
    for part, png in report["diagrams"].items():
        typer.echo(f"reliability diagram ({part}): {png}")
    typer.echo(f"calibration saved to {Path(run) / 'calibration.json'}")


def threshold_command(
    run: Annotated[Path, typer.Option("--run", exists=True, file_okay=False, help="run directory")],
    out: Annotated[Path, typer.Option("--out", help="folder for operating_points.json and the coverage plot")],
    positive: Annotated[str | None, typer.Option("--positive", help="positive class (default: malignant)")] = None,
    sensitivity: Annotated[float, typer.Option("--sensitivity", help="target sensitivity on validation")] = 0.99,
    refer_below: Annotated[
        float | None,
        typer.Option("--refer-below", min=0.0, max=1.0, help="refer images whose top confidence is below this"),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Pick the threshold reaching a target sensitivity on validation; report it on test, with a refer band."""
    from lungct.evaluation.operating_points import operating_points

    setup_logging(quiet)
    r = operating_points(run, out, positive, sensitivity, refer_below, progress=not quiet)

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    t = r["test"]
    fit_sens = f(r[r["chosen_on"]]["sensitivity"])
    typer.echo(f"{r['positive_class']}: threshold {r['threshold']:.4f} ({r['chosen_on']} sensitivity {fit_sens})")
    typer.echo(
        f"test: sensitivity {f(t['sensitivity'])} specificity {f(t['specificity'])} ppv {f(t['ppv'])} "
        f"npv {f(t['npv'])} (tp {t['tp']} fp {t['fp']} tn {t['tn']} fn {t['fn']})"
    )
    if "refer_band_test" in r:
        b = r["refer_band_test"]
        typer.echo(
            f"refer below {b['refer_below']}: {b['referred']} referred, coverage {f(b['coverage'])}, "
            f"accuracy on the rest {f(b['accuracy_on_decided'])}"
        )
    typer.echo(f"report written to {out}/operating_points.json")
