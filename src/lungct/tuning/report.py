"""What a study leaves behind: results.csv / results.md, Optuna's plots, best_config.yaml and tune.json."""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
import yaml
from optuna.trial import TrialState

from lungct.config import ExperimentConfig
from lungct.data.splits import load_split, part_counts
from lungct.errors import one_line
from lungct.tuning.space import apply_params

if TYPE_CHECKING:
    from lungct.tuning.settings import TuneSettings

log = logging.getLogger("lungct")


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: best first, then pruned, then failed; parameters as columns."""
    names = sorted({p for t in study.trials for p in t.params})
    rows = []
    for t in study.trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            continue
        run_dir = t.user_attrs.get("run_dir", "")
        row = {
            "trial": t.number,
            "state": t.state.name.lower(),
            "value": t.value if t.state == TrialState.COMPLETE else None,
            **{n: t.params.get(n) for n in names},
            "epochs": t.user_attrs.get("epochs"),
            "kept_epoch": t.user_attrs.get("kept_step"),
            "seconds": t.user_attrs.get("seconds"),
            "run_dir": run_dir if run_dir and Path(run_dir).is_dir() else "(removed)",
        }
        rows.append(row)
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else 1.0
    order = {"complete": 0, "pruned": 1, "fail": 2}
    rows.sort(key=lambda r: (order[r["state"]], -sign * (r["value"] or 0.0), r["trial"]))
    return rows


def _cell(v: Any, col: str = "") -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and col == "seconds":
        return f"{v:.0f}"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], metric: str) -> str:
    cols = [c for c in rows[0] if c != "run_dir"] if rows else []
    header = [metric if c == "value" else c for c in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r[c], c) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def importances(study: optuna.Study) -> tuple[dict[str, float] | None, str]:
    """fANOVA parameter importances, or None with the reason (fewer than two completed trials, no variation)."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(done) < 2:
        return None, f"{len(done)} completed trial(s): importances need at least two"
    if len({t.value for t in done}) < 2:
        return None, "every completed trial scored the same: no variation to attribute"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)), ""
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        return None, f"importances could not be computed: {one_line(exc)}"


def write_plots(study: optuna.Study, out: Path, importance_ok: bool) -> dict[str, str]:
    """Optimisation history, intermediate values (pruning) and importances as PNG; skipped where undefined."""
    from optuna.visualization import matplotlib as ovm

    written = {}
    plots = [("history.png", ovm.plot_optimization_history), ("intermediate.png", ovm.plot_intermediate_values)]
    if importance_ok:
        plots.append(("importance.png", lambda s: ovm.plot_param_importances(s, evaluator=_evaluator())))
    for name, plot in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(7, 4.5)
            fig.tight_layout()
            fig.savefig(out / name, dpi=100)
            plt.close(fig)
            written[name] = str(out / name)
        except (ValueError, RuntimeError) as exc:
            log.warning("tune: %s not drawn: %s", name, one_line(exc))
            plt.close("all")
    return written


def _evaluator() -> optuna.importance.FanovaImportanceEvaluator:
    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def write_best_config(cfg: ExperimentConfig, best: optuna.trial.FrozenTrial, metric: str, path: Path) -> None:
    """The base config with the best trial's settings: `lungct train --config best_config.yaml` trains it."""
    tuned = apply_params(cfg, best.params)
    tuned.name = f"{cfg.name}-tuned"
    header = (
        f"# Best trial {best.number} of the study in {path.parent} "
        f"({metric} {best.value:.4f} on the validation part).\n"
        f"# Parameters: {best.params}\n"
        f"# Train it: lungct train --config {path} --out runs/{tuned.name}\n"
    )
    path.write_text(header + yaml.safe_dump(tuned.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


def write_reports(
    study: optuna.Study, cfg: ExperimentConfig, settings: TuneSettings, split_file: Path
) -> dict[str, Any]:
    out = settings.study_dir
    rows = trial_rows(study)
    states = [r["state"] for r in rows]
    if rows:
        with (out / "results.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    imp, imp_note = importances(study)
    plots = write_plots(study, out, imp is not None)
    best = study.best_trial if states.count("complete") else None
    if best is not None:
        write_best_config(cfg, best, settings.metric, out / "best_config.yaml")
    counts = part_counts(load_split(split_file))
    result = {
        "study": study.study_name,
        "study_dir": str(out),
        "storage": str(out / "study.db"),
        "sampler": settings.sampler,
        "metric": settings.metric,
        "direction": study.direction.name.lower(),
        "pruning": settings.prune,
        "split_mode": cfg.split.mode,
        "split": {p: sum(c.values()) for p, c in counts.items() if c},
        "n_complete": states.count("complete"),
        "n_pruned": states.count("pruned"),
        "n_failed": states.count("fail"),
        "best_trial": best.number if best else None,
        "best_value": best.value if best else None,
        "best_params": best.params if best else None,
        "best_config": str(out / "best_config.yaml") if best else None,
        "importances": imp,
        "importances_note": imp_note,
        "plots": plots,
        "trials": rows,
    }
    (out / "results.md").write_text(results_markdown(result), encoding="utf-8")
    return result


def results_markdown(result: dict[str, Any]) -> str:
    split = ", ".join(f"{p} {n}" for p, n in result["split"].items())
    lines = [
        f"# Tuning study `{result['study']}`",
        "",
        f"Sampler {result['sampler']}, objective: {result['metric']} ({result['direction']}) at the epoch "
        f"whose weights the run keeps, on the validation part of one fixed {result['split_mode']} split "
        f"({split} images); the test part was not used.",
        f"{result['n_complete']} completed, {result['n_pruned']} pruned "
        f"({'MedianPruner' if result['pruning'] else 'pruning off'}), {result['n_failed']} failed.",
        "",
    ]
    if result["trials"]:
        lines += [markdown_table(result["trials"], result["metric"]), ""]
    if result["best_trial"] is not None:
        lines += [
            f"Best: trial {result['best_trial']}, {result['metric']} {result['best_value']:.4f}; "
            f"config in `{Path(result['best_config']).name}`.",
            "",
        ]
    if result["importances"]:
        lines += ["Parameter importances (fANOVA):", ""]
        lines += [f"- {k}: {v:.3f}" for k, v in result["importances"].items()]
    else:
        lines.append(f"Parameter importances: not computed ({result['importances_note']}).")
    return "\n".join(lines) + "\n"
