"""audit.md: the audit as a short readable report (the full lists stay in audit.json)."""

from __future__ import annotations

from pathlib import Path

SHOW = 15  # rows per list in the report


def _name(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def audit_markdown(a: dict) -> str:
    c = a["counts"]
    lines = ["# Data audit", "", f"Data: {', '.join(a['data'])}", ""]
    if a.get("hu_offset") is not None:
        lines += [f"16-bit and float files read as HU + {a['hu_offset']}, in the lung window (--hu-offset).", ""]
    lines += ["## Counts", ""]
    lines += [f"- {k}: {v}" for k, v in c["per_class"].items()]
    lines += [f"- total {c['total']}, imbalance ratio (largest/smallest class) {c['imbalance_ratio']}"]
    if len(c["per_source"]) > 1:
        lines += [f"- source {s}: {v}" for s, v in c["per_source"].items()]
    if a["skipped"]:
        lines += [f"- {len(a['skipped'])} unreadable files skipped (listed in audit.json)"]
    d = a["duplicate_summary"]
    lines += [
        "",
        "## Duplicates",
        "",
        f"{d['exact_groups']} groups of byte-identical files ({d['exact_pairs']} pairs, "
        f"{d['exact_extra_copies']} extra copies); {d['near_groups']} groups of near duplicates "
        f"({d['near_rule']}); {d['cross_class_groups']} groups span two classes.",
        "",
    ]
    for dup in a["duplicates"][:SHOW]:
        tag = " **(different classes)**" if dup["cross_class"] else ""
        lines.append(f"- {dup['kind']}{tag}: " + ", ".join(_name(p) for p in dup["paths"][:6]))
    if len(a["duplicates"]) > SHOW:
        lines.append(f"- ... {len(a['duplicates']) - SHOW} more in audit.json")
    g = a["lookalike_groups"]
    lines += [
        "",
        "## Look-alike groups (approximate patients)",
        "",
        f"{g['n_groups']} groups; {g['cross_class_groups']} span two classes.",
        "",
        "## Leakage",
        "",
    ]
    if a["split"] is None:
        lines.append("No split given (pass --split RUN_DIR/split.csv to check one).")
    else:
        s = a["split"]
        lines.append(
            f"Split {s['path']}: {s['audited_in_split']} of the audited images are in it "
            f"({s['audited_not_in_split']} are not; {s['split_not_audited']} split rows are not audited)."
        )
        lines.append("")
        if not a["leaks"]:
            lines.append("**No leaks**: no look-alike group, duplicate group or split group crosses parts.")
        else:
            kinds: dict[str, int] = {}
            for leak in a["leaks"]:
                kinds[leak["kind"]] = kinds.get(leak["kind"], 0) + 1
            lines.append(f"**{len(a['leaks'])} leaks**: " + ", ".join(f"{v} {k}" for k, v in kinds.items()))
            lines.append("")
            for leak in a["leaks"][:SHOW]:
                lines.append(
                    f"- {leak['kind']} across {leak['parts']}: " + ", ".join(_name(p) for p in leak["paths"][:4])
                )
    lines += ["", "## Shortcuts (properties that give away the label)", ""]
    if not a["shortcuts"]:
        lines.append("None found.")
    else:
        lines += ["| property | value | class | images | of class |", "|---|---|---|---|---|"]
        for s in a["shortcuts"]:
            lines.append(
                f"| {s['property']} | {s['value']} | {', '.join(s['classes'])} | {s['count']} | {s['of_class']} |"
            )
    lines += ["", "Label accuracy from each property alone (majority class per value):", ""]
    for prop, info in a["properties"].items():
        if "label_accuracy_from_property" in info:
            lines.append(
                f"- {prop}: {info['label_accuracy_from_property']:.3f} "
                f"(majority baseline {info['majority_baseline']:.3f})"
            )
    b = a.get("background") or {"ran": False, "reason": "not run"}
    lines += ["", "## Outside the body (background check)", ""]
    if not b["ran"]:
        lines.append(f"Not run: {b['reason']}.")
    else:
        verdict = (
            "**The label shows outside the body**: the classes differ in how they were scanned, and a model can "
            "score on that instead of on the disease."
            if b["flagged"]
            else "The label does not show outside the body beyond chance."
        )
        recalls = ", ".join(f"{c} {r:.2f}" for c, r in b["recall"].items())
        lines.append(
            f"A model that sees only the pixels outside the body (air, table, border) predicts the label of unseen "
            f"look-alike groups with balanced accuracy {b['balanced_accuracy']:.3f} (chance {b['chance']:.3f}; "
            f"recall {recalls}; {b['folds']} group folds, {b['n_images']} images). {verdict}"
        )
    if a["source_differences"]:
        lines += ["", "## Merged sources that differ systematically", ""]
        lines += [f"- {d['detail']}" for d in a["source_differences"]]
    return "\n".join(lines) + "\n"
