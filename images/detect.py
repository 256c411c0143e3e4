"""Detection without a model: from a source tree, choose the Python version, the dependency list, the
install commands and the test command. Per-entry overrides (RepoSpec) win over everything detected.

The dependency list is distilled from the manifests (pyproject, setup.cfg, setup.py, requirements*.txt,
tox.ini) into plain requirement lines, so the dependency layer needs none of the repository's code and
its key changes only when the dependencies do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name

from forager.errors import DetectError
from forager.models import RepoSpec
from images.dependencies import requirements as distil_requirements
from images.manifests import Manifests
from images.python_version import rank_pythons
from images.test_command import test_command as choose_test_command
from images.toolchain import detect_toolchain, rust_ok, rust_version_of

__all__ = ["Detection", "DetectError", "detect"]


def _req_name(line: str) -> str:
    return canonicalize_name(re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0])
# Editable installs of setuptools_scm/hatch-vcs projects need a version when neither git metadata
# nor PKG-INFO is there (a git checkout is copied without .git).
SCM_BACKENDS = ("setuptools_scm", "setuptools-scm", "hatch-vcs", "hatch_vcs")



@dataclass
class Detection:
    python: str
    requirements: list[str]  # the dependency layer: build requirements, runtime and test deps, pytest
    install: list[str]  # shell commands run in /repo in the repository layer
    test_command: str
    test_runner: str  # "pytest", or "unittest" (a unittest suite, run through pytest)
    system_packages: list[str] = field(default_factory=list)
    build_requirements: list[str] = field(default_factory=list)  # installed with --upgrade, as an isolated build would
    install_env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # the evidence, for the build log
    toolchain: bool = False  # the project compiles code: the deps layer gets a compiler and Python's headers
    rust: bool = False  # ... and Debian's cargo
    libraries: list[str] = field(default_factory=list)  # detected apt packages, installed with the toolchain
    toolchain_problem: str | None = None  # why no usable toolchain exists (the build fails as `toolchain`)


def detect(root: Path, spec: RepoSpec, available: list[str], commit_date: float | None = None) -> Detection:
    """Detect how to build and test the tree at `root`; `available` lists the Pythons we can make a base for
    (or find locally); `commit_date` (unix time, None for sdists) steers the choice of Python."""
    notes: list[str] = []
    meta = Manifests(root)
    ranked = rank_pythons(meta, spec, available, notes, commit_date)
    requirements = distil_requirements(meta, notes)
    tc = detect_toolchain(meta, requirements)
    notes += [f"toolchain: {e}" for e in tc.evidence]
    python, problem = ranked[0], None
    if tc.needs_rust:
        fits = [v for v in ranked if rust_ok(v, tc.rust_version) is None]
        if fits and fits[0] != python:
            notes.append(f"python: {fits[0]} instead of {python}: {rust_ok(python, tc.rust_version)}")
        python = fits[0] if fits else python
        newest = max(ranked, key=lambda v: rust_version_of(v))
        problem = None if fits else (
            f"Rust extension: the crate needs rustc {tc.rust_version or 'new enough'}, and the newest Debian rustc among the "
            f"Pythons it supports is {'.'.join(map(str, rust_version_of(newest)))} (Python {newest}): {rust_ok(newest, tc.rust_version)}; "
            "rustup's toolchains cannot be fetched from this network")
    install_env: dict[str, str] = {}
    if spec.install is not None:
        install = list(spec.install)
        notes.append(f"install: override {install}")
    elif meta.installable:
        # The backend is preinstalled in the deps layer, so no network is needed here; if the backend
        # wants more for an editable build than its requires list says, fall back to build isolation.
        # --use-pep517: a PEP 660 editable wheel; the legacy `setup.py develop` path is several times slower.
        install = [
            "python -m pip install --no-deps --no-build-isolation --use-pep517 -e . || python -m pip install --no-deps --use-pep517 -e ."
            # an old commit's pip and setuptools (resolved at its date) may predate PEP 660: `setup.py develop`
            " || python -m pip install --no-deps --no-build-isolation -e ."
        ]
        ungenerated = tc.ungenerated_pyx
        if ungenerated:
            # The project's Makefile or CI runs Cython before building (the sdist ships the .c, git does not).
            install.insert(0, "for f in " + " ".join(ungenerated) + '; do python -m cython -3 "$f"; done')
            if not any(_req_name(r) == "cython" for r in requirements):
                requirements.insert(len(meta.build_requires), "Cython")
            notes.append(f"Cython sources without their generated C, cythonized before the build: {ungenerated}")
        if any(b in r for r in meta.build_requires for b in SCM_BACKENDS) and not (root / "PKG-INFO").exists():
            install_env["SETUPTOOLS_SCM_PRETEND_VERSION"] = "0.0.0+forager"
            notes.append("setuptools_scm/hatch-vcs without PKG-INFO: pretend version 0.0.0+forager")
    else:
        install = []
        notes.append("no pyproject.toml/setup.py: the repository is not pip-installed, tests run from /repo")
    test_command, runner = choose_test_command(root, meta, notes)
    if spec.test_command:
        test_command = spec.test_command
        notes.append(f"test command: override {test_command!r}")
    return Detection(
        python=python,
        requirements=requirements,
        install=install,
        test_command=test_command,
        test_runner=runner,
        system_packages=list(spec.system_packages),
        build_requirements=list(meta.build_requires),
        install_env=install_env,
        notes=notes,
        toolchain=tc.needs_compiler,
        rust=tc.needs_rust,
        libraries=tc.libraries,
        toolchain_problem=problem,
    )
