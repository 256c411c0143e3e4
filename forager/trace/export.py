"""Render traces in CWM's trace-prediction token format (facebookresearch/cwm PROMPTING_GUIDE.md).

    <|trace_context_start|>$CONTEXT<|frame_sep|>
    <|call_sep|>$LOCALS<|action_sep|>$SOURCE<|frame_sep|>
    <|line_sep|>$LOCALS<|action_sep|>$SOURCE<|frame_sep|>
    <|return_sep|><|action_sep|>$SOURCE<|arg_sep|>$VALUE<|frame_sep|>
    <|exception_sep|><|action_sep|>$SOURCE<|arg_sep|>$VALUE<|frame_sep|>

$CONTEXT is the source with the entry `def` line marked `  # << START_OF_TRACE`; $LOCALS is
`json.dumps` of the name -> repr map ('..' = unchanged); $VALUE is `json.dumps` of the repr string,
exactly as CWM's debugger demo (demos/cwmdbg.py) builds its prompts. <|begin_of_text|> and the
<|end_of_text|> that closes a finished execution are the tokenizer's to add, not part of the text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from forager import jsonl
from forager.trace.models import Trace

TRACE_CONTEXT_START = "<|trace_context_start|>"
FRAME_SEP = "<|frame_sep|>"
ACTION_SEP = "<|action_sep|>"
ARG_SEP = "<|arg_sep|>"
START_MARKER = "  # << START_OF_TRACE"
EVENT_SEP = {
    "call": "<|call_sep|>",
    "line": "<|line_sep|>",
    "return": "<|return_sep|>",
    "exception": "<|exception_sep|>",
}


def trace_context(trace: Trace) -> str:
    lines = trace.source.splitlines(keepends=True)
    index = trace.entry_line - 1
    if 0 <= index < len(lines):
        line = lines[index]
        body = line.rstrip("\r\n")
        lines[index] = body + START_MARKER + line[len(body) :]
    text = "".join(lines)
    return text if text.endswith("\n") else text + "\n"


def render_cwm_trace(trace: Trace) -> str:
    parts = [TRACE_CONTEXT_START, trace_context(trace), FRAME_SEP]
    for frame in trace.frames:
        parts.append(EVENT_SEP[frame.event])
        if frame.event in ("call", "line"):
            parts += [json.dumps(frame.locals or {}), ACTION_SEP, frame.source]
        else:
            parts += [ACTION_SEP, frame.source, ARG_SEP, json.dumps(frame.value)]
        parts.append(FRAME_SEP)
    return "".join(parts)


def read_traces(path: str | Path) -> tuple[list[Trace], list[str]]:
    """Every valid trace of a JSONL file, and a message per bad line (kept out, never fatal)."""
    traces: list[Trace] = []
    problems: list[str] = []
    for number, obj, _line in jsonl.read(path):
        try:
            if obj is None:
                raise ValueError("not a JSON object")
            traces.append(Trace.model_validate(obj))
        except ValueError as exc:
            problems.append(f"{path}:{number}: not a trace: {str(exc).splitlines()[0]}")
    return traces, problems


def trace_rows(in_path: str | Path, problems: list[str], *, include_truncated: bool = True,
               skipped: list[int] | None = None) -> Iterator[dict]:
    """{"id", "function", "repo", "truncated", "text"} per trace of a JSONL file or a directory of them (the
    records of the cwm-trace export, JSONL or Parquet); bad lines go to `problems`, truncated ones counted in
    `skipped` when left out."""
    in_path = Path(in_path)
    if not in_path.exists():
        raise FileNotFoundError(f"no traces at {in_path}")
    files = sorted(in_path.glob("*.jsonl")) if in_path.is_dir() else [in_path]
    for file in files:
        traces, bad = read_traces(file)
        problems += bad
        for trace in traces:
            if trace.truncated and not include_truncated:
                if skipped is not None:
                    skipped.append(1)
                continue
            yield {"id": trace.id, "function": trace.function, "repo": trace.repo, "truncated": trace.truncated,
                   "text": render_cwm_trace(trace)}


def export_traces(in_path: str | Path, out_path: str | Path, *, include_truncated: bool = True) -> dict:
    """JSONL of traces -> JSONL of {"id", "function", "repo", "truncated", "text"} in CWM's format.

    A file or a directory of *.jsonl files is accepted. The output is written to a temporary file
    and renamed, so a failed export never leaves half a file. Returns counts and bad-line messages.
    """
    written = 0
    problems: list[str] = []
    skipped: list[int] = []
    rows = trace_rows(in_path, problems, include_truncated=include_truncated, skipped=skipped)
    first = next(rows, None)  # a missing input fails before the output is touched
    with jsonl.replacing(out_path) as out:
        for row in ([first] if first is not None else []):
            out.write(json.dumps(row) + "\n")
            written += 1
        for row in rows:
            out.write(json.dumps(row) + "\n")
            written += 1
    return {"written": written, "skipped_truncated": len(skipped), "bad_lines": problems, "out": str(out_path)}
