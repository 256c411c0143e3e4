"""What of an agent's patch never reaches the graded run: the tests and everything that decides how they run.

Before the hidden tests run, the grading container puts back the base version of (or removes) every file
of the patch that is:
- a test file the task names, anything under a test directory (`tests/`, `test/`, `testing/`, and the
  directories the task's test files live in), or a new test module (`test_*.py`, `*_test.py`);
- test infrastructure: every `conftest.py`, `pytest.ini`/`.pytest.ini`/`tox.ini`, the pytest sections of
  `setup.cfg` (`[tool:pytest]`) and `pyproject.toml` (`[tool.pytest...]`) (the rest of those files is
  kept), `sitecustomize.py`, `usercustomize.py` and `*.pth` files;
- a module that shadows one the test run imports: a top-level module or package of the repository the
  image did not have, named like a module of the image's Python (stdlib or site-packages, e.g. `pytest.py`).
The response and the trajectory list every file dropped this way.
"""

from __future__ import annotations

import posixpath
import re

TEST_DIRS = {"tests", "test", "testing"}
INFRA_NAMES = {"conftest.py", "pytest.ini", ".pytest.ini", "tox.ini", "sitecustomize.py", "usercustomize.py"}
# files whose pytest section is protected while the rest of the file is the agent's to change
SECTIONED = {"setup.cfg": re.compile(r"^\[(tool:pytest|pytest)\]\s*$"),
             "pyproject.toml": re.compile(r"^\[tool\.pytest(\.[A-Za-z_.]+)?\]\s*$")}

# Run in the grading container (its Python is the image's): every top-level module name the test run could
# import from outside the repository. Python 3.6+ syntax; stdlib only.
SHADOW_PROBE = r"""
import os, pkgutil, sys
names = set(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names)
for entry in sys.path[1:]:
    if entry and os.path.isdir(entry) and not os.path.abspath(entry).startswith(os.path.abspath(os.getcwd())):
        names.update(m.name for m in pkgutil.iter_modules([entry]))
print("\n".join(sorted(n for n in names if n and not n.startswith("_") or n in ("_pytest",))))
"""


def test_dirs(test_files: list[str]) -> set[str]:
    """The directories the task's test files live in (the repository root excluded)."""
    return {d for d in (posixpath.dirname(f) for f in test_files) if d}


def is_protected(path: str, test_files: list[str], dirs: set[str]) -> bool:
    """Whether a changed path is test code or test infrastructure (sectioned files are decided separately)."""
    name = posixpath.basename(path)
    parts = path.split("/")
    if path in test_files or name in INFRA_NAMES or name.endswith(".pth"):
        return True
    if any(p in TEST_DIRS for p in parts[:-1]) or any(path.startswith(d + "/") for d in dirs):
        return True
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def pytest_section(text: str, name: str) -> str:
    """The pytest section(s) of a setup.cfg or pyproject.toml, as text ('' when there is none)."""
    header = SECTIONED[name]
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("["):
            inside = bool(header.match(line.strip()))
        if inside:
            out.append(line.rstrip())
    return "\n".join(out)


def section_changed(old: bytes | None, new: bytes | None, name: str) -> bool:
    decode = lambda b: b.decode(errors="replace") if b is not None else ""  # noqa: E731
    return pytest_section(decode(old), name) != pytest_section(decode(new), name)


def shadows(path: str, image_paths: set[str], importable: set[str]) -> bool:
    """A new top-level module or package of the repository named like a module the test run imports."""
    parts = path.split("/")
    if len(parts) == 1 and path.endswith(".py"):
        top = path[:-3]
    elif len(parts) >= 2:
        top = parts[0]
    else:
        return False
    if top not in importable:
        return False
    own = {p.split("/")[0] for p in image_paths} | {p[:-3] for p in image_paths if "/" not in p and p.endswith(".py")}
    return top not in own or path.endswith(".py") and path not in image_paths and len(parts) == 1


def dropped_files(changed: dict[str, tuple[bytes | None, bytes | None]], test_files: list[str],
                  image_paths: set[str], importable: set[str]) -> list[str]:
    """The changed paths (path -> (base content, agent content), None = absent) that are put back before grading."""
    dirs = test_dirs(test_files)
    out = []
    for path, (old, new) in sorted(changed.items()):
        name = posixpath.basename(path)
        if name in SECTIONED:
            if section_changed(old, new, name):
                out.append(path)
        elif is_protected(path, test_files, dirs) or shadows(path, image_paths, importable):
            out.append(path)
    return out
