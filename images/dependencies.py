"""The dependency layer's requirement lines, distilled from the manifests (runtime dependencies, the test
extras or dependency groups, test requirement files, tox deps, plugins the pytest config needs), so the
layer needs none of the repository's code and its key changes only when the dependencies do."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from images import requirement_files
from images.manifests import Manifests, lines_of, setup_kwargs
from images.test_command import pytest_plugins

TEST_GROUPS = ("test", "tests", "testing")
DEV_GROUPS = ("dev", "develop", "development")


def requirements(meta: Manifests, notes: list[str]) -> list[str]:
    runtime: list[str] = []
    runtime += meta.project.get("dependencies", []) or []
    runtime += lines_of(meta.setup_cfg.get("options", {}).get("install_requires", ""))
    setup_kw = setup_kwargs(meta.setup_py)
    runtime += _as_list(setup_kw.get("install_requires"))

    extras: dict[str, list[str]] = {}
    for name, reqs in (meta.project.get("optional-dependencies", {}) or {}).items():
        extras.setdefault(canonicalize_name(name), []).extend(reqs)
    for name, value in meta.setup_cfg.get("options.extras_require", {}).items():
        extras.setdefault(canonicalize_name(name), []).extend(lines_of(value))
    for name, reqs in (setup_kw.get("extras_require") or {}).items() if isinstance(setup_kw.get("extras_require"), dict) else []:
        extras.setdefault(canonicalize_name(name.split(":")[0]), []).extend(_as_list(reqs))

    tox_env = meta.tox.get("testenv", {})
    wanted = {canonicalize_name(e) for e in re.split(r"[\s,]+", tox_env.get("extras", "")) if e}
    wanted |= {canonicalize_name(n) for n in TEST_GROUPS if canonicalize_name(n) in extras}
    if not wanted:
        wanted = {canonicalize_name(n) for n in DEV_GROUPS if canonicalize_name(n) in extras}
    chosen_extras = sorted(wanted & set(extras))

    files = requirement_files.choose(meta, notes)
    tox_deps = _tox_deps(meta)
    # Sources of test requirements, the one a person trusts most first: when two name the same package
    # (a stale `tests_require` pin against the requirement file tox installs), the first one wins.
    sources = [
        [line for f in files for line in requirement_files.read(f, meta.root)],
        tox_deps,
        _dependency_groups(meta.pyproject.get("dependency-groups", {}) or {}, notes),
        [line for extra in chosen_extras for line in extras[extra]],
        _as_list(setup_kw.get("tests_require")),
    ]
    test: list[str] = []
    owner: dict[str, int] = {}
    for index, lines in enumerate(sources):
        for line in lines:
            name = _name(line)
            if name and owner.setdefault(name, index) != index:
                continue
            test.append(line)

    plugins = pytest_plugins(meta, runtime + test)
    if plugins:
        notes.append(f"pytest config needs plugins the manifests do not list: {plugins}")
    lines = _expand_self(meta, runtime + test + plugins, extras)
    out, seen = [], set()
    # pytest-timeout: validation and grading stop a hanging test after a per-test limit (envserver.junit).
    for line in list(meta.build_requires) + lines + ["pytest", "pytest-timeout"]:
        key = line.replace(" ", "")
        if key not in seen:
            seen.add(key)
            out.append(line)
    notes.append(
        f"deps: {len(runtime)} runtime, extras {chosen_extras or '-'}, requirement files "
        f"{[str(f.relative_to(meta.root)) for f in files] or '-'}, tox deps {len(tox_deps)}, build {meta.build_requires}"
    )
    return out


def _name(line: str) -> str | None:
    try:
        return canonicalize_name(Requirement(line).name)
    except InvalidRequirement:
        return None


def _as_list(value) -> list[str]:
    if isinstance(value, str):
        return lines_of(value)
    return [v for v in value if isinstance(v, str)] if isinstance(value, (list, tuple)) else []


def _dependency_groups(groups: dict, notes: list[str]) -> list[str]:
    names = [n for n in groups if canonicalize_name(n) in TEST_GROUPS] or [n for n in groups if canonicalize_name(n) in DEV_GROUPS]

    def expand(name: str, depth: int = 0) -> list[str]:
        out = []
        for item in groups.get(name, []) if depth < 10 else []:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict) and "include-group" in item:
                out += expand(item["include-group"], depth + 1)
        return out

    if names:
        notes.append(f"dependency groups: {names}")
    return [r for n in names for r in expand(n)]


def _tox_deps(meta: Manifests) -> list[str]:
    deps = meta.tox.get("testenv", {}).get("deps", "")
    out = []
    for line in lines_of(deps):
        line = line.replace("{toxinidir}/", "").replace("{toxinidir}", ".")
        if "{" in line or re.match(r"^[\w,!.-]+:\s", line):
            continue  # substituted or factor-conditional lines (`min: -r ...`): another environment's
        m = re.match(r"^(-r|-c)\s*(\S+)", line)
        if m:
            target = meta.root / m[2]
            requirement_files.inside(target, meta.root, f"tox.ini: include {line!r}")
            out += requirement_files.read(target, meta.root)
        elif not line.startswith(("-", ".")):
            out.append(line)
    return out


def _expand_self(meta: Manifests, lines: list[str], extras: dict[str, list[str]]) -> list[str]:
    """Replace `project[extra]` self-references with those extras' requirements; drop unparsable lines."""
    out: list[str] = []
    queue, done = list(lines), set()
    while queue:
        line = queue.pop(0)
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if meta.name and canonicalize_name(req.name) == meta.name:
            for extra in req.extras:
                if extra not in done:
                    done.add(extra)
                    queue += extras.get(canonicalize_name(extra), [])
            continue
        out.append(line)
    return out
