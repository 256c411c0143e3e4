"""The test command an image is validated and graded with (pytest, also for unittest suites), and the pytest
plugins a project's own pytest configuration cannot start without."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from images.manifests import Manifests, read_ini

SKIP_DIRS = {".git", ".tox", ".venv", "venv", "node_modules", "build", "dist", "docs", "doc"}


# Options in a project's pytest `addopts` that only a plugin understands: without the plugin pytest
# refuses to start (exit code 4), so the plugin joins the dependency layer.
_ADDOPTS_PLUGINS = {
    r"--cov\b": "pytest-cov",
    r"(^|\s)-n\s*\S|--numprocesses|--dist\b": "pytest-xdist",
    r"--benchmark-": "pytest-benchmark",
    r"--timeout\b": "pytest-timeout",
    r"--reruns\b": "pytest-rerunfailures",
    r"--doctest-plus\b": "pytest-doctestplus",
    r"-p\s*randomly|--randomly": "pytest-randomly",
    r"--mypy\b": "pytest-mypy",
}


def _pytestread_ini(meta: Manifests) -> dict:
    """The project's pytest settings, from whichever file holds them (pytest's own precedence)."""
    pytest_ini = read_ini(meta.root / "pytest.ini").get("pytest")
    if pytest_ini is not None:
        return pytest_ini
    tool = meta.pyproject.get("tool", {}).get("pytest", {}).get("ini_options")
    if tool is not None:
        return tool
    return meta.tox.get("pytest") or meta.setup_cfg.get("tool:pytest") or {}


def pytest_plugins(meta: Manifests, requirements: list[str]) -> list[str]:
    ini = _pytestread_ini(meta)
    addopts = ini.get("addopts", "")
    addopts = " ".join(addopts) if isinstance(addopts, list) else str(addopts)
    required = ini.get("required_plugins", [])
    required = required if isinstance(required, list) else str(required).split()
    have = set()
    for line in requirements:
        try:
            have.add(canonicalize_name(Requirement(line).name))
        except InvalidRequirement:
            pass
    wanted = [plugin for pattern, plugin in _ADDOPTS_PLUGINS.items() if re.search(pattern, addopts)] + list(required)
    out = []
    for plugin in wanted:
        try:
            name = canonicalize_name(Requirement(plugin).name)
        except InvalidRequirement:
            continue
        if name not in have:
            have.add(name)
            out.append(plugin)
    return out


def test_command(root: Path, meta: Manifests, notes: list[str]) -> tuple[str, str]:
    test_files = _test_files(root)
    runner = "pytest"
    if test_files and _is_unittest_suite(test_files):
        runner = "unittest"
        notes.append("tests are unittest.TestCase suites: run through pytest, which collects them")
    configured = (
        "testpaths" in meta.pyproject.get("tool", {}).get("pytest", {}).get("ini_options", {})
        or "testpaths" in read_ini(root / "pytest.ini").get("pytest", {})
        or "testpaths" in meta.setup_cfg.get("tool:pytest", {})
        or "testpaths" in meta.tox.get("pytest", {})
    )
    # One test module that cannot be imported (an undeclared test dependency) must not hide the
    # thousands of tests beside it: it is reported as an `error` case and the rest still run.
    base = "python -m pytest --continue-on-collection-errors"
    if configured:
        command = base
        notes.append("tests: pytest testpaths from the project's config")
    else:
        # Only folders with Python tests in them (a C++ project keeps its own tests/ beside py/tests/).
        dirs = [d for d in ("tests", "test", "testing") if (root / d).is_dir() and any(
            p.name.startswith("test") or p.name.endswith("_test.py") for p in (root / d).rglob("*.py"))]
        top = sorted(p.name for p in root.glob("test*.py") if p.is_file()) + sorted(p.name for p in root.glob("*_test.py"))
        targets = dirs + top
        command = base + "".join(f" {t}" for t in targets)
        notes.append(f"tests: {targets or 'pytest default discovery'} ({len(test_files)} test files)")
    return command, runner


def _test_files(root: Path) -> list[Path]:
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if any(p in SKIP_DIRS for p in rel[:-1]):
            continue
        if path.name.startswith("test") or path.name.endswith("_test.py"):
            out.append(path)
    return out


def _is_unittest_suite(files: list[Path]) -> bool:
    uses_unittest = uses_pytest = False
    for path in files[:200]:
        text = path.read_text(errors="replace")
        uses_unittest |= bool(re.search(r"unittest\.TestCase|\(TestCase\)", text))
        uses_pytest |= bool(re.search(r"^\s*import pytest|^\s*from pytest|^def test_\w+\(\w", text, re.M))
    return uses_unittest and not uses_pytest
