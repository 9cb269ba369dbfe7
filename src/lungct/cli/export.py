"""`lungct export`: parse, call lungct.export, print (the command is registered in lungct.cli)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import setup_logging, warn_if_unfinished


class Quantize(StrEnum):
    int8 = "int8"


class IntCalibration(StrEnum):  # lungct.export.quantize.CALIBRATION_METHODS
    percentile = "percentile"
    entropy = "entropy"
    minmax = "minmax"


def export_command(
    run: Annotated[Path, typer.Option("--run", help="run directory (from lungct train)")],
    fmt: Annotated[str, typer.Option("--format", help="export format (onnx)")] = "onnx",
    opset: Annotated[int, typer.Option("--opset", min=13, max=23, help="ONNX opset version")] = 18,
    samples: Annotated[int, typer.Option("--samples", min=2, max=256, help="inputs compared with PyTorch")] = 8,
    quantize: Annotated[
        Quantize | None, typer.Option("--quantize", help="also write RUN/model.int8.onnx, checked against float")
    ] = None,
    calibration: Annotated[
        IntCalibration, typer.Option("--int8-calibration", help="how INT8 activation ranges are found")
    ] = IntCalibration.percentile,
    calibration_images: Annotated[
        int, typer.Option("--int8-images", min=1, max=256, help="INT8 calibration slices (training part)")
    ] = 128,
    calibration_folder: Annotated[
        Path | None,
        typer.Option(
            "--int8-calibration-folder",
            exists=True,
            file_okay=False,
            help="calibrate INT8 on these images instead of the training part",
        ),
    ] = None,
    max_drop: Annotated[
        float,
        typer.Option("--int8-max-drop", min=0.0, max=1.0, help="largest balanced-accuracy drop INT8 may cost"),
    ] = 0.01,
) -> None:
    """Export a run to RUN/model.onnx (dynamic batch, calibration included) and check it against PyTorch;
    with --quantize int8, also RUN/model.int8.onnx, refused when its balanced accuracy on the test part drops
    by more than --int8-max-drop."""
    from lungct.export.onnx_export import export_onnx

    setup_logging(True)
    warn_if_unfinished(run)
    if quantize is not None:
        from lungct.export.quantize import check_quantizable

        check_quantizable(run, calibration_folder, calibration_images)
    info = export_onnx(run, fmt.lower(), opset, samples)
    diff = info["check"]["max_abs_diff"]
    cal = info["calibration"]
    typer.echo(
        f"wrote {run / info['file']} ({info['exporter']}, opset {info['opset']}, input {info['input']['shape']})"
    )
    typer.echo(
        f"max abs difference to PyTorch over {info['check']['inputs']}: probabilities {diff['probabilities']:.2e}, "
        f"features {diff['features']:.2e}"
    )
    typer.echo(f"probabilities: {cal['probabilities']}; model version {info['model_version']}")
    if quantize is None:
        return
    from lungct.export.quantize import quantize_run

    q = quantize_run(run, calibration.value, calibration_images, max_drop, calibration_folder)
    check = q["check"]
    typer.echo(
        f"wrote {run / q['file']} (INT8 QDQ, {q['quantization']['calibration_method']} calibration on "
        f"{q['quantization']['calibration_images']} slices; {len(q['quantization']['kept_float'])} nodes kept float)"
    )
    changes = ", ".join(
        f"{key} {m['float']:.3f} -> {m['int8']:.3f} (change {m['change']:+.3f}, 95% CI "
        f"[{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}])"
        for key, m in check["metrics"].items()
    )
    typer.echo(
        f"INT8 against float on the {check['part']} part ({check['n']} slices, {check['n_groups']} groups): labels "
        f"agree on {check['label_agreement']:.1%}, max probability difference "
        f"{check['max_probability_difference']:.3f}; {changes}"
    )
