"""Forager's execution tracer: CWM-style call/line/return/exception frames of Python code.

Standalone and stdlib-only on purpose: this one file is copied into a repository image and run
there, under whatever Python the image has (3.8+). It works three ways:

  * as a library: ``Tracer(roots=[...]).trace_call(func, args, kwargs)`` -> one trace dict;
  * as a pytest plugin: ``python -m pytest -p forager_tracer`` traces the first N calls of every
    repository function the tests exercise (settings from FORAGER_TRACE_* environment variables);
  * as a script: ``python forager_tracer.py call 'pkg.mod:func(1, [2])'`` or, for a snippet,
    ``python forager_tracer.py call --snippet code.py 'f(3)'``.

A frame is ``{"event", "line", "source", "depth", "locals" | "value"}``. ``locals`` maps names to
``repr`` strings, with ``".."`` for a value whose repr is unchanged since the previous frame of the
same scope (one scope = one frame object between its call and its return, as CWM does). Only code
under ``roots`` is followed (not the standard library or site-packages unless asked), from the
entry call down. Caps on events and bytes mark a trace truncated instead of silently cutting it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import linecache
import os
import re
import reprlib
import sys
import threading
import time

DIFF = ".."
CUT = "...<cut>"
REPR_TIMEOUT = "<repr timed out>"
REPR_FAILED = "<repr failed: {}>"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# reprs of these types are cheap and cannot run user code: no watchdog needed
_PLAIN = {int, float, bool, type(None), complex, str, bytes}
_CONTAINERS = {list, tuple, dict, set, frozenset}
_SMALL = {bool, float, type(None)}  # repr is short, cannot fail and runs no user code (int may: >4300 digits)
_CO_OPTIMIZED = inspect.CO_OPTIMIZED
_SKIP, _FOLLOW, _ENTRY = 0, 1, 2
_DEF = re.compile(r"\s*(async\s+)?def\s")
_TEST_FILE = re.compile(r"(^|/)(test_[^/]*|[^/]*_test|conftest)\.py$|(^|/)tests?/")

DEFAULTS = {
    "max_events": 10_000,  # frames per trace
    "max_bytes": 1_000_000,  # approximate payload bytes per trace
    "max_repr": 1_000,  # characters per repr before it is cut
    "repr_timeout": 0.5,  # seconds before a repr is interrupted
    "max_calls": 3,  # traces per function (pytest mode)
}


class _ReprTimeout(BaseException):
    """Raised inside a slow __repr__ by the watchdog; BaseException so `except Exception` in user
    code does not swallow it."""


class _Watchdog:
    """Interrupts a repr running past its deadline by raising _ReprTimeout in the tracing thread.

    A polling thread instead of SIGALRM: signals belong to the traced program (pytest-timeout,
    its own alarms), and a thread-state async exception touches nothing of it.
    """

    def __init__(self, timeout: float):
        import ctypes  # here, so a Python without ctypes still traces (without the watchdog)

        self._set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
        self._ulong = ctypes.c_ulong
        self._exc = ctypes.py_object(_ReprTimeout)
        self.timeout = timeout
        self.thread_id = threading.get_ident()
        self.lock = threading.Lock()
        self.deadline = None
        self.fired = False
        self.stopped = threading.Event()
        threading.Thread(target=self._run, name="forager-trace-watchdog", daemon=True).start()

    def _run(self) -> None:
        while not self.stopped.wait(self.timeout / 4):
            with self.lock:
                if self.deadline is not None and not self.fired and time.monotonic() > self.deadline:
                    self.fired = True
                    self._set_async_exc(self._ulong(self.thread_id), self._exc)

    def arm(self) -> None:
        with self.lock:
            self.deadline = time.monotonic() + self.timeout
            self.fired = False

    def disarm(self) -> bool:
        """Stop watching; True when an interrupt was sent (it must then be drained, see below)."""
        with self.lock:
            fired, self.deadline, self.fired = self.fired, None, False
        return fired

    @staticmethod
    def drain() -> None:
        # An interrupt sent just as the repr finished is still pending: let it arrive here, in a
        # loop of our own bytecode, rather than cancel it (cancelling leaves CPython's eval-breaker
        # flag set, which spins the interpreter) or let it escape into the traced program.
        try:
            for _ in range(10_000_000):
                pass
        except _ReprTimeout:
            pass

    def close(self) -> None:
        self.stopped.set()


class Reprs:
    """repr() made safe for tracing: cut when long, a marker when it raises or hangs, addresses
    masked so the same program gives the same trace.

    With `untrusted(code) -> bool` (safe mode), a __repr__ written in the traced repository is never
    run: a __repr__ can have side effects (a lazy value computed, a counter bumped), and the traced
    program must behave as it does untraced. Such objects show as `<module.Class object>`, and
    builtin containers are rendered here so their elements get the same treatment.
    """

    def __init__(self, max_repr: int, timeout: float, untrusted=None):
        self.max_repr = max_repr
        self.untrusted = untrusted
        self.slow_types: set = set()
        self.big = reprlib.Repr()
        for attr in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
            setattr(self.big, attr, max_repr // 4 or 1)
        self.big.maxstring = self.big.maxother = self.big.maxlong = max_repr
        try:
            self.watchdog = _Watchdog(timeout) if timeout > 0 else None
        except (ImportError, AttributeError):
            self.watchdog = None

    def __call__(self, value) -> str:
        kind = type(value)
        try:
            if kind in _PLAIN:
                if kind in (str, bytes) and len(value) > self.max_repr:
                    return repr(value[: self.max_repr])[: self.max_repr] + CUT
                text = repr(value)
                # a str's own text is data, not an address: never masked
                return text if len(text) <= self.max_repr else text[: self.max_repr] + CUT
            if kind in self.slow_types:
                return REPR_TIMEOUT
            if self.untrusted is not None:
                text = self._watched(self._safe, value)
            elif kind in _CONTAINERS and len(value) > self.max_repr:
                text = self._watched(self.big.repr, value)  # a million-element list: abbreviate, never build it all
            else:
                text = self._watched(repr, value)
        except Exception as exc:  # noqa: BLE001 - any failing __repr__ becomes a marker
            return REPR_FAILED.format(type(exc).__name__)
        except _ReprTimeout:
            self.slow_types.add(kind)  # do not wait again on the same type
            return REPR_TIMEOUT
        if not isinstance(text, str):
            return REPR_FAILED.format("TypeError")
        if len(text) > self.max_repr:
            text = text[: self.max_repr] + CUT
        if " at 0x" in text:
            text = _ADDRESS.sub(" at 0x..", text)
        return text

    def _safe(self, value, seen: tuple = ()) -> str:
        kind = type(value)
        if kind in _PLAIN:
            return repr(value[: self.max_repr] if kind in (str, bytes) else value)
        if kind in _CONTAINERS:
            if id(value) in seen or len(seen) >= 6:  # a cycle (as repr shows it), or too deep to matter
                return "[...]" if kind is list else "{...}" if kind is dict else "(...)"
            seen = (*seen, id(value))
            limit = self.max_repr // 4 or 1
            if kind is dict:
                parts = [f"{self._safe(k, seen)}: {self._safe(v, seen)}" for k, v in _first(value.items(), limit)]
            else:
                parts = [self._safe(item, seen) for item in _first(value, limit)]
            if len(value) > limit:
                parts.append("...")
            body = ", ".join(parts)
            if kind is list:
                return f"[{body}]"
            if kind is tuple:
                return f"({body},)" if len(value) == 1 else f"({body})"
            if kind is dict:
                return f"{{{body}}}"
            if not parts:
                return f"{kind.__name__}()"
            return f"{{{body}}}" if kind is set else f"frozenset({{{body}}})"
        method = getattr(kind, "__repr__", None)
        code = getattr(method, "__code__", None)
        if code is not None and self.untrusted(code):
            return f"<{kind.__module__}.{kind.__qualname__} object>"
        return repr(value)

    def _watched(self, fn, value) -> str:
        dog = self.watchdog
        if dog is None or dog.thread_id != threading.get_ident():
            return fn(value)
        dog.arm()
        try:
            text = fn(value)
        except _ReprTimeout:
            dog.disarm()  # delivered: nothing pending
            raise
        except BaseException:
            if dog.disarm():
                dog.drain()
            raise
        if dog.disarm():
            dog.drain()
        return text

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.close()


class _Recorder:
    """One trace being recorded: the entry frame and the frames seen since its call."""

    __slots__ = ("frame", "depth", "frames", "bytes", "events", "truncated", "meta")

    def __init__(self, frame, depth: int, meta: dict):
        self.frame, self.depth, self.meta = frame, depth, meta
        self.frames: list = []
        self.bytes = 0
        self.events = 0
        self.truncated = None


class Tracer:
    """Traces calls into code under `roots` with sys.settrace, restoring the previous tracer after.

    Every call of an entry function (a repository function outside the tests, first `max_calls`
    calls each; or, with `targets`, just those code objects) opens a trace that records its frames and those
    of the repository code it calls, until the entry frame returns. Traces can nest: a helper
    called inside a traced function gets its own trace too, sharing the rendered frames.
    """

    def __init__(self, roots, *, follow_libraries: bool = False, safe_repr: bool = False, on_trace=None, **limits):
        unknown = set(limits) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown tracer limits: {sorted(unknown)}")
        self.limits = {**DEFAULTS, **limits}
        self._max_events, self._max_bytes = self.limits["max_events"], self.limits["max_bytes"]
        self._lines: dict = {}  # (code, line number) -> source line
        self.roots = [os.path.realpath(r).rstrip(os.sep) + os.sep for r in roots]
        self.follow_libraries = follow_libraries
        self.on_trace = on_trace or (lambda trace: None)
        self._kinds: dict = {}
        self._libs = self._library_dirs()
        self._repo_code: dict = {}
        untrusted = self._in_repository if safe_repr else None
        self.reprs = Reprs(self.limits["max_repr"], self.limits["repr_timeout"], untrusted)
        self.targets = None  # code objects that may open a trace; None = any repository function
        self.context: dict = {}  # merged into every trace (e.g. the test node id)
        self.calls: dict = {}  # code -> traces opened
        self.errors: list = []
        self._scopes: dict = {}  # frame -> [depth, {name: last repr}]
        self._active: list = []
        self._previous = None
        self._thread = None
        self._budget = None  # traces that may still open (trace_call: exactly one)

    # ---------------------------------------------------------------- public

    def start(self) -> None:
        self._previous = sys.gettrace()
        self._thread = threading.get_ident()
        sys.settrace(self._on_call)

    def stop(self) -> None:
        if self._thread != threading.get_ident():
            return
        sys.settrace(self._previous)
        self._thread = None
        for rec in reversed(self._active):  # entry frames still open (e.g. the tracer stopped inside one)
            rec.truncated = rec.truncated or "stopped"
            self._finish(rec)
        self._active.clear()
        self._scopes.clear()

    def close(self) -> None:
        self.reprs.close()

    def trace_call(self, func, args=(), kwargs=None):
        """Call func(*args, **kwargs) under the tracer; returns (result, exception, traces)."""
        traces: list = []
        saved = self.on_trace, self.targets, self._budget
        self.on_trace = traces.append
        code = _code_of(func)
        # the function itself opens the trace; a class or builtin: the first repository function it runs
        self.targets = {code} if code is not None else None
        self._budget = 1
        result = error = None
        self.start()
        try:
            result = func(*args, **(kwargs or {}))
        except Exception as exc:  # noqa: BLE001 - the traced function may raise; the trace shows it
            error = exc
        finally:
            self.stop()
            self.on_trace, self.targets, self._budget = saved
        return result, error, traces

    # ---------------------------------------------------------------- sys.settrace callbacks

    def _on_call(self, frame, event, arg):
        try:
            code = frame.f_code
            kind = self._kind_of(code)
            if kind == _SKIP:
                return None
            if self._wants(code, kind):
                self._open(frame)
            if not self._active:
                return None
            depth = self._depth_of(frame)
            self._scopes[frame] = [depth, {}]
            frame.f_trace_lines = True  # a resumed generator may have had line events turned off
            self._emit(frame, "call", None, depth)
            return self._on_event
        except Exception as exc:  # noqa: BLE001 - a tracer bug must never reach the traced program
            self._fail(exc)
            return None

    def _on_event(self, frame, event, arg):
        try:
            scope = self._scopes.get(frame)
            if scope is None:
                return None
            if event == "line" or event == "exception" or event == "return":
                self._emit(frame, event, arg, scope[0])
            if event == "return":
                del self._scopes[frame]
                if self._active and self._active[-1].frame is frame:
                    self._finish(self._active.pop())
            return self._on_event
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return None

    # ---------------------------------------------------------------- recording

    def _emit(self, frame, event, arg, depth: int) -> None:
        if not any(rec.truncated is None for rec in self._active):
            # Every open trace is full: rendering would be wasted (the bulk of the cost in a long
            # loop), and no later trace can include this frame, so its line events can stop too.
            for rec in self._active:
                rec.events += 1
            frame.f_trace_lines = False
            return
        lineno = frame.f_lineno
        code = frame.f_code
        if event == "call":
            lineno = max(lineno, _def_line(code))
        source = self._lines.get((code, lineno))
        if source is None:
            source = self._lines[(code, lineno)] = linecache.getline(code.co_filename, lineno)
        rendered = {"event": event, "line": lineno, "source": source}
        size = 48 + len(source)
        if event == "call" or event == "line":
            shown: dict = {}
            last = self._scopes[frame][1]
            reprs = self.reprs
            for name, value in frame.f_locals.items():
                text = repr(value) if type(value) in _SMALL else reprs(value)
                shown[name] = DIFF if last.get(name) == text else text
                last[name] = text
                size += len(name) + len(shown[name]) + 8
            rendered["locals"] = shown
        else:
            value = arg[1] if event == "exception" else arg
            rendered["value"] = self.reprs(value)
            size += len(rendered["value"])
        max_events, max_bytes = self._max_events, self._max_bytes
        for rec in self._active:
            rec.events += 1
            if rec.truncated:
                continue
            if len(rec.frames) >= max_events:
                rec.truncated = "events"
            elif rec.bytes + size > max_bytes:
                rec.truncated = "bytes"
            else:
                rec.frames.append(dict(rendered, depth=depth - rec.depth))
                rec.bytes += size

    def _open(self, frame) -> None:
        code = frame.f_code
        self.calls[code] = self.calls.get(code, 0) + 1
        if self._budget is not None:
            self._budget -= 1
        source, entry_line = _source_of(code)
        meta = {
            "function": f"{frame.f_globals.get('__name__', '?')}:{getattr(code, 'co_qualname', code.co_name)}",
            "file": self._relative(code.co_filename),
            "line": _def_line(code),
            "source": source,
            "entry_line": entry_line,
            "call_index": self.calls[code] - 1,
            **self.context,
        }
        self._active.append(_Recorder(frame, self._depth_of(frame), meta))

    def _finish(self, rec: _Recorder) -> None:
        frames = rec.frames
        last = frames[-1] if frames else None
        exception = None
        if last is not None and last["event"] == "return" and len(frames) >= 2:
            before = frames[-2]
            if before["event"] == "exception" and before["depth"] == 0:
                exception = before["value"]  # the entry frame unwound with this exception
        trace = {
            **rec.meta,
            "frames": frames,
            "events": rec.events,
            "truncated": rec.truncated is not None,
            "truncated_reason": rec.truncated,
            "exception": exception,
            "python": sys.version.split()[0],
            "limits": dict(self.limits),
        }
        self.on_trace(trace)

    def _fail(self, exc: Exception) -> None:
        self.errors.append(f"{type(exc).__name__}: {exc}")
        for rec in self._active:
            rec.truncated = rec.truncated or "tracer_error"

    # ---------------------------------------------------------------- scope

    def _wants(self, code, kind: int) -> bool:
        if self._budget is not None and self._budget <= 0:
            return False
        if self.targets is not None:
            return code in self.targets
        return kind == _ENTRY and self.calls.get(code, 0) < self.limits["max_calls"]

    def _kind_of(self, code) -> int:
        kind = self._kinds.get(code)
        if kind is None:
            kind = self._kinds[code] = self._classify(code)
        return kind

    def _classify(self, code) -> int:
        """_ENTRY: a repository function that may open a trace; _FOLLOW: traced only inside one
        (tests, lambdas, comprehensions); _SKIP: module/class bodies, libraries, the tracer."""
        if not code.co_flags & _CO_OPTIMIZED:
            return _SKIP  # module and class bodies: their "locals" are whole namespaces
        path = os.path.realpath(code.co_filename) if not code.co_filename.startswith("<") else code.co_filename
        if path == os.path.realpath(__file__):
            return _SKIP
        if not self._in_repository(code):
            return _FOLLOW if self.follow_libraries and not path.startswith("<") else _SKIP
        if code.co_name.startswith("<") or _TEST_FILE.search(self._relative(path)):
            return _FOLLOW
        return _ENTRY

    def _in_repository(self, code) -> bool:
        inside = self._repo_code.get(code.co_filename)
        if inside is None:
            # "<frozen os>", "<string>": not files; realpath would place them under the cwd
            path = os.path.realpath(code.co_filename)
            inside = not code.co_filename.startswith("<") and any(path.startswith(root) for root in self.roots) and not any(
                path.startswith(lib) for lib in self._libs
            )
            self._repo_code[code.co_filename] = inside
        return inside

    def _relative(self, path: str) -> str:
        real = os.path.realpath(path)
        for root in self.roots:
            if real.startswith(root):
                return real[len(root) :]
        return path

    def _library_dirs(self) -> list:
        """Installed code that may sit under a root (a venv inside the repository)."""
        import sysconfig

        dirs = {p for p in sysconfig.get_paths().values() if p}
        dirs.update(p for p in sys.path if p and ("site-packages" in p or "dist-packages" in p))
        real = {os.path.realpath(d).rstrip(os.sep) + os.sep for d in dirs}
        # a library dir that *is* a root (or contains it) would exclude everything: keep roots traced
        return sorted(d for d in real if not any(root.startswith(d) for root in self.roots))

    def _depth_of(self, frame) -> int:
        parent = frame.f_back
        while parent is not None:
            scope = self._scopes.get(parent)
            if scope is not None:
                return scope[0] + 1
            parent = parent.f_back
        return 0


# ---------------------------------------------------------------- source helpers

def _first(iterable, n: int) -> list:
    out = []
    for item in iterable:
        if len(out) >= n:
            break
        out.append(item)
    return out


_DEF_LINES: dict = {}


def _def_line(code) -> int:
    """The `def` line of a function (co_firstlineno points at its first decorator)."""
    line = _DEF_LINES.get(code)
    if line is None:
        line = code.co_firstlineno
        for offset in range(0 if code.co_name.startswith("<") else 50):  # lambdas have no def
            text = linecache.getline(code.co_filename, code.co_firstlineno + offset)
            if not text:
                break
            if _DEF.match(text):
                line = code.co_firstlineno + offset
                break
        _DEF_LINES[code] = line
    return line


def _source_of(code):
    """(source of the function, 1-based line of its `def` within it)."""
    try:
        lines, start = inspect.getsourcelines(code)
    except (OSError, TypeError, IndexError, SyntaxError):
        return linecache.getline(code.co_filename, _def_line(code)), 1
    start = max(start, 1)
    return "".join(lines), _def_line(code) - start + 1


def _code_of(func):
    func = inspect.unwrap(func) if callable(func) else func
    func = getattr(func, "__func__", func)  # bound methods
    return getattr(func, "__code__", None)


# ---------------------------------------------------------------- call targets

def parse_call(expr: str, namespace: dict | None = None):
    """'pkg.mod:func(1, x=[2])' or 'func(1)' (in `namespace`) -> (callable, args, kwargs).
    The arguments are evaluated before tracing starts, so only the call itself is traced."""
    module_name, sep, call = expr.partition(":")
    if not sep or "(" in module_name:
        module_name, call = "", expr
    try:
        tree = ast.parse(call.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not a call expression: {call!r} ({exc.msg})") from None
    node = tree.body
    if not isinstance(node, ast.Call):
        raise ValueError(f"not a call expression: {call!r}: expected NAME(args...)")
    scope = dict(importlib.import_module(module_name).__dict__) if module_name else dict(namespace or {})

    def value(expr_node):
        return eval(compile(ast.Expression(expr_node), "<forager-call>", "eval"), scope)

    func = value(node.func)
    args: list = []
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            args.extend(value(arg.value))
        else:
            args.append(value(arg))
    kwargs: dict = {}
    for kw in node.keywords:
        if kw.arg is None:
            kwargs.update(value(kw.value))
        else:
            kwargs[kw.arg] = value(kw.value)
    return func, args, kwargs


def load_snippet(path: str) -> dict:
    """Run a snippet file as a module named 'snippet'; its functions keep the real file name."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    namespace = {"__name__": "snippet", "__file__": path}
    exec(compile(text, path, "exec"), namespace)
    return namespace


# ---------------------------------------------------------------- pytest plugin (FORAGER_TRACE_* env)

def _env_limits() -> dict:
    limits = {}
    for key, default in DEFAULTS.items():
        raw = os.environ.get(f"FORAGER_TRACE_{key.upper()}")
        if raw:
            limits[key] = type(default)(raw)
    return limits


class _JsonlSink:
    """Appends each finished trace as one JSON line and flushes, so a killed run keeps its traces."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.fh = open(path, "a", encoding="utf-8")
        self.count = 0
        self.pid = os.getpid()

    def __call__(self, trace: dict) -> None:
        if os.getpid() != self.pid:
            return  # a forked child of a test inherited the tracer: its traces would interleave with ours
        self.fh.write(json.dumps(trace) + "\n")
        self.fh.flush()
        self.count += 1


try:  # the plugin hooks exist only when pytest is importable; the tracer itself needs nothing
    import pytest as _pytest
except ImportError:  # pragma: no cover - plain-Python images
    _pytest = None

_plugin_state: dict = {}

if _pytest is not None:

    def pytest_configure(config):
        out_dir = os.environ.get("FORAGER_TRACE_OUT")
        if not out_dir or _plugin_state:
            return
        # one file per process: pytest-xdist workers load this plugin too
        sink = _JsonlSink(os.path.join(out_dir, f"traces-{os.getpid()}.jsonl"))
        roots = os.environ.get("FORAGER_TRACE_ROOT", str(config.rootpath)).split(os.pathsep)
        follow = os.environ.get("FORAGER_TRACE_FOLLOW_LIBRARIES") == "1"
        safe = os.environ.get("FORAGER_TRACE_SAFE_REPR") == "1"
        _plugin_state["tracer"] = Tracer(roots, follow_libraries=follow, safe_repr=safe, on_trace=sink, **_env_limits())
        _plugin_state["sink"] = sink

    @_pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item):
        tracer = _plugin_state.get("tracer")
        if tracer is None:
            yield
            return
        tracer.context = {"test": item.nodeid}
        tracer.start()
        try:
            yield
        finally:
            tracer.stop()

    def pytest_unconfigure(config):
        tracer = _plugin_state.pop("tracer", None)
        sink = _plugin_state.pop("sink", None)
        if tracer is not None:
            tracer.close()
            for error in tracer.errors[:20]:
                sys.stderr.write(f"forager-trace: tracer error: {error}\n")
        if sink is not None:
            sink.fh.close()


# ---------------------------------------------------------------- script

def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="forager_tracer", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    call = sub.add_parser("call", help="trace one call: 'pkg.mod:func(args)' or, with --snippet, 'func(args)'")
    call.add_argument("expr")
    call.add_argument("--snippet", help="a Python file defining the function")
    call.add_argument("--root", action="append", help="directories whose code is traced (default: cwd)")
    call.add_argument("--out", help="append the trace as one JSON line here (default: stdout)")
    call.add_argument("--follow-libraries", action="store_true", help="also trace stdlib and site-packages")
    call.add_argument("--safe-repr", action="store_true", help="never run the repository's own __repr__ code")
    for key, default in DEFAULTS.items():
        if key != "max_calls":
            call.add_argument(f"--{key.replace('_', '-')}", type=type(default), default=default)
    ns = parser.parse_args(argv)

    roots = ns.root or [os.getcwd()]
    sys.path.insert(0, os.getcwd())
    namespace = None
    if ns.snippet:
        roots.append(os.path.dirname(os.path.abspath(ns.snippet)))
        namespace = load_snippet(ns.snippet)
    limits = {k: getattr(ns, k) for k in DEFAULTS if k != "max_calls"}
    tracer = Tracer(roots, follow_libraries=ns.follow_libraries, safe_repr=ns.safe_repr, **limits)
    try:
        func, args, kwargs = parse_call(ns.expr, namespace)
    except (ValueError, ImportError, AttributeError, NameError) as exc:
        sys.stderr.write(f"forager-trace: cannot resolve {ns.expr!r}: {type(exc).__name__}: {exc}\n")
        return 2
    tracer.context = {"call": ns.expr}
    _, _, traces = tracer.trace_call(func, args, kwargs)
    tracer.close()
    if not traces:
        sys.stderr.write(f"forager-trace: {ns.expr!r} ran no traceable code under {roots}\n")
        return 3
    line = json.dumps(traces[0]) + "\n"
    if ns.out:
        with open(ns.out, "a", encoding="utf-8") as fh:
            fh.write(line)
    else:
        sys.stdout.write(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
