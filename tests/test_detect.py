"""Detection from manifests alone: Python version, dependencies, install and test commands; overrides win."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from images.detect import DetectError, detect
from images.sources import parse_entry

AVAILABLE = ["3.11"]


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def spec(**overrides):
    return parse_entry("pypi:demo==1.0", **overrides)


def test_requires_python_excluding_every_local_version_fails_with_the_reason(tmp_path):
    write(tmp_path, {"pyproject.toml": '[project]\nname = "demo"\nversion = "1"\nrequires-python = "<3.10"\n'})
    with pytest.raises(DetectError, match=r"3\.11.*requires-python '<3.10'"):
        detect(tmp_path, spec(), AVAILABLE)


def test_python_2_only_classifiers_fail(tmp_path):
    write(
        tmp_path,
        {
            "setup.py": """\
            from setuptools import setup
            setup(name="old", classifiers=["Programming Language :: Python :: 2.7", "Programming Language :: Python :: 2"])
            """
        },
    )
    with pytest.raises(DetectError, match="only Python 2"):
        detect(tmp_path, spec(), AVAILABLE)


def test_compatible_constraints_choose_the_local_version(tmp_path):
    write(
        tmp_path,
        {
            "setup.cfg": "[metadata]\nname = demo\nclassifiers =\n    Programming Language :: Python :: 3.8\n    Programming Language :: Python :: 3.11\n"
            "[options]\npython_requires = >=3.8\n",
            "setup.py": "from setuptools import setup\nsetup()\n",
            "tox.ini": "[tox]\nenvlist = py38,py311\n",
        },
    )
    det = detect(tmp_path, spec(), AVAILABLE)
    assert det.python == "3.11"
    assert any("requires-python=>=3.8" in n for n in det.notes)


def test_missing_base_and_unavailable_override_are_detect_errors(tmp_path):
    write(tmp_path, {"setup.py": "from setuptools import setup\nsetup()\n"})
    with pytest.raises(DetectError, match="forager setup"):
        detect(tmp_path, spec(), [])
    with pytest.raises(DetectError, match="3.9 was asked for"):
        detect(tmp_path, spec(python="3.9"), AVAILABLE)


def test_dependencies_from_pyproject_extras_groups_requirements_and_tox(tmp_path):
    write(
        tmp_path,
        {
            "pyproject.toml": """\
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "Demo"
            version = "1"
            dependencies = ["attrs>=22"]

            [project.optional-dependencies]
            tests = ["hypothesis", "demo[speed]"]
            speed = ["ujson"]
            docs = ["sphinx"]

            [dependency-groups]
            test = [{include-group = "base"}, "pytest-mock"]
            base = ["freezegun"]
            lint = ["ruff"]
            """,
            "requirements/tests.txt": "-r common.txt\nresponses==0.25.0  # pinned\n-e .\n",
            "requirements/common.txt": "iniconfig\n",
            "requirements/docs.txt": "sphinx-rtd-theme\n",
            "tox.ini": "[testenv]\ndeps =\n    coverage\n    -r{toxinidir}/requirements/tests.txt\n",
        },
    )
    det = detect(tmp_path, spec(), AVAILABLE)
    reqs = det.requirements
    for wanted in ["hatchling", "editables", "attrs>=22", "hypothesis", "ujson", "pytest-mock", "freezegun", "iniconfig", "responses==0.25.0", "coverage", "pytest"]:
        assert wanted in reqs, wanted
    for unwanted in ["sphinx", "ruff", "sphinx-rtd-theme", "demo[speed]", "-e ."]:
        assert unwanted not in reqs, unwanted
    assert reqs.count("iniconfig") == 1
    assert det.install[0].startswith("python -m pip install --no-deps --no-build-isolation --use-pep517 -e .")


def test_setup_py_literals_and_default_build_requirements(tmp_path):
    write(
        tmp_path,
        {
            "setup.py": """\
            from setuptools import setup
            setup(
                name="legacy",
                install_requires=["six>=1.10"],
                tests_require=["mock"],
                extras_require={"test": ["nose2"], "yaml": ["pyyaml"]},
            )
            """,
            "test_legacy.py": "import unittest\n\nclass T(unittest.TestCase):\n    def test_x(self):\n        pass\n",
        },
    )
    det = detect(tmp_path, spec(), AVAILABLE)
    assert det.requirements[:2] == ["setuptools>=40.8.0", "wheel"]  # pip's default without [build-system]
    assert {"six>=1.10", "mock", "nose2", "pytest"} <= set(det.requirements)
    assert "pyyaml" not in det.requirements
    # A unittest suite is run through pytest, and the record says which.
    assert det.test_runner == "unittest"
    assert det.test_command == "python -m pytest --continue-on-collection-errors test_legacy.py"


def test_test_command_follows_pytest_testpaths_or_test_dirs(tmp_path):
    configured = write(
        tmp_path / "a",
        {"pyproject.toml": '[project]\nname = "a"\nversion = "1"\n[tool.pytest.ini_options]\ntestpaths = ["checks"]\n', "checks/test_a.py": "def test_a():\n    pass\n"},
    )
    assert detect(configured, spec(), AVAILABLE).test_command == "python -m pytest --continue-on-collection-errors"
    dirs = write(tmp_path / "b", {"setup.py": "from setuptools import setup\nsetup()\n", "tests/test_b.py": "import pytest\n"})
    det = detect(dirs, spec(), AVAILABLE)
    assert det.test_command == "python -m pytest --continue-on-collection-errors tests" and det.test_runner == "pytest"


def test_overrides_win(tmp_path):
    write(tmp_path, {"setup.py": "from setuptools import setup\nsetup()\n", "tests/test_b.py": "def test_b():\n    pass\n"})
    det = detect(
        tmp_path,
        spec(test_command="python -m pytest -x tests/test_b.py", install=["pip install --no-deps ."], system_packages=["libyaml-dev"]),
        AVAILABLE,
    )
    assert det.test_command == "python -m pytest -x tests/test_b.py"
    assert det.install == ["pip install --no-deps ."]
    assert det.system_packages == ["libyaml-dev"]


def test_tree_without_packaging_is_not_installed(tmp_path):
    write(tmp_path, {"calc.py": "def f():\n    return 1\n", "test_calc.py": "from calc import f\n\ndef test_f():\n    assert f() == 1\n"})
    det = detect(tmp_path, spec(), AVAILABLE)
    assert det.install == [] and det.requirements == ["pytest", "pytest-timeout"]
    assert det.test_command == "python -m pytest --continue-on-collection-errors test_calc.py"


def test_plugins_named_by_pytest_addopts_join_the_dependencies(tmp_path):
    write(
        tmp_path,
        {
            "pyproject.toml": '[project]\nname = "p"\nversion = "1"\n[project.optional-dependencies]\ntest = ["pytest-timeout"]\n'
            '[tool.pytest.ini_options]\naddopts = "--cov=p --cov-report=term -n 2 --timeout 30"\nrequired_plugins = ["pytest-mock>=3"]\n',
            "tests/test_p.py": "def test_p():\n    pass\n",
        },
    )
    reqs = detect(tmp_path, spec(), AVAILABLE).requirements
    assert {"pytest-cov", "pytest-xdist", "pytest-mock>=3", "pytest-timeout"} <= set(reqs)
    assert reqs.count("pytest-timeout") == 1


def test_a_tests_folder_without_python_tests_is_not_the_target(tmp_path):
    write(tmp_path, {"setup.py": "from setuptools import setup\nsetup(name='k')\n", "tests/SolverTest.cpp": "int main(){}\n",
                     "py/tests/test_solver.py": "def test_s():\n    pass\n"})
    det = detect(tmp_path, spec(), AVAILABLE)
    assert det.test_command == "python -m pytest --continue-on-collection-errors"  # pytest's own discovery finds py/tests
