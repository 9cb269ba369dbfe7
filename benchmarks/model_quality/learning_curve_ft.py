"""Learning curve of the fine-tuned default on the same 5 group folds: is benign recall data-bound?

`learning_curve.py` answered the question for the frozen probe (flat from 8 to 16 benign groups). This asks it of
the recipe that ships: `lungct cv`'s own folds of a config are drawn (lungct.crossval.plan_folds), then in each fold
only a random share of each class's *training* groups is kept (seeded by fold, share and draw); the validation part,
which early stopping and the EMA checkpoint read, and the test part are unchanged, so every point is scored on the
same test patients as the full row. Each (share, draw) is an ordinary resumable `lungct cv` output folder.

Usage:
  python benchmarks/model_quality/learning_curve_ft.py run  CONFIG OUT --shares 0.25 0.5 [--draws 1] [--matched-steps]
  python benchmarks/model_quality/learning_curve_ft.py table OUT [FULL_ROW ...]
(FULL_ROW: finished `lungct cv` folders of the same config on all training groups, the 100% point)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from lungct.config import ExperimentConfig, load_config
from lungct.crossval.folds import cross_validate, plan_folds
from lungct.data.splits import SplitItem, load_split

FOLDS = 5
RESULT = Path(__file__).resolve().parents[1] / "results" / "learning_curve_ft.json"
KEYS = (
    "balanced_accuracy",
    "benign.recall",
    "malignant.recall",
    "normal.recall",
    "accuracy",
    "study.balanced_accuracy",
    "study.benign.recall",
)


def keep_training_share(items: list[SplitItem], share: float, seed: int) -> list[SplitItem]:
    """The split without all but `share` of each class's training groups (at least 2 per class); other parts kept."""
    rng = np.random.default_rng(seed)
    train = [i for i in items if i.part == "train"]
    keep: set[str] = set()
    for label in sorted({i.label for i in train}):
        groups = sorted({i.group for i in train if i.label == label})
        n = min(len(groups), max(2, round(share * len(groups))))
        keep |= set(rng.choice(groups, size=n, replace=False).tolist())
    return [i for i in items if i.part != "train" or i.group in keep]


def scaled_schedule(cfg: ExperimentConfig, share: float) -> ExperimentConfig:
    """The config with fine-tuning epochs and early-stopping patience divided by `share`: as many optimiser steps
    (the schedule is constant per epoch) as on all training groups, so a smaller share is not also a shorter run."""
    scaled = cfg.model_copy(deep=True)
    scaled.train.phase2.epochs = max(1, round(cfg.train.phase2.epochs / share))
    scaled.train.early_stopping.patience = max(1, round(cfg.train.early_stopping.patience / share))
    return scaled


def run(config: str, out: str, shares: list[float], draws: int, n_bootstrap: int, matched_steps: bool) -> None:
    base = load_config(config)
    plan = plan_folds(base, FOLDS, progress=False)
    for draw in range(draws):
        for share in shares:
            cfg = scaled_schedule(base, share) if matched_steps else base
            splits = [
                keep_training_share(items, share, seed=10_000 * draw + 100 * k + round(100 * share))
                for k, items in enumerate(plan.splits, start=1)
            ]
            folder = Path(out) / f"share{round(100 * share):03d}{'_steps' if matched_steps else ''}_draw{draw}"
            print(f"== {folder} {[sum(i.part == 'train' for i in s) for s in splits]} training images", flush=True)
            plan_k = replace(plan, splits=splits)
            cross_validate(cfg, FOLDS, folder, progress=False, n_bootstrap=n_bootstrap, plan=plan_k)


def _benign_training_groups(fold: Path) -> int:
    return len({i.group for i in load_split(fold / "split.csv") if i.part == "train" and i.label == "benign"})


def table(out: str, full_rows: list[str]) -> None:
    """One line per share: the mean of each run's 5-fold mean, ± the sd over runs (over folds when one run), and
    the benign groups trained on (mean over folds and runs). Runs of a share are its draws; at 100% its seeds.
    Also written, with every run's 5-fold means, to benchmarks/results/learning_curve_ft.json."""
    by_share: dict[tuple[str, int], list[Path]] = {}
    for cv_json in sorted(Path(out).glob("share*_draw*/cv.json")):
        name = cv_json.parent.name.rsplit("_draw", 1)[0]  # share025 or share025_steps
        schedule = "as many steps" if name.endswith("_steps") else "the same epochs"
        share = int(name.removeprefix("share").removesuffix("_steps"))
        by_share.setdefault((schedule, share), []).append(cv_json.parent)
    for row in full_rows:
        by_share.setdefault(("all groups", 100), []).append(Path(row))
    rows = []
    head = ["fine-tuning", "share of training groups", "runs (± over)", "benign groups trained on", *KEYS]
    print("| " + " | ".join(head) + " |")
    print("|---" * (len(KEYS) + 4) + "|")
    for schedule, share in sorted(by_share, key=lambda key: (key[1] == 100, key[0], key[1])):
        folders = by_share[(schedule, share)]
        folds = [json.loads((f / "cv.json").read_text())["per_fold"] for f in folders]
        benign = np.mean([_benign_training_groups(f / f"fold_{k}") for f in folders for k in range(1, FOLDS + 1)])
        cells, run_means = [], {}
        for key in KEYS:
            per_run = [np.array([r[key] for r in run if r.get(key) is not None], dtype=float) for run in folds]
            means = np.array([v.mean() for v in per_run])
            spread = means.std(ddof=1) if len(means) > 1 else per_run[0].std(ddof=1)
            cells.append(f"{means.mean():.3f} ± {spread:.3f}")
            run_means[key] = [round(float(m), 4) for m in means]
        over = "runs" if len(folders) > 1 else "folds"
        print(f"| {schedule} | {share}% | {len(folders)} ({over}) | {benign:.1f} | " + " | ".join(cells) + " |")
        rows.append(
            {"fine_tuning": schedule, "share": share, "runs": [f.name for f in folders], "benign_groups": benign}
            | {"five_fold_means": run_means}
        )
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps({"folds": FOLDS, "rows": rows}, indent=1) + "\n")
    print(f"written to {RESULT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("config")
    r.add_argument("out")
    r.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5])
    r.add_argument("--draws", type=int, default=1)
    r.add_argument("--matched-steps", action="store_true", help="fine-tune 1/share times the epochs (scaled_schedule)")
    r.add_argument("--n-bootstrap", type=int, default=200, help="intervals only; the point figures do not depend on it")
    t = sub.add_parser("table")
    t.add_argument("out")
    t.add_argument("full_rows", nargs="*")
    args = parser.parse_args()
    if args.command == "run":
        run(args.config, args.out, args.shares, args.draws, args.n_bootstrap, args.matched_steps)
    else:
        table(args.out, args.full_rows)


if __name__ == "__main__":
    main()
