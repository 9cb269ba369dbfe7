"""The promotion rule: a challenger replaces the champion only if it is non-inferior on every guarded metric
(the lower end of the paired group-bootstrap 95% interval of challenger minus champion is above `margin`) and
better on at least one of them (a positive change).

Non-inferiority is required twice: on all the test images (the champion's test part plus held-out feedback)
and on the champion's own test part alone. Held-out feedback carries the same labels as the feedback the
challenger learned from, so wrong feedback labels would also make its held-out part reward the challenger; the
champion's test part is the curated data it was accepted on, and feedback must not buy a promotion by
losing there.
"""

from __future__ import annotations

from dataclasses import dataclass

GUARDED = ("balanced_accuracy", "positive_recall")
DEFAULT_MARGIN = -0.01


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]

    def to_dict(self) -> dict:
        return {"promote": self.promote, "reasons": self.reasons}


def _non_inferior(comparison: dict, margin: float, guarded: tuple[str, ...], where: str) -> tuple[bool, list[str]]:
    metrics, ok, reasons = comparison["metrics"], True, []
    for key in guarded:
        if key not in metrics:
            reasons.append(f"{where}: {key} not measured")
            ok = False
            continue
        m = metrics[key]
        low = m["ci95"][0]
        within = low == low and low >= margin  # NaN (an undefined interval) shows nothing
        ok = ok and within
        side = "within" if within else "below"
        reasons.append(
            f"{where}: {key} change {m['change']:+.3f}, interval low {low:+.3f} {side} the margin {margin:+.3f}"
        )
    return ok, reasons


def decide(
    comparison: dict,
    margin: float = DEFAULT_MARGIN,
    guarded: tuple[str, ...] = GUARDED,
    trusted: dict | None = None,
) -> Decision:
    """`comparison`: lungct.evaluation.paired.paired_comparison(champion, challenger) on all the test images;
    `trusted`: the same on the champion's own test part (required non-inferior too when given)."""
    ok, reasons = _non_inferior(comparison, margin, guarded, "all test images")
    if trusted is not None:
        ok_trusted, more = _non_inferior(trusted, margin, guarded, "champion's test part")
        ok, reasons = ok and ok_trusted, reasons + more
    better = any(comparison["metrics"].get(k, {}).get("change", 0) > 0 for k in guarded)
    if ok and not better:
        reasons.append("non-inferior but better on none of the guarded metrics")
    return Decision(ok and better, reasons)
