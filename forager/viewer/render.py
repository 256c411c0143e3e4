"""Turning records into what a page shows: coloured diffs, trace steps with their locals, figures."""

from __future__ import annotations

import datetime as dt
import json
from html import escape

from markupsafe import Markup

from forager.trace.models import Trace

UNCHANGED = ".."  # the tracer's mark for a local whose repr did not change since the scope's last frame
SHOW_CHARS = 20_000  # longer observations and file contents are cut on the page (the raw record has all)


def diff_html(diff: str) -> Markup:
    """A unified diff as <pre> with one classed span per line (added, removed, hunk, file header)."""
    out = []
    for line in diff.splitlines():
        if line.startswith(("diff --git", "index ", "--- ", "+++ ", "new file", "deleted file", "similarity", "rename ")):
            cls = "d-file"
        elif line.startswith("@@"):
            cls = "d-hunk"
        elif line.startswith("+"):
            cls = "d-add"
        elif line.startswith("-"):
            cls = "d-del"
        else:
            cls = "d-ctx"
        out.append(f'<span class="{cls}">{escape(line)}</span>')
    return Markup(f'<pre class="diff">{"".join(out)}</pre>')  # spans are blocks: no newlines


def clip(text: str | None, limit: int = SHOW_CHARS) -> tuple[str, int]:
    """(the text to show, characters left out)."""
    text = text or ""
    return (text, 0) if len(text) <= limit else (text[:limit], len(text) - limit)


def action_parts(tool: str | None, arguments: dict) -> list[tuple[str, str]]:
    """The arguments worth showing, in reading order: a shell command first, an edit's old then new."""
    order = {"shell": ["command", "timeout"], "edit": ["path", "old", "new"], "create": ["path", "content"]}
    keys = order.get(tool or "", [])
    shown = [(k, arguments[k]) for k in keys if k in arguments]
    shown += [(k, v) for k, v in arguments.items() if k not in keys]
    return [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in shown]


def trace_steps(trace: Trace) -> list[dict]:
    """Each frame with the locals it set or changed ('..' resolved away) and the names it kept.

    A scope is one frame object from its call to its return; frames nest by depth, so the open scope
    at a frame's depth is the one its '..' refers to. Only changes are kept per step (a full copy per
    frame would be frames x locals); `scope_at` and the page's script replay them.
    """
    scopes: dict[int, dict[str, str]] = {}
    steps = []
    for i, frame in enumerate(trace.frames):
        scope = _enter(scopes, frame.event, frame.depth)
        changed, kept = {}, []
        for name, value in (frame.locals or {}).items():
            if value == UNCHANGED or scope.get(name) == value:
                kept.append(name)
            else:
                changed[name] = value
                scope[name] = value
        steps.append({"i": i, "event": frame.event, "line": frame.line, "source": frame.source.rstrip("\n"),
                      "depth": frame.depth, "value": frame.value, "changed": changed, "kept": kept})
        _leave(scopes, frame.event, frame.depth)
    return steps


def scope_at(steps: list[dict], index: int) -> dict[str, str]:
    """The locals visible at step `index`: the same replay as trace_steps, stopped there."""
    scopes: dict[int, dict[str, str]] = {}
    for step in steps[: index + 1]:
        scope = _enter(scopes, step["event"], step["depth"])
        scope.update(step["changed"])
        if step["i"] < index:
            _leave(scopes, step["event"], step["depth"])
    return dict(scopes.get(steps[index]["depth"], {})) if steps else {}


def _enter(scopes: dict[int, dict], event: str, depth: int) -> dict:
    if event == "call" or depth not in scopes:
        scopes[depth] = {}
        for deeper in [d for d in scopes if d > depth]:
            del scopes[deeper]
    return scopes[depth]


def _leave(scopes: dict[int, dict], event: str, depth: int) -> None:
    if event == "return":  # an exception event may be caught: the scope lives on until its return
        scopes.pop(depth, None)


def source_lines(trace: Trace) -> list[tuple[int, str]]:
    """The entry function's source numbered as in its file (a snippet: as in the snippet)."""
    first = (trace.line or trace.entry_line) - (trace.entry_line - 1)
    return [(first + i, text) for i, text in enumerate(trace.source.splitlines())]


def when(ts: float | None) -> str:
    if not ts:
        return "—"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 60:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s" if value >= 1 or value == 0 else f"{value * 1000:.0f} ms"


def number(value: float | int | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def size(value: int | None) -> str:
    if not value:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


FILTERS = {"when": when, "seconds": seconds, "number": number, "percent": percent, "size": size,
           "diff_html": diff_html}
