"""Mutation operators and patches, on source text (no Docker): each candidate is one minimal, valid edit."""

import ast
import subprocess

import pytest

from forager.episodes.policies.oracle import parse_hunks
from forager.tasks.mutations import functions, unified_diff
from forager.tasks.operators import OPERATORS, mutate_function
from forager.tasks.synth import is_test_path, problem_statement

SOURCE = '''\
import math
from os import sep

# a comment that must survive every mutation
def area(w, h):
    """Area of a rectangle."""
    if w < 0 or h < 0:
        raise ValueError("negative")
    total = w * h + 0
    return total


class Shape:
    def scale(self, k):
        out = []
        for x in self.xs:
            if x:
                out.append(x * k)
        return out

    def norm(self, a, b):
        return math.sqrt(a ** 2 + b ** 2) if a else sep

    def diag(self, w, h):
        return math.pow(w, h)
'''


def changed(diff):
    return [l for l in diff.splitlines() if l[:1] in "+-" and not l.startswith(("+++", "---"))]


def test_functions_are_named_like_code_objects():
    names = [n for n, _ in functions(ast.parse(SOURCE))]
    assert names == ["area", "Shape.scale", "Shape.norm", "Shape.diag"]


def test_every_candidate_parses_changes_the_ast_and_keeps_the_rest_of_the_file():
    seen_ops = set()
    for fn in ("area", "Shape.scale", "Shape.norm", "Shape.diag"):
        cands = mutate_function("pkg/shapes.py", SOURCE, fn)
        assert cands
        for c in cands:
            assert ast.dump(ast.parse(c.source)) != ast.dump(ast.parse(SOURCE))
            assert "# a comment that must survive every mutation" in c.source
            assert c.function == fn and c.operator in OPERATORS
            seen_ops.add(c.operator)
        assert len({c.key(SOURCE) for c in cands}) == len(cands)  # no near-identical twins
    assert seen_ops == set(OPERATORS)


@pytest.mark.parametrize("operator, before, after", [
    ("flip_comparison", "    if w < 0 or h < 0:", "    if w >= 0 or h < 0:"),
    ("replace_operator", "    total = w * h + 0", "    total = w * h - 0"),
    ("swap_vars", "    total = w * h + 0", "    total = h * w + 0"),
    ("change_constant", "    total = w * h + 0", "    total = w * h + 1"),
])
def test_expression_mutations_touch_one_line(operator, before, after):
    cands = [c for c in mutate_function("a.py", SOURCE, "area") if c.operator == operator]
    diffs = [changed(c.diff(SOURCE)) for c in cands]
    assert ["-" + before, "+" + after] in diffs


def test_statement_removal_keeps_blocks_valid():
    cands = [c for c in mutate_function("a.py", SOURCE, "Shape.scale") if c.operator == "remove_statement"]
    only_stmt = [c for c in cands if "out.append" not in c.source and "for x in" in c.source]
    assert len(only_stmt) == 1 and "            if x:\n                pass\n" in only_stmt[0].source


def test_removed_conditional_keeps_body_dedented():
    cands = [c for c in mutate_function("a.py", SOURCE, "area") if c.description.startswith("removed an if condition")]
    assert changed(cands[0].diff(SOURCE)) == ['-    if w < 0 or h < 0:', '-        raise ValueError("negative")',
                                              '+    raise ValueError("negative")']


def test_precedence_is_preserved_with_parentheses_when_needed():
    src = "def f(a, b, c):\n    return a * (b + c)\n"
    ops = [c for c in mutate_function("m.py", src, "f") if c.operator == "replace_operator"]
    assert any("a * (b - c)" in c.source for c in ops)
    assert all(ast.parse(c.source) for c in ops)


def test_drop_import_targets_imports_the_function_uses():
    cands = [c for c in mutate_function("a.py", SOURCE, "Shape.norm") if c.operator == "drop_import"]
    assert sorted(changed(c.diff(SOURCE))[0] for c in cands) == ["-from os import sep", "-import math"]


def test_diff_applies_with_git_and_inverse_restores(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    src = SOURCE.rstrip("\n")  # no trailing newline: the diff must say so
    (tmp_path / "m.py").write_text(src)
    cand = next(c for c in mutate_function("m.py", src, "Shape.norm") if c.operator == "replace_operator")
    (tmp_path / "p.diff").write_text(cand.diff(src))
    subprocess.run(["git", "apply", "p.diff"], cwd=tmp_path, check=True)
    assert (tmp_path / "m.py").read_text() == cand.source
    (tmp_path / "g.diff").write_text(unified_diff("m.py", cand.source, src))
    subprocess.run(["git", "apply", "g.diff"], cwd=tmp_path, check=True)
    assert (tmp_path / "m.py").read_text() == src


def test_oracle_hunks_invert_the_mutation():
    cand = next(c for c in mutate_function("m.py", SOURCE, "area") if c.operator == "remove_body")
    gold = unified_diff("m.py", cand.source, SOURCE)
    (hunk,) = parse_hunks(gold)
    assert hunk.path == "m.py" and cand.source.count(hunk.old) == 1
    assert cand.source.replace(hunk.old, hunk.new) == SOURCE


def test_problem_statement_hides_tests_and_the_mutated_line():
    text = problem_statement("calc", ["tests/test_a.py::test_x"],
                             {"tests/test_a.py::test_x": "assert 4 == 5\n    total = w * h - 0"},
                             {"total = w * h - 0"}, hide_tests=True)
    assert "assert 4 == 5" in text and "w * h - 0" not in text and "test_x" not in text
    shown = problem_statement("calc", ["tests/test_a.py::test_x"], {}, set(), hide_tests=False)
    assert "tests/test_a.py::test_x" in shown


def test_test_paths():
    assert is_test_path("tests/test_a.py") and is_test_path("pkg/conftest.py") and is_test_path("a_test.py")
    assert not is_test_path("src/pkg/core.py")


def test_narrow_command_replaces_paths_with_node_ids():
    from forager.tasks.synth import narrow_command

    ids = ["tests/a.py::t1", "tests/b.py::T::t[x y]"]
    assert narrow_command("python -m pytest --continue-on-collection-errors tests", ids) == \
        "python -m pytest --continue-on-collection-errors tests/a.py::t1 'tests/b.py::T::t[x y]'"
    assert narrow_command("python -m pytest -k 'not slow' -p no:cacheprovider tests", ids[:1]) == \
        "python -m pytest -k 'not slow' -p no:cacheprovider tests/a.py::t1"
    assert narrow_command("tox -e py && pytest", ids) is None and narrow_command("make test", ids) is None


def test_fast_reject_runs_only_while_it_pays():
    """The covering-tests-first run is kept where it rejects often enough to save full suites, dropped where not."""
    from forager.tasks.synth import FastReject

    useless = FastReject(warmup=5, recheck=10)
    for _ in range(5):  # warm-up: always tried, measured
        assert useless.wanted()
        useless.record_fast(1.0, rejected=False)
        useless.record_full(2.0)
    assert not useless.pays()
    decisions = [useless.wanted() for _ in range(30)]
    assert decisions.count(True) == 3 and decisions[9] and not decisions[0]  # every 10th candidate re-measures

    useful = FastReject(warmup=5)
    for i in range(5):
        useful.record_fast(0.5, rejected=i < 4)  # 80% rejected, each saving a 5 s suite for 0.5 s
        useful.record_full(5.0)
    assert useful.pays() and all(useful.wanted() for _ in range(20))

    assert not FastReject(enabled=False).wanted()
