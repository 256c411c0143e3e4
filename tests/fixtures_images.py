"""Fixtures for the images tests (and any test that needs them).

`tiny_repo_image` (session): a small real repository built and validated by the builder; returns its
ImageRecord (status ok). `images_home` (session) is the FORAGER_HOME it was built in, so its catalog
(`images_home / "catalog.jsonl"`) lists it. `make_tiny_repo(path)` writes the repository itself, for
tests that need the source (task synthesis mutates its functions).
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

TINY_PACKAGE = "tinycalc"

_CORE = '''\
"""Small, meaty functions: arithmetic, strings, loops and conditionals, each pinned by tests."""


def add(a, b):
    return a + b


def mean(values):
    if not values:
        raise ValueError("mean of an empty sequence")
    total = 0
    for value in values:
        total += value
    return total / len(values)


def clamp(value, low, high):
    if low > high:
        raise ValueError("low must not exceed high")
    if value < low:
        return low
    if value > high:
        return high
    return value


def slugify(text):
    words = []
    for word in text.strip().lower().split():
        cleaned = "".join(ch for ch in word if ch.isalnum())
        if cleaned:
            words.append(cleaned)
    return "-".join(words)


def count_vowels(text):
    count = 0
    for ch in text.lower():
        if ch in "aeiou":
            count += 1
    return count


def fizzbuzz(n):
    out = []
    for i in range(1, n + 1):
        if i % 15 == 0:
            out.append("FizzBuzz")
        elif i % 3 == 0:
            out.append("Fizz")
        elif i % 5 == 0:
            out.append("Buzz")
        else:
            out.append(str(i))
    return out
'''

_TESTS = '''\
import pytest

from tinycalc.core import add, clamp, count_vowels, fizzbuzz, mean, slugify


def test_add_integers():
    assert add(2, 3) == 5


def test_add_negative_and_strings():
    assert add(-4, 1) == -3
    assert add("ab", "cd") == "abcd"


def test_mean_of_values():
    assert mean([1, 2, 3, 4]) == 2.5


def test_mean_of_empty_raises():
    with pytest.raises(ValueError):
        mean([])


def test_clamp_inside_and_bounds():
    assert clamp(5, 0, 10) == 5
    assert clamp(0, 0, 10) == 0
    assert clamp(10, 0, 10) == 10


def test_clamp_outside():
    assert clamp(-3, 0, 10) == 0
    assert clamp(42, 0, 10) == 10


def test_clamp_bad_bounds():
    with pytest.raises(ValueError):
        clamp(1, 5, 2)


def test_slugify_words():
    assert slugify("  Hello World  ") == "hello-world"


def test_slugify_punctuation():
    assert slugify("Rock & Roll, Baby!") == "rock-roll-baby"


def test_count_vowels():
    assert count_vowels("Education") == 5
    assert count_vowels("rhythm") == 0


def test_fizzbuzz_prefix():
    assert fizzbuzz(5) == ["1", "2", "Fizz", "4", "Buzz"]


def test_fizzbuzz_fifteen():
    result = fizzbuzz(15)
    assert len(result) == 15
    assert result[14] == "FizzBuzz"
    assert result[8] == "Fizz"
'''

_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "tinycalc"
version = "0.1.0"
requires-python = ">=3.8"

[tool.setuptools]
packages = ["tinycalc"]
'''


def git_commit_all(path: Path, message: str) -> str:
    """Commit everything in `path` (a git repo) and return the new commit SHA."""
    # Fixed identity and dates: the same files give the same SHA in every session, so the content-addressed
    # images of earlier sessions are reused instead of piling up. The date is a recent one because
    # dependencies resolve as of the commit's date (images.history): 2025-01-15 resolves as of 2025-02-01.
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@localhost",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@localhost",
        "GIT_AUTHOR_DATE": "2025-01-15T00:00:00+0000",
        "GIT_COMMITTER_DATE": "2025-01-15T00:00:00+0000",
    }
    subprocess.run(["git", "add", "-A"], cwd=path, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--no-verify", "-m", message], cwd=path, check=True, env=env)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True, env=env, capture_output=True, text=True).stdout.strip()


def make_tiny_repo(path: str | Path) -> Path:
    """Write the tinycalc repository (package + 12 passing pytest tests) at `path`, committed in git."""
    path = Path(path)
    (path / TINY_PACKAGE).mkdir(parents=True, exist_ok=True)
    (path / "tests").mkdir(exist_ok=True)
    (path / TINY_PACKAGE / "__init__.py").write_text('"""tinycalc: a tiny package for builder and task tests."""\n')
    (path / TINY_PACKAGE / "core.py").write_text(_CORE)
    (path / "tests" / "test_core.py").write_text(_TESTS)
    (path / "pyproject.toml").write_text(_PYPROJECT)
    (path / "README.md").write_text(textwrap.dedent("# tinycalc\n\nA tiny package the Forager tests build into an image.\n"))
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    git_commit_all(path, "tinycalc")
    return path


@pytest.fixture(scope="session")
def images_home(tmp_path_factory) -> Path:
    """A FORAGER_HOME shared by the session's image builds (catalog, mirrors, logs)."""
    return tmp_path_factory.mktemp("images-home")


@pytest.fixture(scope="session")
def tiny_repo_path(tmp_path_factory) -> Path:
    return make_tiny_repo(tmp_path_factory.mktemp("tiny") / "tinycalc")


@pytest.fixture(scope="session")
def tiny_repo_image(base_image, images_home, tiny_repo_path):
    """The tinycalc repository built and validated by the builder: its ImageRecord (status ok)."""
    from forager.config import Settings
    from images.build import build_repo
    from images.sources import parse_entry

    record = build_repo(parse_entry(str(tiny_repo_path)), Settings(home=images_home))
    assert record.status == "ok", f"tiny repo did not build: {record.status}: {record.reason} (log {record.log_path})"
    return record
