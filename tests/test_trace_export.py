"""CWM token rendering and the JSONL export of traces."""

from __future__ import annotations

import json

import pytest

from forager.trace.export import export_traces, render_cwm_trace
from forager.trace.models import Trace, TraceFrame


def sample(**over) -> Trace:
    fields = dict(
        id="t1", target="snippet", function="snippet:f",
        source="@decorate\ndef f(x):\n    y = x * 2\n    return y\n", entry_line=2,
        frames=[
            TraceFrame(event="call", line=2, source="def f(x):\n", locals={"x": "21"}),
            TraceFrame(event="line", line=3, source="    y = x * 2\n", locals={"x": ".."}),
            TraceFrame(event="line", line=4, source="    return y\n", locals={"x": "..", "y": "42"}),
            TraceFrame(event="exception", line=4, source="    return y\n", value="ValueError('a \"q\"')"),
            TraceFrame(event="return", line=4, source="    return y\n", value="'s'"),
        ],
    )
    fields.update(over)
    return Trace(**fields)


def test_render_matches_cwm_token_format_exactly():
    expected = (
        "<|trace_context_start|>@decorate\ndef f(x):  # << START_OF_TRACE\n    y = x * 2\n    return y\n<|frame_sep|>"
        '<|call_sep|>{"x": "21"}<|action_sep|>def f(x):\n<|frame_sep|>'
        '<|line_sep|>{"x": ".."}<|action_sep|>    y = x * 2\n<|frame_sep|>'
        '<|line_sep|>{"x": "..", "y": "42"}<|action_sep|>    return y\n<|frame_sep|>'
        '<|exception_sep|><|action_sep|>    return y\n<|arg_sep|>"ValueError(\'a \\"q\\"\')"<|frame_sep|>'
        "<|return_sep|><|action_sep|>    return y\n<|arg_sep|>\"'s'\"<|frame_sep|>"
    )
    assert render_cwm_trace(sample()) == expected


def test_export_writes_one_document_per_trace_and_reports_bad_lines(tmp_path):
    src = tmp_path / "in.jsonl"
    good = sample()
    cut = sample(id="t2", truncated=True, truncated_reason="events")
    src.write_text(good.model_dump_json() + "\n" + "{not json\n" + "\n" + cut.model_dump_json() + "\n")
    out = tmp_path / "out" / "cwm.jsonl"
    result = export_traces(src, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["t1", "t2"] and rows[0]["text"] == render_cwm_trace(good)
    assert result["written"] == 2 and len(result["bad_lines"]) == 1 and ":2:" in result["bad_lines"][0]
    result = export_traces(tmp_path / "in.jsonl", out, include_truncated=False)
    assert result["written"] == 1 and result["skipped_truncated"] == 1
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["t1"]


def test_export_of_a_missing_input_is_a_clear_error_and_leaves_the_output_alone(tmp_path):
    out = tmp_path / "cwm.jsonl"
    out.write_text("keep\n")
    with pytest.raises(FileNotFoundError, match="no traces"):
        export_traces(tmp_path / "nope.jsonl", out)
    assert out.read_text() == "keep\n"
