"""The trace record: one traced call of one function, as JSONL lines under FORAGER_HOME/traces."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, Field

TRACE_SCHEMA_VERSION = "1.0"
FrameEvent = Literal["call", "line", "return", "exception"]
TraceTarget = Literal["test", "call", "snippet"]


class TraceFrame(BaseModel):
    event: FrameEvent
    line: int = Field(description="line number in the frame's file")
    source: str = Field(description="the source line being executed, with its newline")
    locals: dict[str, str] | None = Field(
        default=None, description="call/line: name -> repr, '..' when unchanged since the scope's previous frame"
    )
    value: str | None = Field(default=None, description="return/exception: repr of the value or exception")
    depth: int = Field(default=0, description="0 for the entry function, +1 per nested traced call")


class Trace(BaseModel):
    schema_version: str = TRACE_SCHEMA_VERSION
    id: str
    target: TraceTarget
    repo: str | None = None
    commit: str | None = None
    image: str | None = None
    function: str = Field(description="'module:qualname' of the entry function")
    file: str | None = Field(default=None, description="entry function's file, relative to the repository")
    line: int | None = Field(default=None, description="line of the entry function's def in its file")
    source: str = Field(description="trace context: the entry function's source (a snippet: the whole snippet)")
    entry_line: int = Field(default=1, description="1-based line of the entry def within `source`")
    test: str | None = Field(default=None, description="pytest node id whose run made this call")
    call: str | None = Field(default=None, description="the traced call expression (call/snippet targets)")
    call_index: int = Field(default=0, description="which call of this function (first N are traced)")
    frames: list[TraceFrame]
    events: int = Field(default=0, description="frames seen; once truncated, a lower bound (line events stop)")
    truncated: bool = False
    truncated_reason: Literal["events", "bytes", "stopped", "tracer_error"] | None = None
    exception: str | None = Field(default=None, description="repr of the exception the entry call raised")
    python: str | None = None
    limits: dict[str, float] = Field(default_factory=dict)


def trace_id(*parts: object) -> str:
    """Same origin (image, function, test, call index / expression) -> same id, so a rerun replaces."""
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:16]


class TraceRunSummary(BaseModel):
    """What one in-image run produced (returned by collection and by queue jobs)."""

    image: str
    repo: str | None = None
    out: str | None = Field(default=None, description="the JSONL file written")
    traces: int = 0
    functions: int = Field(default=0, description="distinct functions with at least one trace")
    frames: int = 0
    truncated: int = 0
    exit_code: int | None = None
    timed_out: bool = False
    skipped: bool = Field(default=False, description="traces already existed (resumed run)")
    seconds: float = 0.0
    error: str | None = None
    log_tail: str = ""
