"""Train and evaluate the default config, and the previous defaults beside it, under a group split and under a
random split of the same images.

Writes benchmarks/results/train_iqothnccd.json: per config and split mode, wall time and peak resident memory
of the train+evaluate process, and the test metrics. The gap between the two modes is the leakage that a
random image-level split hides (slices of one patient on both sides).

    .venv/bin/python benchmarks/train_iqothnccd.py [--configs A.yaml,B.yaml] [--modes group,random]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece", "n")


def worker(config: str, mode: str, out: Path) -> None:
    """Runs in a child process so that its peak memory is its own."""
    from lungct.config import load_config
    from lungct.evaluation.evaluate import evaluate
    from lungct.training import train

    cfg = load_config(config)
    cfg.split.mode = mode
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: never resume an earlier, interrupted one
    t0 = time.perf_counter()
    run = train(cfg, out, progress=False, overwrite=True)
    t1 = time.perf_counter()
    metrics = evaluate(run.path, run.path / "eval", progress=False)
    t2 = time.perf_counter()
    result = {
        "split": mode,
        "train_seconds": round(t1 - t0, 1),
        "evaluate_seconds": round(t2 - t1, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "counts": json.loads(run.summary.read_text())["counts"],
        "test_metrics": {k: metrics[k] for k in HEADLINE},
        "per_class": metrics["classes"],
        "epochs_run": sum(1 for _ in run.history.open()) - 1,
    }
    (out / "benchmark.json").write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        default=",".join(
            str(ROOT / "configs" / c)
            for c in ("iqothnccd.yaml", "model_quality/lpft_ema_224.yaml", "model_quality/default_224.yaml")
        ),
        help="comma-separated: the default, then the previous defaults (LP-FT + EMA; the first recipe, 4 + 4 epochs)",
    )
    parser.add_argument("--config", help=argparse.SUPPRESS)  # the worker's one config
    parser.add_argument("--modes", default="group,random")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "train_iqothnccd.json"))
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.config, args.worker[0], Path(args.worker[1]))
        return
    results = []
    load_before = [round(x, 2) for x in os.getloadavg()]
    configs = [c for c in args.configs.split(",") if c]
    for config in configs:
        for mode in args.modes.split(","):
            out = Path(args.runs) / Path(config).stem / mode
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--config", config, "--worker", mode, str(out)], check=True)
            result = json.loads((out / "benchmark.json").read_text())
            result["config"] = os.path.relpath(config, ROOT)
            result["wall_seconds"] = round(time.perf_counter() - t0, 1)
            results.append(result)
            print(
                f"{Path(config).stem} {mode:6s} wall {result['wall_seconds']:.0f}s  peak {result['peak_rss_mb']:.0f} MB"
                f"  test {json.dumps(result['test_metrics'])}",
                flush=True,
            )
    report = {
        "configs": [os.path.relpath(c, ROOT) for c in configs],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        # other work on the same cores stretches every time figure: the load average (1, 5, 15 min) says how much
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
