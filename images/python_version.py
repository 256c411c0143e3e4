"""Which Python an image gets: a local base the project supports (requires-python, classifiers), preferring one
its tox or CI configuration names, else the newest."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from forager.errors import DetectError
from forager.models import RepoSpec
from images.manifests import Manifests, setup_kw_str


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".") if p.isdigit())


def choose_python(meta: Manifests, spec: RepoSpec, available: list[str], notes: list[str]) -> str:
    if not available:
        raise DetectError("no base image is available locally (forager/base:pyX.Y): run `forager setup`")
    if spec.python:
        if spec.python not in available:
            raise DetectError(f"python {spec.python} was asked for but only {', '.join(available)} exist locally")
        notes.append(f"python: override {spec.python}")
        return spec.python

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
            f"no compatible Python among the local base images ({', '.join(available)}): "
            + "; ".join(n for n in notes if n.startswith("python "))
        )
    # Prefer a version the project names (classifiers, tox, CI), else the newest compatible one.
    preferred = [v for v in compatible if v in classifiers or v in mentioned] or compatible
    chosen = preferred[0]
    notes.append(
        f"python: {chosen} (requires-python={requires or 'unspecified'}, classifiers={sorted(classifiers, key=_version_key) or '-'}, "
        f"tox/CI={sorted(mentioned, key=_version_key) or '-'})"
    )
    return chosen


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
