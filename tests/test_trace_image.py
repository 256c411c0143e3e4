"""Tracing inside a real repository image: its tests, one call, the CLI, and the fleet queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from typer.testing import CliRunner

from forager.cli.app import app
from forager.trace.collect import collect_test_traces, trace_call_in_image, traces_path
from forager.trace.export import read_traces

CORE = {"add", "mean", "clamp", "slugify", "count_vowels", "fizzbuzz"}


@pytest.fixture(scope="session")
def tiny_traces(docker_client, tiny_repo_image, tmp_path_factory):
    out = tmp_path_factory.mktemp("traces") / "tiny.jsonl"
    summary = collect_test_traces(tiny_repo_image, out, max_calls=2)
    traces, bad = read_traces(out)
    return summary, traces, bad


def test_the_tiny_repos_tests_yield_traces_of_its_functions(tiny_traces, tiny_repo_image):
    summary, traces, bad = tiny_traces
    assert summary.exit_code == 0 and not summary.timed_out and bad == []
    assert {t.function for t in traces} == {f"tinycalc.core:{name}" for name in CORE}
    assert summary.traces == len(traces) and summary.functions == len(CORE)
    per_function: dict[str, list[int]] = {}
    for t in traces:
        per_function.setdefault(t.function, []).append(t.call_index)
        assert (t.repo, t.commit, t.image, t.target) == ("tinycalc", tiny_repo_image.commit, tiny_repo_image.tag, "test")
        assert t.test in tiny_repo_image.test_outcomes and t.file == "tinycalc/core.py"
        assert t.frames[0].event == "call" and t.frames[-1].event == "return" and not t.truncated
        assert t.source.splitlines()[t.entry_line - 1].startswith("def ")
    assert all(sorted(calls) == list(range(len(calls))) and len(calls) <= 2 for calls in per_function.values())
    empty_mean = [t for t in traces if t.function.endswith(":mean") and t.exception]
    assert [t.exception for t in empty_mean] == ["ValueError('mean of an empty sequence')"]
    assert len({t.id for t in traces}) == len(traces)


def test_one_call_in_the_image_gives_its_exact_frames(docker_client, tiny_repo_image):
    trace = trace_call_in_image(tiny_repo_image.tag, "tinycalc.core:clamp(42, 0, 10)",
                                repo="tinycalc")
    got = [(f.event, f.source.strip(), f.locals if f.locals is not None else f.value) for f in trace.frames]
    assert got == [
        ("call", "def clamp(value, low, high):", {"value": "42", "low": "0", "high": "10"}),
        ("line", "if low > high:", {"value": "..", "low": "..", "high": ".."}),
        ("line", "if value < low:", {"value": "..", "low": "..", "high": ".."}),
        ("line", "if value > high:", {"value": "..", "low": "..", "high": ".."}),
        ("line", "return high", {"value": "..", "low": "..", "high": ".."}),
        ("return", "return high", "10"),
    ]
    assert trace.function == "tinycalc.core:clamp" and trace.target == "call"
    with pytest.raises(RuntimeError, match="NameError|AttributeError"):
        trace_call_in_image(tiny_repo_image.tag, "tinycalc.core:no_such_function(1)")


def test_cli_traces_an_image_and_resumes(images_home, tiny_repo_image, tmp_path, monkeypatch):
    monkeypatch.setenv("FORAGER_HOME", str(images_home))
    runner = CliRunner()
    out_dir = tmp_path / "traces"
    first = runner.invoke(app, ["trace", tiny_repo_image.tag, "--out", str(out_dir), "--max-calls", "1", "--json"])
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout.strip().splitlines()[-1])
    assert doc["traces"] == len(CORE) and not doc["images"][0]["skipped"]
    path = traces_path(out_dir, tiny_repo_image.tag)
    assert len(read_traces(path)[0]) == len(CORE)
    again = runner.invoke(app, ["trace", tiny_repo_image.tag, "--out", str(out_dir), "--json"])
    assert json.loads(again.stdout.strip().splitlines()[-1])["images"][0]["skipped"] is True
    bad = runner.invoke(app, ["trace", "no/such:image", "--json"])
    assert bad.exit_code == 1 and "not in the catalog" in bad.stdout


def test_queue_runs_one_job_per_image_and_skips_traced_images(images_home, tiny_repo_image, redis_url, tmp_path,
                                                               monkeypatch):
    queue = f"trace-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("FORAGER_HOME", str(images_home))
    monkeypatch.setenv("FORAGER_REDIS_URL", redis_url)
    monkeypatch.setenv("FORAGER_QUEUE", queue)
    runner = CliRunner()
    out_dir = tmp_path / "queued"
    args = ["trace", tiny_repo_image.tag, "--queue", "--no-wait", "--out", str(out_dir), "--max-calls", "1", "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout.strip().splitlines()[-1])["enqueued"] == 1
    worker = subprocess.run([sys.executable, "-m", "agent.worker", "--queue", queue, "--url", redis_url, "--burst"],
                            capture_output=True, text=True, timeout=600, env={**os.environ})
    assert worker.returncode == 0, worker.stderr[-2000:]
    traces, bad = read_traces(traces_path(out_dir, tiny_repo_image.tag))
    assert bad == [] and {t.function.split(":")[1] for t in traces} == CORE
    second = json.loads(runner.invoke(app, args).stdout.strip().splitlines()[-1])
    assert second["enqueued"] == 0 and list(second["jobs"].values()) in (["finished"], ["exists"])


def test_a_run_past_its_timeout_is_killed_and_reported(docker_client, tiny_repo_image):
    forever = "import time\n\n\ndef spin():\n    while True:\n        time.sleep(0.05)\n"
    with pytest.raises(TimeoutError, match="longer than 3s"):
        trace_call_in_image(tiny_repo_image.tag, "spin()", snippet=forever, timeout=3)
    leftovers = docker_client.containers.list(all=True, filters={"label": "forager.kind=trace"})
    assert not [c for c in leftovers if c.labels.get("forager.test_run") == os.environ.get("FORAGER_TEST_RUN")]


def test_a_run_without_traces_writes_nothing_so_it_is_retried(docker_client, tiny_repo_image, tmp_path):
    broken = tiny_repo_image.model_copy(update={"test_command": "python -m pytest -q tests/no_such_file.py"})
    out = tmp_path / "none.jsonl"
    summary = collect_test_traces(broken, out)
    assert summary.traces == 0 and summary.exit_code not in (0, None) and "no traces" in summary.error
    assert not out.exists() and summary.out is None
