"""The leaderboard: one row per backbone, overlaid ROC curves, and a recommendation per deployment setting."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import RocCurveDisplay

from lungct.contracts import interval_items
from lungct.data.splits import load_split, part_counts

if TYPE_CHECKING:
    from lungct.compare.settings import CompareSettings
    from lungct.run import ModelCard, RunDir

# Test metrics shown with their 95% bootstrap interval; per-class ones are the positive class against the rest.
METRICS = ("accuracy", "balanced_accuracy", "precision", "sensitivity", "specificity", "f1", "auc")


def positive_class(card: ModelCard, metrics: dict[str, Any]) -> str | None:
    classes = card.classes
    if card.positive_class in classes:
        return card.positive_class
    return metrics.get("positive_class") or (classes[1] if len(classes) == 2 else None)


def build_row(arch: str, run: RunDir, card: ModelCard, metrics: dict[str, Any], profile: dict) -> dict[str, Any]:
    """Test metrics (with intervals), initial weights, size, cost and training time of one backbone's run."""
    ci = metrics.get("ci95") or {}
    pos = positive_class(card, metrics)
    summary = run.read_summary()
    with run.history.open(encoding="utf-8") as fh:
        epochs = sum(1 for _ in fh) - 1
    row: dict[str, Any] = {
        "arch": arch,
        "timm_name": card.timm_name,
        "pretrained": bool(card.pretrained),
        "init": f"pretrained ({Path(card.weights_source.split(':', 1)[-1]).name})"
        if card.pretrained
        else "from scratch",
        "positive_class": pos or "macro average",
        "n_test": metrics["n"],
        "input_size": card.preprocess.input_size,
        "ci95_method": metrics.get("ci95_method", "bootstrap"),
    }
    values: dict[str, tuple[Any, Any]] = {
        "accuracy": (metrics["accuracy"], ci.get("accuracy")),
        "balanced_accuracy": (metrics["balanced_accuracy"], ci.get("balanced_accuracy")),
    }
    if pos:
        c = metrics["classes"][pos]
        for name, key in (("precision", "precision"), ("sensitivity", "recall"), ("specificity", "specificity")):
            values[name] = (c[key], ci.get(f"{pos}.{key}"))
        values["f1"] = (c["f1"], ci.get(f"{pos}.f1"))
        values["auc"] = (c["auc"], ci.get(f"{pos}.auc"))
    else:  # no positive class: macro averages (intervals only where metrics.json has them)
        per = metrics["classes"].values()
        values["precision"] = (float(np.mean([c["precision"] for c in per])), None)
        values["sensitivity"] = (metrics["balanced_accuracy"], ci.get("balanced_accuracy"))
        spec = [c["specificity"] for c in per if c["specificity"] is not None]
        values["specificity"] = (float(np.mean(spec)) if spec else None, None)
        values["f1"] = (metrics["macro_f1"], ci.get("macro_f1"))
        values["auc"] = (metrics["macro_auc"], ci.get("macro_auc"))
    for name, (value, interval) in values.items():
        row[name] = value
        row[f"{name}_ci95"] = interval
    row.update(
        ece=metrics.get("ece"),
        params=profile["params"],
        mflops=round(profile["mflops"], 1),
        latency_ms=round(profile["latency_ms"]["median"], 2),
        latency_p90_ms=round(profile["latency_ms"]["p90"], 2),
        train_seconds=summary.train_seconds,
        epochs=epochs,
        run_dir=str(run.path),
    )
    return row


def _acc_key(r: dict[str, Any]) -> tuple:
    return (r["accuracy"], r["auc"] or 0.0, -r["params"])


def _scratch(r: dict[str, Any]) -> str:
    return " (trained from scratch)" if not r["pretrained"] else ""


def _rec(setting: str, r: dict[str, Any], why: str) -> dict[str, Any]:
    return {"setting": setting, "arch": r["arch"], "from_scratch": not r["pretrained"], "why": why}


def _ci(r: dict[str, Any], name: str) -> str:
    i = r.get(f"{name}_ci95")
    return f" (95% CI {i[0]:.3f}–{i[1]:.3f})" if i else ""


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=_acc_key, reverse=True)


def _correct(row: dict[str, Any]) -> dict[str, bool]:
    with (Path(row["run_dir"]) / "eval" / "predictions.csv").open(encoding="utf-8") as fh:
        return {t["path"]: t["label"] == t["predicted"] for t in csv.DictReader(fh)}


def accuracy_gap(best: dict[str, Any], runner: dict[str, Any], split_file: Path, n_resamples: int) -> dict | None:
    """Accuracy of `best` minus `runner` on the same test images, with a paired bootstrap interval by group.

    Overlapping per-model intervals do not show that two models are alike; resampling both models' results on
    the same images does (lungct.evaluation.bootstrap.paired_delta_ci).
    """
    from lungct.evaluation.bootstrap import paired_delta_ci

    a, b = _correct(best), _correct(runner)
    if a.keys() != b.keys():
        return None
    paths = sorted(a)
    group_of = {i.path: i.group for i in load_split(split_file)}
    ca = np.array([a[p] for p in paths], dtype=float)
    cb = np.array([b[p] for p in paths], dtype=float)
    groups = [group_of.get(p, p) for p in paths]
    gap = paired_delta_ci(lambda idx: float(ca[idx].mean() - cb[idx].mean()), len(paths), groups, n_resamples)
    return {"runner_up": runner["arch"], **gap}


def recommend(
    rows: list[dict[str, Any]], settings: CompareSettings, gap: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Best accuracy; best accuracy within a CPU latency budget; smallest with acceptable accuracy.

    `gap` (accuracy_gap of the best against the runner-up) says whether the best is really ahead.
    """
    best = ranked(rows)[0]
    why = f"highest test accuracy {best['accuracy']:.3f}{_ci(best, 'accuracy')}"
    if gap:
        lo, hi = gap["ci95"]
        verdict = "a real lead on this test part" if lo > 0 else "this test part cannot tell them apart"
        why += (
            f"; {gap['delta']:+.3f} over {gap['runner_up']} (paired group bootstrap 95% CI {lo:+.3f} to {hi:+.3f}: "
            f"{verdict})"
        )
    recs = [_rec("best accuracy", best, why)]

    budget = settings.latency_budget_ms
    fast = [r for r in rows if r["latency_ms"] <= budget]
    threads = f"{settings.threads} thread{'s' if settings.threads > 1 else ''}"
    if fast:
        pick = max(fast, key=_acc_key)
        why = (
            f"most accurate ({pick['accuracy']:.3f}) of the {len(fast)} within {budget:g} ms per image on a CPU "
            f"({pick['latency_ms']:.1f} ms with {threads})"
        )
    else:
        pick = min(rows, key=lambda r: r["latency_ms"])
        why = f"none meets {budget:g} ms per image with {threads}; this is the fastest ({pick['latency_ms']:.1f} ms)"
    recs.append(_rec("CPU-only clinic PC", pick, why))

    floor = best["accuracy"] - settings.accuracy_tolerance
    ok = [r for r in rows if r["accuracy"] >= floor]
    small = min(ok, key=lambda r: (r["mflops"], r["params"]))
    why = (
        f"fewest MFLOPs ({small['mflops']:.0f}) and {small['params'] / 1e6:.2f} M parameters among those within "
        f"{settings.accuracy_tolerance:.2f} of the best accuracy ({small['accuracy']:.3f})"
    )
    smaller = [r for r in rows if r not in ok and (r["mflops"] < small["mflops"] or r["params"] < small["params"])]
    if smaller:
        names = ", ".join(f"{r['arch']} ({r['params'] / 1e6:.2f} M, {r['mflops']:.0f} MFLOPs)" for r in smaller)
        why += f"; smaller but below {floor:.3f} accuracy: {names}"
    recs.append(_rec("mobile / smallest", small, why))
    return recs


def plot_roc_overlay(rows: list[dict[str, Any]], out: Path) -> bool:
    """One ROC curve per backbone for the positive class against the rest, from each run's predictions.csv."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    drawn = 0
    for r in rows:
        pos = r["positive_class"]
        preds = Path(r["run_dir"]) / "eval" / "predictions.csv"
        if pos == "macro average" or not preds.is_file():
            continue
        with preds.open(encoding="utf-8") as fh:
            table = list(csv.DictReader(fh))
        y = np.array([t["label"] == pos for t in table])
        if not 0 < y.sum() < len(y):
            continue
        score = np.array([float(t[f"p_{pos}"]) for t in table])
        RocCurveDisplay.from_predictions(y, score, name=f"{r['arch']}{_scratch(r)}", ax=ax)
        drawn += 1
    if drawn:
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"ROC on the shared test part: {rows[0]['positive_class']} vs rest")
        ax.set_xlabel("false positive rate (1 - specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        fig.tight_layout()
        fig.savefig(out, dpi=100)
    plt.close(fig)
    return bool(drawn)


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _with_ci(r: dict[str, Any], name: str) -> str:
    i = r.get(f"{name}_ci95")
    return _fmt(r[name]) + (f" ({i[0]:.2f}–{i[1]:.2f})" if i else "")


def leaderboard_markdown(result: dict[str, Any]) -> str:
    rows, env = result["rows"], result["environment"]
    pos = rows[0]["positive_class"]
    split = ", ".join(f"{p} {n}" for p, n in result["split"].items())
    header = [
        "backbone",
        "initial weights",
        "accuracy",
        "balanced acc.",
        "precision",
        "sensitivity",
        "specificity",
        "F1",
        "AUC",
        "params (M)",
        "MFLOPs",
        "CPU ms/image",
        "train s",
    ]
    lines = [
        "# Backbone leaderboard",
        "",
        f"All backbones trained and tested on one {result['split_mode']} split ({split} images). Test metrics with "
        f"95% intervals ({result['ci95_method']}); precision, sensitivity, specificity, F1 and AUC are for "
        f"`{pos}` against the rest.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in ranked(rows):
        cells = [
            r["arch"],
            r["init"],
            *[_with_ci(r, m) for m in METRICS],
            f"{r['params'] / 1e6:.2f}",
            f"{r['mflops']:.0f}",
            f"{r['latency_ms']:.1f}",
            _fmt(r["train_seconds"], 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Recommendations", ""]
    for rec in result["recommendations"]:
        scratch = " (trained from scratch)" if rec["from_scratch"] else ""
        lines.append(f"- **{rec['setting']}**: `{rec['arch']}`{scratch}: {rec['why']}.")
    scratch = [r["arch"] for r in rows if not r["pretrained"]]
    lines += [
        "",
        "## Notes",
        "",
        f"- Trained from scratch (random initial weights): {', '.join(scratch) if scratch else 'none'}. "
        "They are not transfer-learned models.",
        f"- MFLOPs per image at {', '.join(map(str, env['input_sizes']))} px count multiply-adds twice "
        "(torch FlopCounterMode).",
        f"- CPU latency: median forward pass of one image (no decoding), {env['threads']} torch thread(s), "
        f"on {env['cpu']}; a shared machine, so compare backbones within this table only.",
        f"- Training time: wall seconds of each run on this machine, {result['epochs_note']}.",
    ]
    if result.get("roc"):
        lines.append(f"- ROC curves: `{Path(result['roc']).name}`.")
    return "\n".join(lines) + "\n"


def write_reports(
    rows: list[dict[str, Any]],
    settings: CompareSettings,
    split_file: Path,
    split_mode: str,
    environment: dict[str, Any],
) -> dict[str, Any]:
    out = settings.out
    counts = part_counts(load_split(split_file))
    result: dict[str, Any] = {
        "archs": settings.archs,
        "split_file": str(split_file),
        "split_mode": split_mode,
        "split": {p: sum(c.values()) for p, c in counts.items() if c},
        "ci95_method": " / ".join(sorted({r["ci95_method"] for r in rows})),
        "environment": environment,
        "latency_budget_ms": settings.latency_budget_ms,
        "accuracy_tolerance": settings.accuracy_tolerance,
        "epochs_note": "epochs run: " + ", ".join(f"{r['arch']} {r['epochs']}" for r in rows),
        "rows": rows,
    }
    order = ranked(rows)
    gap = accuracy_gap(order[0], order[1], split_file, settings.n_bootstrap) if len(order) > 1 else None
    result["accuracy_gap"] = gap
    result["recommendations"] = recommend(rows, settings, gap)
    roc = out / "roc.png"
    result["roc"] = str(roc) if plot_roc_overlay(rows, roc) else None
    with (out / "leaderboard.csv").open("w", newline="", encoding="utf-8") as fh:
        flat = [_csv_row(r) for r in rows]
        writer = csv.DictWriter(fh, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    (out / "leaderboard.md").write_text(leaderboard_markdown(result), encoding="utf-8")
    return result


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """A leaderboard row for CSV: each `<metric>_ci95` pair as two columns (lungct.contracts.interval_items)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        out.update(interval_items(k.removesuffix("_ci95"), v) if k.endswith("_ci95") else {k: v})
    return out
