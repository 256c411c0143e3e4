"""Fixtures for the mining tests: a small package's git history with one commit of each kind, mined once.

`make_history(path)` writes the `tinytext` repository, commit by commit (fixed identity and dates, so the
same SHAs and images every session), and returns {name: sha}:

    root      the package and its tests (the first commit: nothing to fix)
    fix       "Fix slugify dropping digits (#3)": core.py and a new _chars.py, a test that fails before,
              a changelog line (dropped); its body quotes an added line and has a Signed-off-by trailer
    docs      README and docs/ only
    refactor  "Refactor clamp; fix a lint warning": same behaviour, a new test that passes before and after
    bad_fix   "Fix mean of an empty list (#5)": its new test fails after the fix too
    flaky_fix "Fix word_count on tabs and newlines (#7)": a new test module with a real failing test and a
              test that passes and fails on alternate runs (flaky)
    code_only "Return 0 for the mean of an empty list": code alone, no test (it also makes the head's
              suite pass again, so the head image builds for `forager run`)

`mined` (session): `forager tasks mine` run through the CLI on that history, certifying with the session's
env server; it returns the parsed --json summary, stderr, the FORAGER_HOME and the history's SHAs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures_images import git_commit_all

ROOT = Path(__file__).resolve().parent.parent

PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "tinytext"
version = "0.1.0"
requires-python = ">=3.8"

[tool.setuptools]
packages = ["tinytext"]
"""

CORE = '''"""Text helpers."""


def slugify(text):
    words = []
    for word in text.strip().lower().split():
        cleaned = "".join(ch for ch in word if ch.isalpha())
        if cleaned:
            words.append(cleaned)
    return "-".join(words)


def clamp(value, low, high):
    if value < low:
        return low
    if value > high:
        return high
    return value


def mean(values):
    if not values:
        raise ValueError("mean of an empty sequence")
    return sum(values) / len(values)


def word_count(text):
    return len(text.split(" "))
'''

TESTS = '''import pytest

from tinytext.core import clamp, mean, slugify, word_count


def test_slugify_words():
    assert slugify("  Hello World ") == "hello-world"


def test_clamp():
    assert clamp(5, 0, 10) == 5
    assert clamp(-1, 0, 10) == 0


def test_mean():
    assert mean([1, 2, 3]) == 2


def test_mean_of_empty_raises():
    with pytest.raises(ValueError):
        mean([])


def test_word_count_spaces():
    assert word_count("a b c") == 3
'''

FLAKY_TEST = '''import os

from tinytext.core import word_count


def test_word_count_whitespace():
    assert word_count("a\\tb\\nc  d") == 4


def test_word_count_timing():
    # passes and fails on alternate runs in the same container: a flaky test
    marker = "/tmp/tinytext-flaky-marker"
    first = not os.path.exists(marker)
    if first:
        open(marker, "w").close()
    else:
        os.remove(marker)
    assert first
'''

FLAKY_NAME = "tests/test_words.py::test_word_count_timing"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def make_history(path: str | Path) -> dict[str, str]:
    """Write the tinytext history at `path` (a new git repository); {commit name: sha}."""
    path = Path(path)
    (path / "tinytext").mkdir(parents=True)
    (path / "tests").mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "pyproject.toml").write_text(PYPROJECT)
    (path / "README.md").write_text("# tinytext\n")
    (path / "tinytext" / "__init__.py").write_text('"""tinytext."""\n')
    (path / "tinytext" / "core.py").write_text(CORE)
    (path / "tests" / "test_core.py").write_text(TESTS)
    shas = {"root": git_commit_all(path, "tinytext: a few text helpers")}

    (path / "tinytext" / "_chars.py").write_text('"""Which characters a slug keeps."""\n\n\ndef keep(ch):\n'
                                                  '    return ch.isalnum()\n')
    _edit(path / "tinytext" / "core.py", '"""Text helpers."""\n', '"""Text helpers."""\n\nfrom tinytext._chars import keep\n')
    _edit(path / "tinytext" / "core.py", "if ch.isalpha())", "if keep(ch))")
    _edit(path / "tests" / "test_core.py", "def test_clamp():",
          'def test_slugify_keeps_digits():\n    assert slugify("Route 66 east") == "route-66-east"\n\n\ndef test_clamp():')
    (path / "CHANGES.md").write_text("- slugify keeps digits\n")
    shas["fix"] = git_commit_all(path, 'Fix slugify dropping digits (#3)\n\nslugify("Route 66") lost the number.\n'
                                       'The helper now does `return ch.isalnum()` for each character.\n\n'
                                       "Signed-off-by: A Developer <dev@example.org>")

    (path / "docs").mkdir()
    (path / "docs" / "usage.md").write_text("# Usage\n\n`slugify(text)` makes a slug.\n")
    _edit(path / "README.md", "# tinytext\n", "# tinytext\n\nSmall text helpers: slugify, clamp, mean.\n")
    shas["docs"] = git_commit_all(path, "Document slugify and clamp")

    _edit(path / "tinytext" / "core.py", "    if value < low:\n        return low\n    if value > high:\n"
          "        return high\n    return value\n", "    return max(low, min(value, high))\n")
    _edit(path / "tests" / "test_core.py", "def test_mean():",
          "def test_clamp_edges():\n    assert clamp(10, 0, 10) == 10\n    assert clamp(11, 0, 10) == 10\n\n\n"
          "def test_mean():")
    shas["refactor"] = git_commit_all(path, "Refactor clamp; fix a lint warning")

    _edit(path / "tinytext" / "core.py", '        raise ValueError("mean of an empty sequence")', "        return None")
    _edit(path / "tests" / "test_core.py", "def test_mean_of_empty_raises():\n    with pytest.raises(ValueError):\n"
          "        mean([])\n", "def test_mean_of_empty_is_zero():\n    assert mean([]) == 0\n")
    shas["bad_fix"] = git_commit_all(path, "Fix mean of an empty list (#5)")

    _edit(path / "tinytext" / "core.py", 'return len(text.split(" "))', "return len(text.split())")
    (path / "tests" / "test_words.py").write_text(FLAKY_TEST)
    shas["flaky_fix"] = git_commit_all(path, "Fix word_count on tabs and newlines (#7)")

    _edit(path / "tinytext" / "core.py", "        return None", "        return 0.0")
    shas["code_only"] = git_commit_all(path, "Return 0 for the mean of an empty list")
    return shas


@dataclass
class Mined:
    summary: dict
    stderr: str
    home: Path
    history: Path
    shas: dict[str, str]
    env: dict[str, str]


def mine_cli(env: dict[str, str], *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forager.cli", "tasks", "mine", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tinytext_history(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("history") / "tinytext"
    return path, make_history(path)


@pytest.fixture(scope="session")
def mined(tinytext_history, base_image, envserver, tmp_path_factory) -> Mined:
    """The history mined once through the CLI (`--json`), certified by the session's env server."""
    history, shas = tinytext_history
    home = tmp_path_factory.mktemp("mining-home")
    env = {**os.environ, "FORAGER_HOME": str(home), "FORAGER_ENVSERVER_URL": envserver.url,
           "FORAGER_ENVSERVER_TOKEN": envserver.token, "PYTHONPATH": str(ROOT)}
    # two runs catch the fixture's flaky test (it alternates); two gradings per certificate keep it k of k
    out = mine_cli(env, str(history), "--json", "-j", "2", "--runs", "2", "-k", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    return Mined(json.loads(out.stdout), out.stderr, home, history, shas, env)
