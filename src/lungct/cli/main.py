"""The command line: a thin shell that parses arguments, calls lungct's functions and prints.

Every problem a user can fix ends as one line on stderr and a non-zero exit code, never a traceback.
Library packages never import this package; the import-linter contract in pyproject.toml holds that.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer

from lungct.cli import app as app_cmd
from lungct.cli import (
    audit,
    compare,
    core,
    dicom,
    drift,
    ensemble,
    evaluation,
    explain,
    export,
    feedback,
    launch,
    pacs,
    pipeline,
    promote,
    retrain,
    serve,
    tune,
)
from lungct.cli.options import quiet_dicom_warnings
from lungct.errors import LungCTError, missing_extra

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Lung CT classification: train, evaluate, predict.",
)

# Every command, in the order `lungct --help` lists them.
COMMANDS = {
    "train": core.train_command,
    "evaluate": core.evaluate_command,
    "predict": core.predict_command,
    "backbones": core.backbones_command,
    "cv": evaluation.cv_command,
    "audit": audit.audit_command,
    "predict-series": dicom.predict_series_command,
    "dicom-listen": pacs.dicom_listen_command,
    "dicomweb": pacs.dicomweb_command,
    "explain": explain.explain_command,
    "calibrate": evaluation.calibrate_command,
    "familiarity": evaluation.familiarity_command,
    "threshold": evaluation.threshold_command,
    "app": app_cmd.app_command,
    "split": pipeline.split_command,
    "tune": tune.tune_command,
    "compare": compare.compare_command,
    "drift": drift.drift_command,
    "export": export.export_command,
    "serve": serve.serve_command,
    "ensemble": ensemble.ensemble_command,
    "retrain": retrain.retrain_command,
    "promote": promote.promote_command,
}
INTERRUPTED = "lungct: interrupted; run the same command again to resume"
STOPPED = "lungct: stopped"
# Ctrl-C is how these are meant to stop: there is nothing to resume
SERVERS = frozenset({"serve", "app", "dicom-listen"})


class Interrupted(Exception):
    """Ctrl-C inside a command, carried past typer: typer turns a KeyboardInterrupt into a silent exit 130 (even
    with standalone_mode=False), so main() could never say what happened. An Exception, not a BaseException, so
    that typer and click let it through untouched."""


def _caused_by_interrupt(exc: BaseException | None) -> bool:
    """Whether `exc` is a KeyboardInterrupt or was raised while one was handled: an extension module being
    imported turns Ctrl-C into "ImportError: initialization failed", and a writer interrupted mid-file may
    fail again in its clean-up."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _reporting_interrupts(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` with Ctrl-C raised as Interrupted (functools.wraps keeps the signature typer reads)."""
    if getattr(function, "_reports_interrupts", False):
        return function

    @functools.wraps(function)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (KeyboardInterrupt, Exception) as exc:
            if _caused_by_interrupt(exc):
                raise Interrupted from exc
            raise

    command._reports_interrupts = True  # type: ignore[attr-defined]
    return command


def _report_interrupts(typer_app: typer.Typer) -> None:
    """Wrap every command of `typer_app` and of the groups added to it (lungct feedback ...)."""
    for info in typer_app.registered_commands:
        if info.callback is not None:
            info.callback = _reporting_interrupts(info.callback)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _report_interrupts(group.typer_instance)


for _name, _function in COMMANDS.items():
    app.command(_name)(_function)
app.add_typer(feedback.app, name="feedback")
_report_interrupts(app)


def main(argv: list[str] | None = None) -> int:
    launch.ARGV[:] = sys.argv[1:] if argv is None else list(argv)
    quiet_dicom_warnings()  # every command that reads DICOM (predict, explain, serve, the DICOM node, ...)
    try:
        result = app(args=argv, standalone_mode=False)
    except typer.TyperException as exc:  # typer's usage errors: unknown option, missing path, bad value
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(str(exc))
            return 0
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        typer.echo(f"lungct: error: {' '.join(message.split())}", err=True)
        return getattr(exc, "exit_code", 2)
    except (typer.Abort, KeyboardInterrupt, Interrupted):
        if launch.reports_interrupts():
            typer.echo(STOPPED if _command_name(argv) in SERVERS else INTERRUPTED, err=True)
        return 130
    except LungCTError as exc:
        typer.echo(f"lungct: error: {exc}", err=True)
        return 1
    except OSError as exc:  # a file system problem the commands did not foresee: name the path, no traceback
        if exc.filename is None:
            raise
        both = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else exc.filename
        typer.echo(f"lungct: error: {both}: {exc.strerror or exc}", err=True)
        return 1
    except ModuleNotFoundError as exc:  # an optional extra is not installed: name it, in one line
        missing = missing_extra(exc, f"`lungct {_command_name(argv)}`")
        if missing is None:
            raise
        typer.echo(f"lungct: error: {missing}", err=True)
        return 1
    if result == 130 and launch.reports_interrupts():  # typer's exit for a Ctrl-C outside any command (parsing)
        typer.echo(INTERRUPTED, err=True)
    return result if isinstance(result, int) else 0


def _command_name(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return next((a for a in args if a in COMMANDS), "command")


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
