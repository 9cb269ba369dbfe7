"""How the Streamlit page is started: its file, its upload limit and the `streamlit run` command line."""

from __future__ import annotations

import sys
from pathlib import Path

from lungct.errors import LungCTError

PAGE = Path(__file__).with_name("page.py")
MAX_UPLOAD_MB = 50  # Streamlit refuses larger uploads itself; lungct.app.analysis checks the same limit


def streamlit_argv(
    run: Path,
    log: Path,
    port: int = 8501,
    address: str = "127.0.0.1",
    eval_dir: Path | None = None,
    hu_offset: int | None = None,
) -> list[str]:
    """The `streamlit run` command line; everything after `--` is read by the page itself."""
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(PAGE),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.address",
        address,
        "--server.port",
        str(port),
        "--server.maxUploadSize",
        str(MAX_UPLOAD_MB),
        "--server.fileWatcherType",
        "none",
        "--client.showErrorDetails",
        "none",
        "--client.toolbarMode",
        "viewer",
        "--",
        "--run",
        str(run),
        "--log",
        str(log),
    ]
    if eval_dir is not None:
        argv += ["--eval", str(eval_dir)]
    if hu_offset is not None:
        argv += ["--hu-offset", str(hu_offset)]
    return argv


def check_run(run: Path, log: Path) -> None:
    """Fail at startup, as one line, for a missing or unfinished run or a log that cannot be written."""
    from lungct.monitoring.predlog import PredictionLog
    from lungct.run import RunDir

    if not run.exists():
        raise LungCTError(f"run directory not found: {run}")
    if not run.is_dir():
        raise LungCTError(f"not a run directory: {run}")
    RunDir(run).card()  # a damaged model.json is named here, not by a page that fails to load in the browser
    PredictionLog(log).close()
