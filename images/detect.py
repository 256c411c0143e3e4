"""Detection without a model: from a source tree, choose the Python version, the dependency list, the
install commands and the test command. Per-entry overrides (RepoSpec) win over everything detected.

The dependency list is distilled from the manifests (pyproject, setup.cfg, setup.py, requirements*.txt,
tox.ini) into plain requirement lines, so the dependency layer needs none of the repository's code and
its key changes only when the dependencies do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from forager.errors import DetectError
from forager.models import RepoSpec
from images.dependencies import requirements as distil_requirements
from images.manifests import Manifests
from images.python_version import choose_python
from images.test_command import test_command as choose_test_command

__all__ = ["Detection", "DetectError", "detect"]
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


def detect(root: Path, spec: RepoSpec, available: list[str]) -> Detection:
    """Detect how to build and test the tree at `root`; `available` lists the local base Python versions."""
    notes: list[str] = []
    meta = Manifests(root)
    python = choose_python(meta, spec, available, notes)
    requirements = distil_requirements(meta, notes)
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
        ]
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
    )
