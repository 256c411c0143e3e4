"""Detection's reach without Docker: requirement files chosen as a person would, includes that stay in the
tree, compiled code and system libraries, the Python a commit gets, dates, failure classes, history."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from forager.errors import DetectError, SetupError
from forager.models import RepoSpec
from images import base, failures, history
from images.detect import detect
from images.manifests import Manifests
from images.python_version import rank_pythons
from images.toolchain import detect_toolchain, packages_for_headers
from tests.fixtures_images import git_commit_all

ALL = ["3.9", "3.11", "3.13"]
SETUP_PY = "from setuptools import setup\nsetup(name='proj', version='1', packages=['proj'])\n"


def spec(**kw) -> RepoSpec:
    return RepoSpec(source="x", kind="local", location="/x", name="proj", **kw)


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def ts(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp()


# ---------------------------------------------------------------- requirement files


def test_tox_evidence_picks_the_test_file_and_never_min_pins_docs_or_typing(tmp_path):
    root = tree(tmp_path, {
        "setup.py": SETUP_PY,
        "requirements/tests.txt": "pytest==7.3.1\nblinker==1.6.2\n",
        "requirements/tests-pallets-min.txt": "werkzeug==2.3.0\nblinker==1.6.0\n",
        "requirements/docs.txt": "sphinx==6.2.1\n",
        "requirements/typing.txt": "mypy==1.3.0\n",
        "tox.ini": "[testenv]\ndeps =\n    -r requirements/tests.txt\n    min: -r requirements/tests-pallets-min.txt\n"
                   "    dev: https://example.invalid/werkzeug/main.tar.gz\n",
    })
    det = detect(root, spec(), ALL)
    assert "pytest==7.3.1" in det.requirements and "blinker==1.6.2" in det.requirements
    assert not [r for r in det.requirements if r.startswith(("werkzeug", "blinker==1.6.0", "sphinx", "mypy"))]
    assert "pytest-timeout" in det.requirements  # validation's per-test limit needs it in every image
    assert any("named by the project's tox/nox/CI: ['requirements/tests.txt']" in n for n in det.notes)


def test_without_evidence_names_decide_and_min_pins_stay_out(tmp_path):
    root = tree(tmp_path, {
        "setup.py": SETUP_PY,
        "requirements.txt": "attrs>=20\n",
        "test-requirements.txt": "pytest-mock\n",
        "requirements-minimum.txt": "attrs==20.1.0\n",
        "docs-requirements.txt": "sphinx\n",
    })
    det = detect(root, spec(), ALL)
    assert "attrs>=20" in det.requirements and "pytest-mock" in det.requirements
    assert "attrs==20.1.0" not in det.requirements and "sphinx" not in det.requirements


@pytest.mark.parametrize("where", ["requirements-test.txt", "tox.ini"])
def test_an_include_that_leaves_the_tree_is_refused(tmp_path, where):
    root = tmp_path / "repo"
    files = {"setup.py": SETUP_PY, "requirements-test.txt": "pytest\n"}
    if where == "tox.ini":
        files["tox.ini"] = "[testenv]\ndeps =\n    -r ../../etc/hostname\n"
    else:
        files["requirements-test.txt"] = "pytest\n-r ../../etc/hostname\n"
    tree(root, files)
    with pytest.raises(DetectError) as caught:
        detect(root, spec(), ALL)
    message = str(caught.value)
    assert where in message and "-r ../../etc/hostname" in message and "leaves the repository tree" in message


def test_a_requirement_file_symlinked_out_of_the_tree_is_refused(tmp_path):
    root = tree(tmp_path / "repo", {"setup.py": SETUP_PY})
    (root / "requirements.txt").symlink_to("/etc/hostname")
    with pytest.raises(DetectError, match="requirement file requirements.txt leaves the repository tree"):
        detect(root, spec(), ALL)


# ---------------------------------------------------------------- compiled code and system libraries


def test_compiled_code_is_detected_from_the_projects_own_files(tmp_path):
    ext = tree(tmp_path / "ext", {"setup.py": "from setuptools import setup, Extension\nsetup(ext_modules=[Extension('m', ['m.c'])])\n"})
    cython = tree(tmp_path / "cy", {"pyproject.toml": '[build-system]\nrequires=["setuptools"]\n', "pkg/fast.pyx": "def f(): pass\n"})
    rust = tree(tmp_path / "rs", {"pyproject.toml": '[build-system]\nrequires=["maturin>=1"]\nbuild-backend="maturin"\n',
                                  "Cargo.toml": '[package]\nname="x"\nrust-version="1.70"\n'})
    pure = tree(tmp_path / "pure", {"setup.py": SETUP_PY, "tests/data/sample.c": "int main(){}\n"})
    assert detect_toolchain(Manifests(ext), []).needs_compiler
    assert detect_toolchain(Manifests(cython), []).needs_compiler
    tc = detect_toolchain(Manifests(rust), [])
    assert tc.needs_rust and tc.rust_version == "1.70"
    assert not detect_toolchain(Manifests(pure), []).needs_compiler


def test_system_libraries_from_ci_lines_and_dependency_pairs(tmp_path):
    root = tree(tmp_path, {
        "setup.py": SETUP_PY,
        ".github/workflows/ci.yml": "steps:\n  - run: sudo apt-get install -y libgdal-dev texlive-full \\\n      cmake xvfb\n",
    })
    tc = detect_toolchain(Manifests(root), ["lxml>=4", "PyYAML", "psycopg2-binary"])
    assert {"libgdal-dev", "cmake", "libxml2-dev", "libxslt1-dev", "libyaml-dev"} <= set(tc.libraries)
    assert "texlive-full" not in tc.libraries and "xvfb" not in tc.libraries  # tools of CI, not libraries
    assert packages_for_headers("src/x.c:1:10: fatal error: jpeglib.h: No such file or directory") == ["libjpeg-dev"]


def test_rust_moves_to_a_release_whose_cargo_is_new_enough_or_says_why_not(tmp_path):
    files = {"pyproject.toml": '[build-system]\nrequires=["maturin>=1"]\nbuild-backend="maturin"\n[project]\nname="r"\nversion="1"\n'}
    root = tree(tmp_path / "a", {**files, "Cargo.toml": '[package]\nname="r"\nrust-version="1.70"\n'})
    det = detect(root, spec(), ALL, commit_date=ts("2025-03-01"))
    assert det.python == "3.13" and det.rust and det.toolchain_problem is None  # bookworm's rustc 1.63 is too old
    too_new = tree(tmp_path / "b", {**files, "Cargo.toml": '[package]\nname="r"\nrust-version="1.99"\n'})
    problem = detect(too_new, spec(), ALL).toolchain_problem
    assert "needs rustc 1.99" in problem and "(1, 85, 0)" not in problem and "rustc 1.85 is older than the 1.99" in problem


# ---------------------------------------------------------------- Python and dates


@pytest.mark.parametrize("files, when, expected", [
    ({"setup.py": SETUP_PY.replace("version='1',", "version='1', python_requires='<3.10',")}, "2025-01-01", "3.9"),
    ({"setup.py": SETUP_PY}, "2021-06-01", "3.9"),  # the Python of the commit's time
    ({"setup.py": SETUP_PY}, "2025-06-01", "3.11"),  # newer commits: the default
    ({"pyproject.toml": '[project]\nname="p"\nversion="1"\nrequires-python=">=3.12"\n'}, "2025-06-01", "3.13"),
])
def test_python_is_one_the_commit_supports_close_to_its_date(tmp_path, files, when, expected):
    notes: list[str] = []
    assert rank_pythons(Manifests(tree(tmp_path, files)), spec(), ALL, notes, ts(when))[0] == expected


def test_resolution_date_rounds_up_to_the_next_month():
    assert history.resolution_date(ts("2023-05-31T09:19:14")) == "2023-06-01T00:00:00Z"
    assert history.resolution_date(ts("2021-12-03")) == "2022-01-01T00:00:00Z"
    assert history.resolution_date(None) is None


def test_failure_classes_come_from_the_build_log():
    assert failures.classify("  × No solution found when resolving dependencies:\n  ╰─▶ Because ...")[0] == "resolution"
    assert failures.classify("src/m.c:3:10: fatal error: libpq-fe.h: No such file or directory")[0] == "system_library"
    assert failures.classify("E: Unable to locate package libnope-dev")[0] == "system_library"
    assert failures.classify("error: command 'x86_64-linux-gnu-gcc' failed: No such file or directory")[0] == "toolchain"
    assert failures.classify("m.c:1:10: fatal error: Python.h: No such file or directory")[0] == "toolchain"
    assert failures.classify("error: can't find Rust compiler")[0] == "toolchain"
    assert failures.classify("SyntaxError: invalid syntax")[0] == "install"
    assert failures.classify("failed to create endpoint x on network bridge: could not find bridge docker0")[0] == "error"
    assert failures.network_error("failed to get destination image \"sha256:31c6\"")
    assert failures.network_error("No such image: sha256:10751fee") and failures.network_error("Temporary failure in name resolution")
    assert failures.missing_compiler("unable to execute 'x86_64-linux-gnu-gcc': No such file or directory")


def test_commits_option_takes_parents_of_test_touching_commits(tmp_path):
    import git

    repo_dir = tree(tmp_path / "h", {"setup.py": SETUP_PY, "proj/__init__.py": ""})
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo_dir)], check=True)
    first = git_commit_all(repo_dir, "code")
    (repo_dir / "tests").mkdir()
    (repo_dir / "tests/test_a.py").write_text("def test_a():\n    pass\n")
    git_commit_all(repo_dir, "a test")
    (repo_dir / "proj/__init__.py").write_text("X = 1\n")
    second = git_commit_all(repo_dir, "code only")
    (repo_dir / "tests/test_a.py").write_text("def test_a():\n    assert True\n")
    git_commit_all(repo_dir, "test change")
    parents = history.test_touching_parents(git.Repo(repo_dir), "HEAD", 5)
    assert parents == [second, first]


# ---------------------------------------------------------------- credentials and networks


def test_pip_credentials_are_stripped_from_the_image_pip_conf(tmp_path, monkeypatch):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://user:s3cret@pypi.example/simple\n"
                    "extra-index-url = https://tok@extra.example/simple file:///opt/local\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    text = base.host_pip_conf()
    assert "index-url = https://pypi.example/simple" in text and "https://extra.example/simple" in text
    assert "s3cret" not in text and "user" not in text and "tok@" not in text and "file:" not in text


def test_base_images_build_on_the_bridge_network(monkeypatch, tmp_path):
    seen = {}

    class Images:
        def build(self, **kwargs):
            seen.update(kwargs)

    class Client:
        images = Images()

    base._build_base(Client(), "forager/rootfs:bookworm", "forager/base:test", log=lambda _m: None)
    assert seen["network_mode"] == "bridge"


def test_setup_pythons_option_is_checked():
    from forager.cli.machine import parse_pythons

    assert parse_pythons("all") == ["3.11", "3.9", "3.13"]
    assert parse_pythons("3.9") == ["3.11", "3.9"] and parse_pythons("") == ["3.11"]
    with pytest.raises(SetupError, match="3.10"):
        parse_pythons("3.10")


def test_setup_py_keywords_given_by_name_take_the_module_level_literal(tmp_path):
    root = tree(tmp_path, {"setup.py": "from setuptools import setup\nrequires = ['urllib3>=1.21.1,<1.27', 'idna']\n"
                                       "setup(name='r', install_requires=requires)\n"})
    det = detect(root, spec(), ALL)
    assert "urllib3>=1.21.1,<1.27" in det.requirements and "idna" in det.requirements


def test_a_stale_tests_require_pin_yields_to_the_file_tox_installs(tmp_path):
    root = tree(tmp_path, {
        "setup.py": "from setuptools import setup\ntest_requirements = ['pytest-httpbin==0.0.7', 'pytest-mock']\n"
                    "EXTRAS = {'a': ['x']}\nEXTRAS['tests'] = EXTRAS['a'] + ['hypothesis']\n"
                    "setup(name='r', tests_require=test_requirements, extras_require=EXTRAS)\n",
        "requirements-dev.txt": "pytest-httpbin==1.0.0\n",
        "tox.ini": "[testenv]\ndeps = -rrequirements-dev.txt\n",
    })
    det = detect(root, spec(), ALL)
    assert "pytest-httpbin==1.0.0" in det.requirements and "pytest-httpbin==0.0.7" not in det.requirements
    assert "pytest-mock" in det.requirements and {"x", "hypothesis"} <= set(det.requirements)  # built by `+`


def test_cython_sources_whose_c_file_git_lacks_are_cythonized_first(tmp_path):
    root = tree(tmp_path, {"pyproject.toml": '[build-system]\nrequires = ["setuptools"]\n',
                           "setup.py": "from setuptools import setup, Extension\n"
                                       "setup(ext_modules=[Extension('pkg._fast', ['pkg/_fast.c'])])\n",
                           "pkg/_fast.pyx": "def f():\n    return 1\n"})
    det = detect(root, spec(), ALL)
    assert det.install[0].startswith("for f in pkg/_fast.pyx;") and "Cython" in det.requirements and det.toolchain
