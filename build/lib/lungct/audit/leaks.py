"""Leakage between the parts of a split: a look-alike group or a duplicate group present in two parts.

A model tested on a slice whose twin (or whose patient's neighbouring slice) it trained on is scored
on memory, not on generalisation; every such crossing is listed so the split can be fixed.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from lungct.data.splits import SplitItem


def _parts(paths: list[str], part_of: dict[str, str]) -> dict[str, int]:
    return dict(sorted(Counter(part_of[p] for p in paths if p in part_of).items()))


def find_leaks(
    paths: list[str], lookalike: list[str], duplicates: list[dict], split: list[SplitItem]
) -> tuple[list[dict], dict]:
    """(leaks, coverage). Leaks: audit look-alike groups, duplicate groups and the split's own groups
    that cross parts. Coverage says how many audited images the split names, so a split of other data
    cannot pass silently as leak-free."""
    part_of = {item.path: item.part for item in split}
    leaks = []
    members: dict[str, list[str]] = defaultdict(list)
    for path, group in zip(paths, lookalike, strict=True):
        members[group].append(path)
    for group, group_paths in members.items():
        parts = _parts(group_paths, part_of)
        if len(parts) > 1:
            leaks.append({"kind": "lookalike_group", "group": group, "parts": parts, "paths": group_paths})
    for dup in duplicates:
        parts = _parts(dup["paths"], part_of)
        if len(parts) > 1:
            leaks.append({"kind": f"{dup['kind']}_duplicate", "parts": parts, "paths": dup["paths"]})
    split_groups: dict[str, list[str]] = defaultdict(list)
    for item in split:
        split_groups[item.group].append(item.path)
    for group, group_paths in split_groups.items():
        parts = _parts(group_paths, part_of)
        if len(parts) > 1:
            leaks.append({"kind": "split_group", "group": group, "parts": parts, "paths": group_paths})
    audited = set(paths)
    coverage = {
        "split_items": len(split),
        "audited_in_split": sum(p in part_of for p in audited),
        "audited_not_in_split": sum(p not in part_of for p in audited),
        "split_not_audited": sum(item.path not in audited for item in split),
    }
    return leaks, coverage
