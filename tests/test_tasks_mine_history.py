"""Mining without Docker: the history walk and its rules on real git repositories the tests make, the patch
split, the fail-to-pass decision, and the problem statement."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from forager.errors import MiningError
from forager.tasks.codechange import same_code
from forager.tasks.failtopass import decide, narrowed_command
from forager.tasks.history import (Caps, clean_message, fix_words, issue_refs, read_commits, role_of, scan,
                                   split_patches)
from forager.tasks.statements import commit_statement
from tests.fixtures_images import git_commit_all


def git(path: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_the_history_verdicts(tinytext_history):
    path, shas = tinytext_history
    names = {sha: name for name, sha in shas.items()}
    verdicts = {names[v.commit.sha]: v for v in scan(str(path))}
    assert {n: v.verdict for n, v in verdicts.items()} == {
        "root": "root", "fix": "candidate", "docs": "docs_only", "refactor": "candidate", "bad_fix": "candidate",
        "flaky_fix": "candidate", "code_only": "no_tests"}
    assert {"word:fix", "exercises:slugify"} <= set(verdicts["fix"].evidence)
    assert [v.commit.sha for v in scan(str(path))][:2] == [shas["code_only"], shas["flaky_fix"]]  # newest first


def test_a_fix_splits_into_gold_and_hidden_test_patches(tinytext_history, tmp_path):
    path, shas = tinytext_history
    (commit,) = read_commits(str(path), shas["fix"], max_commits=1)
    patches = split_patches(str(path), commit)
    assert patches.test_files == patches.test_modules == ["tests/test_core.py"]
    assert patches.dropped == ["CHANGES.md"]
    assert "tinytext/_chars.py" in patches.gold_patch and "--- /dev/null" in patches.gold_patch
    assert "tests/" not in patches.gold_patch and "CHANGES" not in patches.gold_patch
    assert "tinytext/" not in patches.test_patch and "test_slugify_keeps_digits" in patches.test_patch
    # both apply to the parent, and together give the fix commit's code and tests
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(path), str(work)], check=True)
    git(work, "checkout", "-q", commit.parent)
    for name, patch in (("gold", patches.gold_patch), ("test", patches.test_patch)):
        (tmp_path / name).write_text(patch)
        git(work, "apply", str(tmp_path / name))
    for f in ("tinytext/core.py", "tinytext/_chars.py", "tests/test_core.py"):
        assert (work / f).read_text() == git(path, "show", f"{shas['fix']}:{f}") + "\n"
    assert not (work / "CHANGES.md").exists()


GIT_ID = ("-c", "user.name=t", "-c", "user.email=t@localhost")


def _repo(tmp_path: Path) -> Path:
    """pkg/{area,name,half}.py, each with its test module, one commit."""
    path = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    for fn, body in (("area", "w * h"), ("name", "str(w)"), ("half", "w / 2")):
        _write(path, {f"pkg/{fn}.py": f"def {fn}(w, h=1):\n    return {body}\n",
                      f"tests/test_{fn}.py": f"from pkg.{fn} import {fn}\n\n\ndef test_{fn}():\n    assert {fn}(2, 3)\n"})
    git_commit_all(path, "base")
    return path


def _write(path: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)


def _change(path: Path, files: dict[str, str], message: str) -> str:
    _write(path, files)
    return git_commit_all(path, message)


def _add(path: Path, rel: str, text: str) -> str:
    return (path / rel).read_text() + text


def _merge(path: Path, branch: str, message: str) -> str:
    git(path, *GIT_ID, "merge", "-q", "--no-ff", branch, "-m", message)
    return git(path, "rev-parse", "HEAD")


def test_each_rule_rejects_what_it_names(tmp_path):
    path = _repo(tmp_path)
    made: dict[str, str] = {}
    git(path, "checkout", "-q", "-b", "feature")
    made["pr_fix"] = _change(path, {"pkg/area.py": "def area(w, h=1):\n    return abs(w * h)\n",
                                    "tests/test_area.py": _add(path, "tests/test_area.py",
                                                               "\n\ndef test_negative():\n    assert area(-2, 3) == 6\n")},
                             "Fix area of negative sizes")
    git(path, "checkout", "-q", "main")
    made["pr_merge"] = _merge(path, "feature", "Merge pull request #9 from someone/feature")
    git(path, "checkout", "-q", "-b", "stable", made["pr_fix"] + "~1")
    _change(path, {"docs/notes.md": "notes\n"}, "Notes")
    half_fix = {"pkg/half.py": "def half(w, h=1):\n    return w // 2\n",
                "tests/test_half.py": _add(path, "tests/test_half.py", "\n\ndef test_int():\n    assert half(3) == 1\n")}
    made["stable_fix"] = _change(path, half_fix, "Fix half of odd numbers")
    git(path, "checkout", "-q", "main")
    made["backport"] = _change(path, half_fix, "Fix half of odd numbers (backport)")
    made["sync"] = _merge(path, "stable", "Merge branch 'stable'")
    made["no_tests"] = _change(path, {"pkg/name.py": _add(path, "pkg/name.py", "\n\nX = 1\n")}, "Fix X")
    made["no_library"] = _change(path, {"tests/test_more.py": "def test_x():\n    assert True\n"}, "Fix a test")
    made["vendored"] = _change(path, {"pkg/_vendor/six.py": "X = 2\n", "tests/test_more.py": "def test_x():\n    pass\n"},
                               "Fix vendored six")
    made["no_code"] = _change(path, {"setup.cfg": "[metadata]\nname = pkg\n",
                                     "tests/test_more.py": "def test_y():\n    pass\n"}, "Fix the metadata")
    made["too_large"] = _change(path, {"pkg/big.py": "".join(f"V{i} = {i}\n" for i in range(40)),
                                       "tests/test_big.py": "from pkg.big import V1\n\n\ndef test_v():\n    assert V1\n"},
                                "Fix big constants")
    made["no_fix_evidence"] = _change(path, {"pkg/name.py": _add(path, "pkg/name.py", "\n\ndef extra():\n    return 1\n"),
                                             "tests/test_name.py": _add(path, "tests/test_name.py",
                                                                        "\n\ndef test_extra():\n    pass\n")}, "Add extra")
    made["formatting"] = _change(path, {"pkg/area.py": "def area(w, h=1):\n    return abs(w*h)  # never negative\n",
                                        "tests/test_area.py": _add(path, "tests/test_area.py",
                                                                   "\n\ndef test_one():\n    assert area(1, 1) == 1\n")},
                                 "Fix style in area")
    made["tests_unrelated"] = _change(path, {"pkg/name.py": (path / "pkg/name.py").read_text().replace("str(w)", "repr(w)"),
                                             "tests/test_name.py": (path / "tests/test_name.py").read_text().replace(
                                                 "\n\ndef test_extra():\n    pass\n", "")}, "Fix name")
    verdicts = {v.commit.sha: v.verdict for v in scan(str(path), caps=Caps(max_lines=30))}
    got = {name: verdicts[sha] for name, sha in made.items()}
    # the same fix twice (a backport): whichever copy the walk meets first is the candidate, the other a duplicate
    assert sorted([got.pop("stable_fix"), got.pop("backport")]) == ["candidate", "duplicate"]
    assert got == {**{name: name for name in ("no_tests", "no_library", "vendored", "no_code", "too_large",
                                              "no_fix_evidence", "formatting", "tests_unrelated")},
                   "pr_fix": "candidate", "pr_merge": "pr_commits", "sync": "merge_unrelated"}
    assert sum(v.verdict == "root" for v in scan(str(path))) == 1
    assert len(scan(str(path), max_commits=3)) == 3 and scan(str(path), f"{made['sync']}..HEAD")[-1].commit.parent == made["sync"]


def test_a_merged_pull_request_is_one_unit_when_its_commits_are_not(tmp_path):
    path = _repo(tmp_path)
    git(path, "checkout", "-q", "-b", "feature")
    _change(path, {"pkg/area.py": "def area(w, h=1):\n    return abs(w * h)\n"}, "Fix area of negative sizes")
    _change(path, {"tests/test_area.py": _add(path, "tests/test_area.py", "\n\ndef test_negative():\n"
                                                                      "    assert area(-2, 3) == 6\n")}, "Test it")
    git(path, "checkout", "-q", "main")
    _merge(path, "feature", "Merge pull request #12 from someone/feature\n\nFix area of negative sizes")
    (merge, *branch) = scan(str(path), max_commits=3)
    assert merge.is_candidate and merge.pull_request == 12, merge
    assert [v.verdict for v in branch] == ["no_library", "no_tests"]
    patches = split_patches(str(path), merge.commit)
    assert "pkg/area.py" in patches.gold_patch and patches.test_files == ["tests/test_area.py"]


def test_paths_messages_and_code():
    assert [role_of(p) for p in ("tests/test_a.py", "src/pkg/conftest.py", "pkg/a_test.py", "docs/x.py", "CHANGES.rst",
                                 "changelog.d/1.bugfix", "README.md", ".github/workflows/ci.yml", "pkg/_vendor/x.py",
                                 "src/pkg/core.py", "setup.py", "pkg/static/style.css")] == [
        "test", "test", "test", "docs", "docs", "docs", "docs", "docs", "vendored", "library", "library", "library"]
    message = ("Fix parsing of dates (#120)\n\nCloses #118, see gh-7.\n\nSigned-off-by: A <a@b>\nCo-authored-by: B <b@c>")
    assert clean_message(message) == "Fix parsing of dates (#120)\n\nCloses #118, see gh-7."
    assert issue_refs(message) == [7, 118, 120] and issue_refs(message, evidence=True) == [7, 118]
    assert issue_refs("Merge pull request #5 from a/b\n\nTidy #6", 5) == [6]
    assert issue_refs("Add a prefix option (#44)", evidence=True) == [] and fix_words("Add a prefix option") == []
    assert fix_words("Handle crashes in the parser") == ["crashes", "handle"]
    assert same_code("def f(x):\n    '''Doc.'''\n    return x  # c\n", "def f( x ):\n\n    return (x)\n")
    assert not same_code("def f(x):\n    return x\n", "def f(x):\n    return -x\n")
    assert not same_code("def f(:\n", "def f(:\n  ")


def test_histories_that_cannot_be_mined_are_clear_errors(tmp_path, tinytext_history):
    with pytest.raises(MiningError, match="not a git repository"):
        scan(str(tmp_path))
    subprocess.run(["git", "init", "-q", str(tmp_path / "empty")], check=True)
    with pytest.raises(MiningError, match="no commits"):
        scan(str(tmp_path / "empty"))
    with pytest.raises(MiningError, match="cannot walk 'nosuch..HEAD'"):
        scan(str(tinytext_history[0]), "nosuch..HEAD")
    with pytest.raises(MiningError, match="is not a range"):
        scan(str(tinytext_history[0]), "--output=/tmp/x")
    with pytest.raises(MiningError, match="not its top"):
        scan(str(tinytext_history[0] / "tinytext"))
    subprocess.run(["git", "clone", "-q", "--mirror", str(tinytext_history[0]), str(tmp_path / "bare.git")], check=True)
    assert len(scan(str(tmp_path / "bare.git"))) == len(tinytext_history[1])  # a bare mirror is a history too


def test_fail_to_pass_decision():
    p, f, e = "passed", "failed", "error"
    before = [{"a": f, "b": p, "c": e, "flip": f, "gone": f}, {"a": f, "b": p, "c": e, "flip": p, "gone": f},
              {"a": f, "b": p, "c": e, "flip": f, "gone": f}]
    after = [{"a": p, "b": p, "c": e, "flip": p, "new": p}] * 3
    j = decide(before, after)
    assert (j.verdict, j.fail_to_pass, j.pass_to_pass, j.flaky) == ("task", ["a", "new"], ["b"], ["flip"])
    assert decide([{"a": p, "b": f}], [{"a": f, "b": p}]).verdict == "regression"
    flaky_only = decide([{"x": f}, {"x": p}], [{"x": p}, {"x": p}])
    assert flaky_only.verdict == "flaky" and flaky_only.flaky == ["x"] and not flaky_only.fail_to_pass
    still = decide([{"x": f, "y": p}], [{"x": f, "y": p}])
    assert still.verdict == "no_f2p" and "fail before the fix and after it" in still.detail
    assert narrowed_command("python -m pytest -q tests", ["tests/test_a.py"]) == "python -m pytest -q tests/test_a.py"
    assert narrowed_command("python -m pytest -q tests", []) == "python -m pytest -q tests"


def test_the_statement_is_the_message_and_the_failures_never_the_fix():
    gold = "--- a/pkg/core.py\n+++ b/pkg/core.py\n@@ -1 +1 @@\n-    return w * h\n+    return abs(w) * abs(h)\n"
    message = ("Fix area of negative sizes (#31)\n\nNegative sizes gave negative areas.\nNow: `return abs(w) * abs(h)`."
               "\ntest_negative covers it.\n\nSigned-off-by: A <a@b>")
    f2p = ["tests/test_core.py::test_negative"]
    messages = {f2p[0]: "AssertionError: assert -6 == 6"}
    text = commit_statement(message, issue_refs(message), f2p, messages, gold)
    assert text.startswith("Fix area of negative sizes\n") and "Negative sizes gave negative areas." in text
    assert "#31" in text and "AssertionError: assert -6 == 6" in text
    assert "abs(w) * abs(h)" not in text and "test_negative" not in text and "Signed-off-by" not in text
    shown = commit_statement(message, [], f2p, messages, gold, hide_tests=False)
    assert "tests/test_core.py::test_negative" in shown and "abs(w) * abs(h)" not in shown


def test_a_build_that_docker_broke_is_tried_again_but_a_commit_that_does_not_build_is_a_verdict(tinytext_history):
    from forager.models import ImageRecord
    from forager.tasks import mine as mine_module

    path, shas = tinytext_history
    (fix,) = [v for v in scan(str(path)) if v.commit.sha == shas["fix"]]
    calls = []

    def build(reason):
        def run(entry):
            calls.append(entry)
            return ImageRecord(repo="tinytext", source=entry, status="install", reason=reason)
        return run

    opts = mine_module.MineOptions()
    pruned = "repository layer failed: failed to get digest sha256:b63b: open /var/lib/docker/image/x: no such file"
    verdict, detail, task, _ = mine_module._mine_one(fix, str(path), "src", build(pruned), None, opts, backend=None)
    assert (verdict, task, len(calls)) == ("error", None, 2) and "failed to get digest" in detail
    calls.clear()
    verdict, detail, _, _ = mine_module._mine_one(fix, str(path), "src", build("No matching distribution for foo==9"),
                                                  None, opts, backend=None)
    assert (verdict, calls) == ("build_failed", [f"src@{shas['root']}"])


def test_a_test_module_that_cannot_be_imported_is_named_with_its_error():
    from forager.tasks.failtopass import collection_errors

    report = ('<testsuites><testsuite><testcase classname="" name="tests.test_basic" file="tests/test_basic.py">'
              '<error message="collection failure">tests/test_basic.py:3: in &lt;module&gt;\n'
              "E   pytest.PytestRemovedIn10Warning: Passing a non-Collection iterable to parametrize is deprecated.\n"
              "E   Please convert to a list or tuple.</error></testcase>"
              '<testcase classname="tests.test_a" name="test_x" file="tests/test_a.py"><failure message="assert 1 == 2"/>'
              "</testcase></testsuite></testsuites>")
    assert collection_errors(report) == {"tests/test_basic.py::tests.test_basic": (
        "pytest.PytestRemovedIn10Warning: Passing a non-Collection iterable to parametrize is deprecated.")}
