"""Repository lists and sources: parsing with line-numbered errors, overrides, and the mirror cache."""

from __future__ import annotations

import shutil
import subprocess


import pytest

from images.sources import SourceError, fetch, parse_entry, parse_list
from tests.fixtures_images import git_commit_all, make_tiny_repo


def test_parse_list_reports_malformed_lines_and_keeps_the_rest(tmp_path):
    local = tmp_path / "somerepo"
    local.mkdir()
    listing = tmp_path / "repos.txt"
    listing.write_text(
        "# a comment line\n"
        "pypi:six==1.17.0   # the sdist\n"
        "\n"
        "psf/requests@v2.31.0\n"
        "this is not an entry\n"
        "https://example.org/group/tool.git@abc123\n"
        "pypi:idna\n"
        f"{local}@main\n"
        "git@example.org:team/project.git\n"
        "??/!!\n"
    )
    specs, errors = parse_list(listing)
    assert [(s.kind, s.name, s.ref, s.line) for s in specs] == [
        ("pypi", "six", "1.17.0", 2),
        ("github", "requests", "v2.31.0", 4),
        ("git", "tool", "abc123", 6),
        ("local", "somerepo", "main", 8),
        ("git", "project", None, 9),
    ]
    assert specs[1].location == "https://github.com/psf/requests.git"
    assert specs[2].location == "https://example.org/group/tool.git"
    assert specs[3].location == str(local.resolve())
    assert len(errors) == 3
    assert errors[0].startswith(f"{listing}:5:") and "whitespace" in errors[0]
    assert errors[1].startswith(f"{listing}:7:") and "pin a version" in errors[1]
    assert errors[2].startswith(f"{listing}:10:")


def test_relative_local_paths_resolve_against_the_list_file(tmp_path):
    (tmp_path / "checkouts" / "lib").mkdir(parents=True)
    listing = tmp_path / "repos.txt"
    listing.write_text("./checkouts/lib\n")
    specs, errors = parse_list(listing)
    assert errors == []
    assert specs[0].kind == "local" and specs[0].location == str((tmp_path / "checkouts" / "lib").resolve())


def test_yaml_overrides_and_line_numbers(tmp_path):
    listing = tmp_path / "repos.yaml"
    listing.write_text(
        "- pypi:six==1.17.0\n"
        "- source: pypi:inflection==0.5.1\n"
        "  test_command: python -m pytest -x test_inflection.py\n"
        "  python: 3.11\n"
        "  install: pip install -e .\n"
        "  system_packages: [libxml2-dev]\n"
        "- source: pypi:idna==3.20\n"
        "  colour: blue\n"
        "- 42\n"
    )
    specs, errors = parse_list(listing)
    assert [s.name for s in specs] == ["six", "inflection"]
    inflection = specs[1]
    assert inflection.test_command == "python -m pytest -x test_inflection.py"
    assert inflection.python == "3.11" and inflection.install == ["pip install -e ."]
    assert inflection.system_packages == ["libxml2-dev"] and inflection.line == 2
    assert len(errors) == 2
    assert errors[0].startswith(f"{listing}:7:") and "colour" in errors[0]
    assert errors[1].startswith(f"{listing}:9:")


def test_toml_list(tmp_path):
    listing = tmp_path / "repos.toml"
    listing.write_text('[[repos]]\nsource = "pypi:six==1.17.0"\ntest_command = "python -m pytest test_six.py"\n\n[[repos]]\nsource = "nope nope"\n')
    specs, errors = parse_list(listing)
    assert [(s.name, s.test_command) for s in specs] == [("six", "python -m pytest test_six.py")]
    assert len(errors) == 1 and "entry 2" in errors[0]


def test_parse_entry_rejects_garbage_clearly():
    with pytest.raises(ValueError, match="unrecognised entry"):
        parse_entry("just-a-word")
    with pytest.raises(ValueError, match="empty ref"):
        parse_entry("owner/name@")


def test_mirror_serves_a_pinned_ref_without_the_source(tmp_path):
    src = make_tiny_repo(tmp_path / "tiny")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, check=True).stdout.strip()
    mirrors = tmp_path / "mirrors"
    spec = parse_entry(f"{src}@{head}")
    _repo, sha = fetch(spec, mirrors, log=lambda _m: None)
    assert sha == head
    # The source disappears: a pinned commit is served from the mirror, nothing is fetched.
    shutil.move(str(src), str(tmp_path / "moved"))
    messages: list[str] = []
    _repo, again = fetch(spec, mirrors, log=messages.append)
    assert again == head
    assert any("mirror hit" in m for m in messages)
    assert not any("fetching" in m or "cloning" in m for m in messages)


def test_mirror_follows_a_branch_to_its_new_commit(tmp_path):
    src = make_tiny_repo(tmp_path / "tiny")
    mirrors = tmp_path / "mirrors"
    _repo, first = fetch(parse_entry(str(src)), mirrors, log=lambda _m: None)
    (src / "NEWS.md").write_text("changed\n")
    second_head = git_commit_all(src, "news")
    _repo, second = fetch(parse_entry(str(src)), mirrors, log=lambda _m: None)
    assert first != second == second_head


def test_unknown_ref_is_a_clone_error(tmp_path):
    src = make_tiny_repo(tmp_path / "tiny")
    with pytest.raises(SourceError, match="not found"):
        fetch(parse_entry(f"{src}@no-such-tag"), tmp_path / "mirrors", log=lambda _m: None)


def test_plain_directory_snapshot_is_deterministic(tmp_path):
    plain = tmp_path / "plain"
    (plain / "pkg").mkdir(parents=True)
    (plain / "pkg" / "__init__.py").write_text("X = 1\n")
    a = fetch(parse_entry(str(plain)), tmp_path / "m1", log=lambda _m: None)[1]
    b = fetch(parse_entry(str(plain)), tmp_path / "m2", log=lambda _m: None)[1]
    assert a == b
    (plain / "pkg" / "__init__.py").write_text("X = 2\n")
    c = fetch(parse_entry(str(plain)), tmp_path / "m1", log=lambda _m: None)[1]
    assert c != a


def test_pypi_sdist_becomes_a_one_commit_repo(tmp_path):
    mirrors = tmp_path / "mirrors"
    repo, sha = fetch(parse_entry("pypi:six==1.17.0"), mirrors, log=lambda _m: None)
    assert len(list(repo.iter_commits())) == 1
    files = repo.git.ls_files().splitlines()
    assert "six.py" in files and "test_six.py" in files
    # Cached: the second fetch downloads nothing and yields the same deterministic commit.
    messages: list[str] = []
    assert fetch(parse_entry("pypi:six==1.17.0"), mirrors, log=messages.append)[1] == sha
    assert any("mirror hit" in m for m in messages) and not any("pip download" in m or "$ " in m for m in messages)


def test_missing_pypi_release_is_a_clone_error(tmp_path):
    with pytest.raises(SourceError, match="pip download"):
        fetch(parse_entry("pypi:six==0.0.0.404"), tmp_path / "mirrors", log=lambda _m: None)


def test_git_url_with_a_tag_ref(tmp_path):
    src = make_tiny_repo(tmp_path / "tiny")
    subprocess.run(["git", "tag", "v1.0"], cwd=src, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, check=True).stdout.strip()
    spec = parse_entry(f"file://{src}@v1.0")
    assert (spec.kind, spec.ref, spec.name) == ("git", "v1.0", "tiny")
    assert fetch(spec, tmp_path / "mirrors", log=lambda _m: None)[1] == head
