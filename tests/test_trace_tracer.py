"""The tracer itself, in this process: exact frames, '..' diffs, caps, safe repr, no side effects."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from forager.trace import tracer as T

KNOWN = '''\
class Loud:
    def __repr__(self):
        raise RuntimeError("no repr")


def countdown(n):
    while n > 0:
        yield n
        n -= 1


def fact(n):
    if n <= 1:
        return 1
    return n * fact(n - 1)


def safe_div(a, b):
    try:
        return a / b
    except ZeroDivisionError:
        return None


def known(n):
    total = 0
    for i in range(n):
        total += i
    items = list(countdown(2))
    ratio = safe_div(total, 0)
    obj = Loud()
    return fact(n), total, items, ratio


class Slow:
    def __repr__(self):
        while True:
            pass


def slow_local():
    s = Slow()
    text = "x" * 5000
    return len(text)


def boom(x):
    y = x + 1
    raise ValueError(y)


def uses_json(d):
    import json
    return json.dumps(d)


def deco(fn):
    return fn


@deco
def decorated(x):
    key = lambda v: -v
    return sorted([x, 1], key=key)
'''

FAILED = "<repr failed: RuntimeError>"
RAISE = KNOWN.splitlines().index("    raise ValueError(y)") + 1

# (event, line, depth, locals | value): the whole trace of known(3), by hand.
EXPECTED = [
    ("call", 25, 0, {"n": "3"}),
    ("line", 26, 0, {"n": ".."}),
    ("line", 27, 0, {"n": "..", "total": "0"}),
    ("line", 28, 0, {"n": "..", "total": "..", "i": "0"}),
    ("line", 27, 0, {"n": "..", "total": "..", "i": ".."}),
    ("line", 28, 0, {"n": "..", "total": "..", "i": "1"}),
    ("line", 27, 0, {"n": "..", "total": "1", "i": ".."}),
    ("line", 28, 0, {"n": "..", "total": "..", "i": "2"}),
    ("line", 27, 0, {"n": "..", "total": "3", "i": ".."}),
    ("line", 29, 0, {"n": "..", "total": "..", "i": ".."}),
    # a generator: every resumption is a new call of the same scope, with its locals in full
    ("call", 6, 1, {"n": "2"}),
    ("line", 7, 1, {"n": ".."}),
    ("line", 8, 1, {"n": ".."}),
    ("return", 8, 1, "2"),
    ("call", 8, 1, {"n": "2"}),
    ("line", 9, 1, {"n": ".."}),
    ("line", 7, 1, {"n": "1"}),
    ("line", 8, 1, {"n": ".."}),
    ("return", 8, 1, "1"),
    ("call", 8, 1, {"n": "1"}),
    ("line", 9, 1, {"n": ".."}),
    ("line", 7, 1, {"n": "0"}),
    ("return", 7, 1, "None"),
    ("line", 30, 0, {"n": "..", "total": "..", "i": "..", "items": "[2, 1]"}),
    # a raised and caught exception
    ("call", 18, 1, {"a": "3", "b": "0"}),
    ("line", 19, 1, {"a": "..", "b": ".."}),
    ("line", 20, 1, {"a": "..", "b": ".."}),
    ("exception", 20, 1, "ZeroDivisionError('division by zero')"),
    ("line", 21, 1, {"a": "..", "b": ".."}),
    ("line", 22, 1, {"a": "..", "b": ".."}),
    ("return", 22, 1, "None"),
    ("line", 31, 0, {"n": "..", "total": "..", "i": "..", "items": "..", "ratio": "None"}),
    # an object whose __repr__ raises
    ("line", 32, 0, {"n": "..", "total": "..", "i": "..", "items": "..", "ratio": "..", "obj": FAILED}),
    # recursion
    ("call", 12, 1, {"n": "3"}),
    ("line", 13, 1, {"n": ".."}),
    ("line", 15, 1, {"n": ".."}),
    ("call", 12, 2, {"n": "2"}),
    ("line", 13, 2, {"n": ".."}),
    ("line", 15, 2, {"n": ".."}),
    ("call", 12, 3, {"n": "1"}),
    ("line", 13, 3, {"n": ".."}),
    ("line", 14, 3, {"n": ".."}),
    ("return", 14, 3, "1"),
    ("return", 15, 2, "2"),
    ("return", 15, 1, "6"),
    ("return", 32, 0, "(6, 3, [2, 1], None)"),
]


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    root = tmp_path_factory.mktemp("knownrepo")
    (root / "known.py").write_text(KNOWN)
    spec = importlib.util.spec_from_file_location("known", root / "known.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return root, module


def compact(frames):
    return [(f["event"], f["line"], f["depth"], f.get("locals", f.get("value"))) for f in frames]


def trace_one(root, func, *args, **limits):
    tracer = T.Tracer([str(root)], **limits)
    try:
        return tracer.trace_call(func, args)
    finally:
        tracer.close()


def test_known_function_gives_the_exact_frame_sequence(known):
    root, mod = known
    result, error, traces = trace_one(root, mod.known, 3)
    assert (result, error) == ((6, 3, [2, 1], None), None)
    assert len(traces) == 1
    trace = traces[0]
    assert compact(trace["frames"]) == EXPECTED
    lines = KNOWN.splitlines(keepends=True)
    assert all(f["source"] == lines[f["line"] - 1] for f in trace["frames"])
    assert trace["function"] == "known:known" and trace["file"] == "known.py" and trace["line"] == 25
    assert trace["source"].startswith("def known(n):\n") and trace["entry_line"] == 1
    assert not trace["truncated"] and trace["events"] == len(EXPECTED) and trace["exception"] is None


def test_a_deterministic_function_traced_twice_gives_identical_traces(known):
    root, mod = known
    first = trace_one(root, mod.known, 4)[2]
    second = trace_one(root, mod.known, 4)[2]
    assert first == second and json.dumps(first) == json.dumps(second)


@pytest.mark.parametrize("limit,reason", [({"max_events": 7}, "events"), ({"max_bytes": 600}, "bytes")])
def test_caps_mark_the_trace_truncated(known, limit, reason):
    root, mod = known
    result, _, (trace,) = trace_one(root, mod.known, 3, **limit)
    assert result == (6, 3, [2, 1], None)  # the program ran to the end regardless
    assert trace["truncated"] and trace["truncated_reason"] == reason
    assert 0 < len(trace["frames"]) < len(EXPECTED) and trace["events"] > len(trace["frames"])
    assert compact(trace["frames"]) == EXPECTED[: len(trace["frames"])]  # a prefix, never a patchwork
    if reason == "events":
        assert len(trace["frames"]) == 7


def test_slow_and_long_reprs_become_markers(known):
    root, mod = known
    result, error, (trace,) = trace_one(root, mod.slow_local, repr_timeout=0.2, max_repr=100)
    assert (result, error) == (5000, None)
    lines = [f["locals"] for f in trace["frames"] if f["event"] == "line"]
    assert [shown["s"] for shown in lines if "s" in shown] == [T.REPR_TIMEOUT, ".."]
    assert lines[-1]["text"] == repr("x" * 100)[:100] + T.CUT


def test_a_raising_entry_keeps_its_behaviour_and_records_the_exception(known):
    root, mod = known
    with pytest.raises(ValueError) as plain:
        mod.boom(1)
    _, error, (trace,) = trace_one(root, mod.boom, 1)
    assert type(error) is ValueError and error.args == plain.value.args
    assert compact(trace["frames"])[-2:] == [("exception", RAISE, 0, "ValueError(2)"), ("return", RAISE, 0, "None")]
    assert trace["exception"] == "ValueError(2)"


def test_call_frames_show_the_def_line_and_lambdas_their_own_line(known):
    root, mod = known
    result, _, (trace,) = trace_one(root, mod.decorated, 2)
    assert result == [2, 1]
    calls = [(f["source"], f["depth"]) for f in trace["frames"] if f["event"] == "call"]
    assert calls == [("def decorated(x):\n", 0)] + [("    key = lambda v: -v\n", 1)] * 2
    assert trace["source"].startswith("@deco\ndef decorated(x):") and trace["entry_line"] == 2


def test_previous_settrace_is_restored(known):
    root, mod = known
    seen = []

    def outer(frame, event, arg):
        seen.append(event)
        return None

    sys.settrace(outer)
    try:
        trace_one(root, mod.fact, 3)
        assert sys.gettrace() is outer
    finally:
        sys.settrace(None)


def test_tracing_stays_in_the_repository_unless_asked(known):
    root, mod = known
    _, _, (inside,) = trace_one(root, mod.uses_json, {"a": 1})
    assert {f["depth"] for f in inside["frames"]} == {0}  # json's own code is not traced
    tracer = T.Tracer([str(root)], follow_libraries=True)
    _, _, (everything,) = tracer.trace_call(mod.uses_json, ({"a": 1},))
    tracer.close()
    assert any(f["event"] == "call" and f["depth"] == 1 for f in everything["frames"])
    assert len(everything["frames"]) > len(inside["frames"])


def test_every_called_function_gets_its_own_first_n_traces(known):
    root, mod = known
    traces = []
    tracer = T.Tracer([str(root)], on_trace=traces.append, max_calls=2)
    tracer.start()
    try:
        mod.known(3)
    finally:
        tracer.stop()
        tracer.close()
    by_function = {}
    for trace in traces:
        by_function.setdefault(trace["function"], []).append(trace)
    assert sorted(by_function) == ["known:countdown", "known:fact", "known:known", "known:safe_div"]
    assert [t["call_index"] for t in by_function["known:fact"]] == [1, 0]  # inner call finishes first
    outer_fact = by_function["known:fact"][1]
    assert compact(outer_fact["frames"]) == [(e, l, d - 1, x) for e, l, d, x in EXPECTED[33:45]]
    assert len(by_function["known:countdown"]) == 2  # capped at max_calls resumptions


def test_call_expressions_are_parsed_and_bad_ones_rejected(known):
    root, mod = known
    func, args, kwargs = T.parse_call("fact(3, *[1], x={'a': [1]})", {"fact": mod.fact})
    assert func is mod.fact and args == [3, 1] and kwargs == {"x": {"a": [1]}}
    func, args, _ = T.parse_call("json:dumps([1, 2])")
    assert func is json.dumps and args == [[1, 2]]
    for bad in ("fact", "fact(", "1 + 2"):
        with pytest.raises(ValueError):
            T.parse_call(bad, {"fact": mod.fact})


def test_script_traces_a_snippet(tmp_path):
    snippet = tmp_path / "snip.py"
    snippet.write_text("def f(x):\n    y = x * 2\n    return y\n")
    out = subprocess.run(
        [sys.executable, T.__file__, "call", "--snippet", str(snippet), "f(21)"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    ).stdout
    trace = json.loads(out)
    assert compact(trace["frames"]) == [
        ("call", 1, 0, {"x": "21"}),
        ("line", 2, 0, {"x": ".."}),
        ("line", 3, 0, {"x": "..", "y": "42"}),
        ("return", 3, 0, "42"),
    ]
    bad = subprocess.run([sys.executable, T.__file__, "call", "--snippet", str(snippet), "g(1)"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "NameError" in bad.stderr


def test_pytest_plugin_traces_functions_the_tests_call(tmp_path):
    repo = tmp_path / "proj"
    (repo / "pkg").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "ops.py").write_text(textwrap.dedent("""\
        def double(x):
            return helper(x) * 2

        def helper(x):
            return x + 0
    """))
    (repo / "tests" / "test_ops.py").write_text(textwrap.dedent("""\
        from pkg.ops import double

        def test_double():
            for i in range(5):
                assert double(i) == 2 * i
    """))
    out = tmp_path / "out"
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "forager_tracer.py").write_text(Path(T.__file__).read_text())
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{plugin_dir}:{repo}", "FORAGER_TRACE_OUT": str(out),
           "FORAGER_TRACE_ROOT": str(repo), "FORAGER_TRACE_MAX_CALLS": "2"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "forager_tracer", "-p", "no:cacheprovider",
                           "tests"], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    traces = [json.loads(line) for f in out.glob("*.jsonl") for line in f.read_text().splitlines()]
    counts = {}
    for trace in traces:
        counts[trace["function"]] = counts.get(trace["function"], 0) + 1
        assert trace["test"] == "tests/test_ops.py::test_double"
    assert counts == {"pkg.ops:double": 2, "pkg.ops:helper": 2}  # the test function itself is not a target


SIDE_EFFECT = '''\
class Lazy:
    calls = 0

    def __repr__(self):
        Lazy.calls += 1
        return "Lazy()"


def use(n):
    lazy = Lazy()
    pair = (lazy, [n, {"k": lazy}], frozenset(), set(), (n,))
    return Lazy.calls + n
'''


def test_safe_repr_never_runs_repository_repr_code(tmp_path):
    (tmp_path / "lazy.py").write_text(SIDE_EFFECT)
    spec = importlib.util.spec_from_file_location("lazy", tmp_path / "lazy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result, _, _ = trace_one(tmp_path, mod.use, 1)
    assert result > 1  # full repr (CWM's default) runs the __repr__, and the program sees it
    mod.Lazy.calls = 0
    tracer = T.Tracer([str(tmp_path)], safe_repr=True)
    result, _, (trace,) = tracer.trace_call(mod.use, (1,))
    tracer.close()
    assert result == 1 and mod.Lazy.calls == 0
    last = [f for f in trace["frames"] if f["event"] == "line"][-1]["locals"]
    assert last["lazy"] == "..", last
    assert last["pair"] == "(<lazy.Lazy object>, [1, {'k': <lazy.Lazy object>}], frozenset(), set(), (1,))"


def test_safe_repr_renders_cycles_like_repr():
    reprs = T.Reprs(1000, 0, untrusted=lambda code: True)
    loop: list = [1]
    loop.append(loop)
    nested = {"a": [loop, (2,)], "b": set(), "c": frozenset({3})}
    assert reprs(loop) == repr(loop) == "[1, [...]]"
    assert reprs(nested) == repr(nested)
    reprs.close()


def test_addresses_are_masked_in_object_reprs_but_never_in_strings():
    reprs = T.Reprs(1000, 0)
    assert reprs(object()) == "<object object at 0x..>"
    assert reprs("text at 0x1f") == "'text at 0x1f'"
    assert reprs(10 ** 5000) == "<repr failed: ValueError>"  # int -> str digit limit, not a crash
    reprs.close()
