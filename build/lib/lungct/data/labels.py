"""Class labels from folder names as datasets are downloaded.

Folder names carry noise: "Bengin cases" (the IQ-OTH/NCCD misspelling), "Malignant cases", or the
four-class chest CT's "adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib" whose staging suffix differs between
its train and test folders. Normalising them to one vocabulary lets several roots merge into one task.
"""

from __future__ import annotations

import re

# Known spellings that mean another label; an experiment's `aliases` extend this.
KNOWN_ALIASES: dict[str, str] = {
    "bengin": "benign",
    "benign_cases": "benign",
    "tumor": "tumour",
    "cancer": "malignant",
}

_SUFFIX_WORDS = ("cases", "case", "images", "slices", "scans")


def normalise_label(name: str, aliases: dict[str, str] | None = None) -> str:
    """Turn a folder name into a label: lower case, staging suffix and words like "cases" removed.

    An explicit alias (matched against the raw name first, then the normalised one) always wins.
    """
    aliases = {k.lower(): v for k, v in (aliases or {}).items()}
    raw = name.strip()
    if raw.lower() in aliases:
        return aliases[raw.lower()]
    label = raw.lower().split("_", 1)[0]  # "adenocarcinoma_left.lower.lobe_T2..." -> "adenocarcinoma"
    label = re.sub(r"[\s.\-]+", "_", label).strip("_")
    parts = label.split("_")
    while len(parts) > 1 and parts[-1] in _SUFFIX_WORDS:
        parts.pop()
    label = "_".join(parts)
    if not label:
        raise ValueError(f"folder name {name!r} gives an empty label")
    if label in aliases:
        return aliases[label]
    return KNOWN_ALIASES.get(label, label)
