"""`lungct export`: parse, call lungct.export, print (the command is registered in lungct.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import setup_logging


def export_command(
    run: Annotated[Path, typer.Option("--run", help="run directory (from lungct train)")],
    fmt: Annotated[str, typer.Option("--format", help="export format (onnx)")] = "onnx",
    opset: Annotated[int, typer.Option("--opset", min=13, max=23, help="ONNX opset version")] = 18,
    samples: Annotated[int, typer.Option("--samples", min=2, max=256, help="inputs compared with PyTorch")] = 8,
) -> None:
    """Export a run to RUN/model.onnx (dynamic batch, calibration included) and check it against PyTorch."""
    from lungct.export.onnx_export import export_onnx

    setup_logging(True)
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
