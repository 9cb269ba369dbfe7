"""requirements.lock pins every dependency that pyproject.toml names, at a version pyproject.toml allows.

`make setup` installs pyproject.toml's requirements constrained by the lock; a dependency added to pyproject.toml
without `make lock` would install unpinned (whatever is newest that day), and one tightened past its pin would not
install at all. Either fails here first.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def lock_pins(text: str) -> dict[str, list[str]]:
    """name -> pinned versions; a universal lock may pin one name once per platform marker."""
    pins: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith((" ", "#", "-")):
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # a lock line is exactly one ==
        assert spec.operator == "==", line
        pins.setdefault(canonicalize_name(req.name), []).append(spec.version)
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) != "lungct"]


def unpinned(requirements: list[Requirement], pins: dict[str, list[str]]) -> list[str]:
    problems = []
    for req in requirements:
        versions = pins.get(canonicalize_name(req.name))
        if not versions:
            problems.append(f"{req.name} is not in requirements.lock")
        elif not any(req.specifier.contains(v, prereleases=True) for v in versions):
            problems.append(f"{req} but requirements.lock pins {', '.join(versions)}")
    return problems


def test_the_lock_pins_every_dependency_of_pyproject_at_an_allowed_version():
    pins = lock_pins((ROOT / "requirements.lock").read_text())
    requirements = project_requirements()
    assert len(requirements) > 30 and len(pins) > len(requirements)
    assert unpinned(requirements, pins) == [], "run `make lock` after changing pyproject.toml's dependencies"


def test_a_dependency_missing_from_the_lock_or_outside_its_range_is_reported():
    pins = lock_pins("numpy==2.4.6\ntorch==2.15.0 ; sys_platform == 'linux'\n    # via lungct\n")
    found = unpinned([Requirement("numpy>=3"), Requirement("torch>=2.2"), Requirement("newlib>=1")], pins)
    assert found == ["numpy>=3 but requirements.lock pins 2.4.6", "newlib is not in requirements.lock"]
