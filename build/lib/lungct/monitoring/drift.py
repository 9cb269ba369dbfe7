"""Drift report: do recent inputs and predictions still look like the reference data? Is retraining due?

Four checks compare the prediction log's recent rows with the run's reference (see drift_reference):

- intensity: grey-level statistics (mean, std, p5, p50, p95) and size of the slices, against the training
  part: another scanner, window, export, or inverted images;
- embedding: the model's pooled features projected on the training part's top principal components:
  inputs the model "sees" differently even when simple statistics agree;
- confidence: the top-class probability, against the held-out validation part: the model growing unsure;
- class mix: shares of predicted labels, against the validation part: a changed case mix (prevalence),
  which by itself does not call for retraining.

Each feature gets two numbers. The population stability index (PSI, quantile bins of the reference) says how
far the distribution moved. The two-sample Kolmogorov-Smirnov distance (scipy.stats.ks_2samp) says whether
that is more than chance, judged against batches of whole reference groups: slices of one patient look
alike, so 120 logged slices may be only a dozen patients, and a textbook KS p-value, which assumes 120
independent images, calls ordinary patient-to-patient variation drift (it did on IQ-OTH/NCCD's unseen
test patients). The null distribution is therefore drawn by splitting the reference by group: a random set
of groups with about as many images as the recent rows against the remaining groups, `resamples` times.

A feature drifts when PSI > 0.2 and its group-null p-value is below 0.01 after Bonferroni within its check;
PSI 0.1-0.2 with a significant p is "moderate". Fewer than `min_rows` rows give "not enough data", never
an alarm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import ks_2samp
from sklearn.decomposition import PCA
from sklearn.model_selection import GroupKFold

from lungct.monitoring.drift_reference import INPUT_PARTS, PREDICTION_PARTS, STAT_KEYS, Observations

PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.2
ALPHA = 0.01
N_BINS = 10
N_COMPONENTS = 5
MIN_ROWS = 30
RESAMPLES = 2000  # the smallest group-null p-value is 1/(RESAMPLES+1): small enough for Bonferroni over 7 features
PSI_FLOOR = 1e-4  # empty bins count as this share, so log(0) never occurs

NOT_ENOUGH = "not enough data"
LEVELS = ("stable", "moderate", "drift")  # per feature and per check, in increasing order


@dataclass
class DriftSettings:
    min_rows: int = MIN_ROWS
    bins: int = N_BINS
    components: int = N_COMPONENTS
    alpha: float = ALPHA
    resamples: int = RESAMPLES
    seed: int = 0


def psi(reference: np.ndarray, current: np.ndarray, bins: int = N_BINS) -> float:
    """Population stability index over the reference's quantile bins.

    Written here: it is a three-line formula and no maintained small library offers it (scipy and scikit-learn
    do not). sum((cur - ref) * ln(cur / ref)) over bins. The reference's minimum and maximum are bin edges too,
    so values outside its range get bins of their own: a feature that was constant in the reference (the
    median grey level of CT slices is 0) still shows a move. Ties collapse bins.
    """
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)))
    ref = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=len(edges) + 1) / len(reference)
    cur = np.bincount(np.searchsorted(edges, current, side="left"), minlength=len(edges) + 1) / len(current)
    return psi_of_shares(ref, cur)


def psi_of_shares(ref: np.ndarray, cur: np.ndarray) -> float:
    ref, cur = np.clip(ref, PSI_FLOOR, None), np.clip(cur, PSI_FLOOR, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def group_windows(groups: np.ndarray, n_current: int, s: DriftSettings) -> list[np.ndarray]:
    """Masks of random whole-group batches of about `n_current` reference images (at most half the reference)."""
    rng = np.random.default_rng(s.seed)
    names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    target = min(n_current, len(groups) // 2)
    windows = []
    for _ in range(s.resamples):
        order = rng.permutation(len(names))
        take = order[: int(np.searchsorted(np.cumsum(sizes[order]), target)) + 1]
        take = take[:-1] if sizes[take].sum() > len(groups) // 2 and len(take) > 1 else take
        windows.append(np.isin(inverse, take))
    return windows


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample KS statistic, as scipy.stats.ks_2samp computes it, without its p-value.

    Written here for speed only: the group null needs it thousands of times per report, and ks_2samp's
    p-value computation, unused there, costs twenty times more than the distance.
    """
    a, b = np.sort(a), np.sort(b)
    both = np.concatenate([a, b])
    return float(
        np.max(np.abs(np.searchsorted(a, both, "right") / len(a) - np.searchsorted(b, both, "right") / len(b)))
    )


def _level(psi_value: float, p_adjusted: float, alpha: float) -> str:
    if p_adjusted >= alpha:
        return "stable"
    if psi_value > PSI_SIGNIFICANT:
        return "drift"
    return "moderate" if psi_value > PSI_MODERATE else "stable"


def _p_value(observed: float, null: np.ndarray) -> float:
    return float((1 + np.sum(null >= observed)) / (len(null) + 1))


def feature_test(
    name: str,
    reference: np.ndarray,
    current: np.ndarray,
    windows: list[np.ndarray],
    n_tests: int,
    s: DriftSettings,
) -> dict[str, Any]:
    """PSI, KS distance and its group-null p-value for one feature."""
    ks = ks_2samp(reference, current)
    distance = float(ks.statistic)
    null = np.array([ks_distance(reference[~w], reference[w]) for w in windows])
    p = _p_value(distance, null)
    p_adjusted = min(1.0, p * n_tests)
    value = psi(reference, current, s.bins)
    return {
        "feature": name,
        "reference_median": float(np.median(reference)),
        "current_median": float(np.median(current)),
        "psi": value,
        "ks_statistic": distance,
        "ks_null_q99": float(np.quantile(null, 0.99)),
        "ks_p_iid": float(ks.pvalue),  # the textbook p-value, which assumes independent images: for reference only
        "p_value": p,
        "p_adjusted": p_adjusted,
        "level": _level(value, p_adjusted, s.alpha),
    }


def _check(features: list[dict[str, Any]], ref: Observations, n_cur: int, **extra: Any) -> dict[str, Any]:
    worst = max((LEVELS.index(f["level"]) for f in features), default=0)
    return {
        "status": LEVELS[worst],
        "reference_parts": sorted(set(ref.parts.tolist())),
        "n_reference": len(ref),
        "n_reference_groups": len(set(ref.groups.tolist())),
        "n_current": n_cur,
        "features": features,
        **extra,
    }


def _not_enough(ref: Observations, n_cur: int, s: DriftSettings, why: str = "") -> dict[str, Any]:
    check = _check([], ref, n_cur)
    check.update(status=NOT_ENOUGH, note=why or f"{n_cur} recent rows; at least {s.min_rows} are needed")
    return check


def _columns(
    name: Callable[[int], str], ref: np.ndarray, cur: np.ndarray, ref_obs: Observations, s: DriftSettings
) -> list[dict[str, Any]]:
    windows = group_windows(ref_obs.groups, len(cur), s)
    k = ref.shape[1]
    return [feature_test(name(i), ref[:, i], cur[:, i], windows, k, s) for i in range(k)]


def intensity_check(ref: Observations, cur: Observations, s: DriftSettings) -> dict[str, Any]:
    if len(cur.stats) < s.min_rows:
        return _not_enough(ref, len(cur.stats), s)
    return _check(_columns(lambda i: STAT_KEYS[i], ref.stats, cur.stats, ref, s), ref, len(cur.stats))


def _residual(pca: PCA, embeddings: np.ndarray) -> np.ndarray:
    """Distance of each embedding from the principal subspace (what the components do not explain)."""
    return np.linalg.norm(embeddings - pca.inverse_transform(pca.transform(embeddings)), axis=1)


def _cross_fitted_residual(embeddings: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """Reference residuals from PCAs fitted without the image's group (5-fold by group).

    A PCA fitted on an image explains it better than any new image, so in-sample residuals would make every
    new batch look far away.
    """
    n_splits = min(5, len(set(groups.tolist())))
    if n_splits < 2:
        return _residual(PCA(n_components=k, random_state=0).fit(embeddings), embeddings)
    out = np.zeros(len(embeddings))
    for fit, held in GroupKFold(n_splits=n_splits).split(embeddings, groups=groups):
        pca = PCA(n_components=min(k, len(fit) - 1), random_state=0).fit(embeddings[fit])
        out[held] = _residual(pca, embeddings[held])
    return out


def embedding_check(ref: Observations, cur: Observations, s: DriftSettings) -> dict[str, Any]:
    """The tests on the reference's top principal components and the residual (Bonferroni over them all).

    The components show a move along the directions training images vary in; the residual shows embeddings
    pointing elsewhere (images unlike any in training, e.g. inverted slices).
    """
    n = len(cur.embeddings)
    if n < s.min_rows:
        return _not_enough(ref, n, s)
    if cur.embeddings.shape[1] != ref.embeddings.shape[1]:
        return _not_enough(ref, n, s, f"embedding width {cur.embeddings.shape[1]} differs from the reference's")
    k = max(1, min(s.components, len(ref) - 1, ref.embeddings.shape[1]))
    pca = PCA(n_components=k, random_state=0).fit(ref.embeddings)
    ref_features = np.column_stack(
        [pca.transform(ref.embeddings), _cross_fitted_residual(ref.embeddings, ref.groups, k)]
    )
    cur_features = np.column_stack([pca.transform(cur.embeddings), _residual(pca, cur.embeddings)])
    names = [f"pc{i + 1}" for i in range(k)] + ["residual"]
    tests = _columns(names.__getitem__, ref_features, cur_features, ref, s)
    for t, share in zip(tests, pca.explained_variance_ratio_, strict=False):
        t["explained_variance"] = float(share)
    return _check(tests, ref, n, components=k, explained_variance=float(pca.explained_variance_ratio_.sum()))


def confidence_check(ref: Observations, cur: Observations, s: DriftSettings) -> dict[str, Any]:
    n = len(cur.probabilities)
    if n < s.min_rows:
        return _not_enough(ref, n, s)
    conf = lambda probs: probs.max(1, keepdims=True)  # noqa: E731
    return _check(_columns(lambda i: "confidence", conf(ref.probabilities), conf(cur.probabilities), ref, s), ref, n)


def class_mix_check(ref: Observations, cur: Observations, s: DriftSettings) -> dict[str, Any]:
    """Shares of predicted classes: categorical PSI, judged against whole-group batches of the reference."""
    n = len(cur.probabilities)
    if n < s.min_rows:
        return _not_enough(ref, n, s)
    k = len(ref.classes)

    def shares(probs: np.ndarray) -> np.ndarray:
        return np.bincount(probs.argmax(1), minlength=k) / max(len(probs), 1)

    ref_share, cur_share = shares(ref.probabilities), shares(cur.probabilities)
    value = psi_of_shares(ref_share, cur_share)
    windows = group_windows(ref.groups, n, s)
    null = np.array([psi_of_shares(shares(ref.probabilities[~w]), shares(ref.probabilities[w])) for w in windows])
    p = _p_value(value, null)
    feature = {
        "feature": "predicted class shares",
        "reference_shares": dict(zip(ref.classes, map(float, ref_share), strict=True)),
        "current_shares": dict(zip(ref.classes, map(float, cur_share), strict=True)),
        "psi": value,
        "psi_null_q99": float(np.quantile(null, 0.99)),
        "p_value": p,
        "p_adjusted": p,
        "level": _level(value, p, s.alpha),
    }
    return _check([feature], ref, n)


# Checks whose drift calls for retraining; a class-mix change alone may just be a different case mix.
RETRAIN_CHECKS = ("intensity", "embedding", "confidence")


def decide(checks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The verdict and its reasons in plain words."""
    reasons = []
    for name, check in checks.items():
        for f in check["features"]:
            if f["level"] != "stable":
                p = f"group-null p {f['p_adjusted']:.1e}" + (" after Bonferroni" if len(check["features"]) > 1 else "")
                reasons.append(f"{name}: {f['feature']} {f['level']} (PSI {f['psi']:.2f}, {p})")
    statuses = {name: c["status"] for name, c in checks.items()}
    retrain = any(statuses.get(n) == "drift" for n in RETRAIN_CHECKS)
    if retrain:
        verdict = "retraining due"
        advice = (
            "Recent inputs or the model's confidence differ from the reference beyond patient-to-patient "
            "variation: check the sources (scanner, window, export), label a sample of recent cases, evaluate, "
            "and retrain if performance fell."
        )
    elif "drift" in statuses.values() or "moderate" in statuses.values():
        verdict = "watch"
        advice = (
            "A moderate shift, or a change in the predicted case mix only (which may be a real change in "
            "prevalence): no retraining yet; look again with more data."
        )
    elif all(v == NOT_ENOUGH for v in statuses.values()):
        verdict = NOT_ENOUGH
        advice = "Too few logged predictions to judge; this is not an alarm."
    else:
        verdict = "no drift"
        advice = "Recent inputs and predictions match the reference within patient-to-patient variation."
    return {"verdict": verdict, "retraining_due": retrain, "advice": advice, "reasons": reasons}


def match_class_mix(reference: Observations, shares: np.ndarray, seed: int = 0) -> Observations:
    """The reference resampled (with replacement, same size) to the given predicted-class shares.

    Slices of different classes look different (size, brightness, embedding), so a change of case mix alone
    would otherwise read as input drift; the class-mix check reports that change. Classes the reference never
    predicts cannot be matched and are left out.
    """
    predicted = reference.probabilities.argmax(1)
    weights = shares[predicted] / reference.predicted_shares()[predicted]
    if not len(weights) or weights.sum() <= 0:
        return reference
    rng = np.random.default_rng(seed)
    return reference.take(np.sort(rng.choice(len(weights), len(weights), replace=True, p=weights / weights.sum())))


def compare_observations(
    reference: Observations, current: Observations, s: DriftSettings | None = None
) -> dict[str, dict[str, Any]]:
    """All four checks. `current` may have fewer embedding/probability rows than stats rows (rows without).

    Inputs and confidence are compared with references resampled to the recent predicted class mix, when
    there are enough recent predictions of this model to know it; the class-mix check uses the reference as is.
    """
    s = s or DriftSettings()
    inputs, predictions = reference.select(INPUT_PARTS), reference.select(PREDICTION_PARTS)
    matched = len(current.probabilities) >= s.min_rows
    inputs_m, predictions_m = inputs, predictions
    if matched:
        shares = current.predicted_shares()
        inputs_m, predictions_m = match_class_mix(inputs, shares, s.seed), match_class_mix(predictions, shares, s.seed)
    checks = {
        "intensity": intensity_check(inputs_m, current, s),
        "embedding": embedding_check(inputs_m, current, s),
        "confidence": confidence_check(predictions_m, current, s),
        "class_mix": class_mix_check(predictions, current, s),
    }
    for name in ("intensity", "embedding", "confidence"):
        checks[name]["matched_to_recent_class_mix"] = matched
    return checks
