"""A pytest plugin copied into a repo container during synthesis (stdlib + pytest only).

Two jobs, chosen by environment variables:
- FORAGER_PROBE_OUT=path: record, per test, which repository functions it calls (a global
  sys.settrace function sees every new Python frame and returns None, so no line events and no
  C-call events are paid for; we keep code objects whose file lives under the rootdir) and write
  {"nodeid": ["file::qualname", ...]} as JSON at session end.
- FORAGER_SELECT=path: run only the node ids listed in that file (one per line). Filtering at
  collection works with any pytest test command, so we never have to rewrite the repo's command.
"""

import json
import os
import sys
import threading

import pytest

_ROOT = os.path.realpath(os.getcwd()) + os.sep
_hits = {}
_current = None
_seen_codes = {}


def _key(code):
    key = _seen_codes.get(code)
    if key is None:
        path = os.path.realpath(code.co_filename)
        if path.startswith(_ROOT) and path.endswith(".py"):
            key = path[len(_ROOT):] + "::" + getattr(code, "co_qualname", code.co_name)
        else:
            key = ""
        _seen_codes[code] = key
    return key


def _trace(frame, event, arg):
    if _current is not None:
        key = _key(frame.f_code)
        if key:
            _current.add(key)
    return None  # no local tracing: only the call itself is recorded


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _current
    if not os.environ.get("FORAGER_PROBE_OUT"):
        yield
        return
    _current = _hits.setdefault(item.nodeid, set())
    sys.settrace(_trace)
    threading.settrace(_trace)
    try:
        yield
    finally:
        sys.settrace(None)
        threading.settrace(None)
        _current = None


def pytest_collection_modifyitems(session, config, items):
    path = os.environ.get("FORAGER_SELECT")
    if not path:
        return
    with open(path) as fh:
        wanted = {line.strip() for line in fh if line.strip()}
    keep = [i for i in items if i.nodeid in wanted]
    deselected = [i for i in items if i.nodeid not in wanted]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = keep


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("FORAGER_PROBE_OUT")
    if out:
        with open(out, "w") as fh:
            json.dump({k: sorted(v) for k, v in _hits.items()}, fh)
