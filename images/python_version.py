"""Which Python an image gets: one the project supports at that commit (requires-python, classifiers), among
the bases we can make (images.base.RELEASES) or find locally, preferring one its tox or CI configuration
names, then the one closest to the commit's date.

"Closest to the date": the newest Python that had been out for half a year at the commit (so its
dependencies of that time had wheels for it), capped at the default 3.11 (the base every machine has, and
the best-supported one); with no date (an sdist), the default. Candidates are ranked; detection takes the
first that also suits the toolchain (a Rust crate needs a release whose rustc is new enough).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from forager.config import DEFAULT_PYTHON
from forager.errors import DetectError
from forager.models import RepoSpec
from images.manifests import Manifests, setup_kw_str


# First release of each CPython minor version (for the date preference).
RELEASED = {"3.6": "2016-12-23", "3.7": "2018-06-27", "3.8": "2019-10-14", "3.9": "2020-10-05", "3.10": "2021-10-04",
            "3.11": "2022-10-24", "3.12": "2023-10-02", "3.13": "2024-10-07", "3.14": "2025-10-07"}
WHEELS_LAG_DAYS = 182  # how long after a Python's release its ecosystem has wheels for it


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".") if p.isdigit())


def choose_python(meta: Manifests, spec: RepoSpec, available: list[str], notes: list[str],
                  commit_date: float | None = None) -> str:
    return rank_pythons(meta, spec, available, notes, commit_date)[0]


def rank_pythons(meta: Manifests, spec: RepoSpec, available: list[str], notes: list[str],
                 commit_date: float | None = None) -> list[str]:
    """Compatible Pythons among `available`, best first (DetectError when there is none)."""
    if not available:
        raise DetectError("no base image can be made or found (forager/base:pyX.Y): run `forager setup`")
    if spec.python:
        if spec.python not in available:
            raise DetectError(f"python {spec.python} was asked for but only {', '.join(available)} can be made or exist locally")
        notes.append(f"python: override {spec.python}")
        return [spec.python]

    requires = (
        meta.project.get("requires-python")
        or meta.setup_cfg.get("options", {}).get("python_requires")
        or setup_kw_str(meta.setup_py, "python_requires")
        or _pkg_info_field(meta.pkg_info, "Requires-Python")
    )
    classifiers = _classifier_versions(meta)
    mentioned = _tox_ci_versions(meta.root)
    compatible = []
    for version in sorted(available, key=_version_key, reverse=True):
        why = _incompatible(version, requires, classifiers)
        if why:
            notes.append(f"python {version}: {why}")
        else:
            compatible.append(version)
    if not compatible:
        raise DetectError(
            f"no compatible Python among the bases we can make or find ({', '.join(available)}): "
            + "; ".join(n for n in notes if n.startswith("python "))
        )
    target = _target(commit_date)
    named = [v for v in compatible if v in classifiers or v in mentioned]
    rest = [v for v in compatible if v not in named]
    # Named versions first (the project tested them), each group by distance from the date's target,
    # older first on a tie (an old commit's pins fit an older Python better).
    distance = lambda v: (abs(_version_key(v)[1] - _version_key(target)[1]) if len(_version_key(v)) > 1 else 99, _version_key(v))
    ranked = sorted(named, key=distance) + sorted(rest, key=distance)
    when = datetime.fromtimestamp(commit_date, timezone.utc).date().isoformat() if commit_date else "no date"
    notes.append(
        f"python: {ranked[0]} (requires-python={requires or 'unspecified'}, classifiers={sorted(classifiers, key=_version_key) or '-'}, "
        f"tox/CI={sorted(mentioned, key=_version_key) or '-'}, commit {when} -> target {target})"
    )
    return ranked


def _target(commit_date: float | None) -> str:
    """The Python closest to a commit's date: the newest that had wheels by then, capped at the default."""
    if commit_date is None:
        return DEFAULT_PYTHON
    day = datetime.fromtimestamp(commit_date, timezone.utc)
    ready = [v for v, released in RELEASED.items()
             if (day - datetime.fromisoformat(released).replace(tzinfo=timezone.utc)).days >= WHEELS_LAG_DAYS]
    newest = max(ready, key=_version_key) if ready else min(RELEASED, key=_version_key)
    return min(newest, DEFAULT_PYTHON, key=_version_key)


def _incompatible(version: str, requires: str | None, classifiers: set[str]) -> str | None:
    if requires:
        try:
            spec = SpecifierSet(requires.strip().strip("\"'"))
        except InvalidSpecifier:
            spec = None
        # Compatible when some patch release of X.Y satisfies it (`>3.11` still admits 3.11.5).
        if spec is not None and not any(spec.contains(f"{version}.{p}", prereleases=True) for p in (0, 99)):
            return f"excluded by requires-python {requires!r}"
    if classifiers and all(_version_key(c)[0] == 2 for c in classifiers if c):
        return "classifiers list only Python 2"
    if "2-only" in classifiers:
        return "classified Python 2 :: Only"
    return None


def _pkg_info_field(text: str, name: str) -> str | None:
    m = re.search(rf"^{re.escape(name)}:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else None


def _classifier_versions(meta: Manifests) -> set[str]:
    texts = [
        "\n".join(meta.project.get("classifiers", []) or []),
        meta.setup_cfg.get("metadata", {}).get("classifiers", ""),
        meta.setup_py,
        meta.pkg_info,
    ]
    found: set[str] = set()
    for text in texts:
        found.update(re.findall(r"Programming Language :: Python :: (\d\.\d+)", text))
        found.update(re.findall(r"Programming Language :: Python :: (\d)(?![\d.])", text))
        if re.search(r"Programming Language :: Python :: 2 :: Only", text):
            found.add("2-only")
    return found


def _tox_ci_versions(root: Path) -> set[str]:
    texts = []
    if (root / "tox.ini").is_file():
        texts.append((root / "tox.ini").read_text(errors="replace"))
    for wf in list((root / ".github" / "workflows").glob("*.y*ml"))[:20]:
        texts.append(wf.read_text(errors="replace"))
    found: set[str] = set()
    for text in texts:
        for m in re.finditer(r"\bpy(\d)(\d{1,2})\b", text):
            found.add(f"{m[1]}.{m[2]}")
        for group in re.findall(r"py3\{([\d, ]+)\}|py\{([\d, ]+)\}", text):
            for part in ",".join(group).split(","):
                part = part.strip()
                if part.isdigit():
                    found.add(f"3.{part[1:]}" if len(part) >= 2 and part[0] == "3" else f"3.{part}")
        for m in re.finditer(r"['\"]?(3\.\d{1,2})['\"]?", " ".join(re.findall(r"python-version[^\n]*|python:[^\n]*", text))):
            found.add(m[1])
    return found
