"""Validation: run an image's test suite inside it, twice, with no network and a timeout.

Outcomes come only from the JUnit XML pytest writes (envserver.junit), never from printed text. A test
whose outcome differs between the two runs is flaky and does not count either way.
"""

from __future__ import annotations

import io
import shlex
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import docker

from envserver.junit import node_id, parse_junit, pytest_args, summarize

TIMEOUT_EXIT = 124  # coreutils `timeout`


@dataclass
class Validation:
    status: str  # ok | collect | timeout | low_pass_rate
    reason: str
    outcomes: dict[str, str] = field(default_factory=dict)
    flaky: list[str] = field(default_factory=list)
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    test_seconds: float | None = None
    pip_freeze: list[str] = field(default_factory=list)


def validate(
    client: docker.DockerClient, image: str, test_command: str, *, timeout: int, min_pass_rate: float, runs: int = 2, log=print
) -> Validation:
    # The container outlives no build: if this process dies, its sleep ends and Docker removes it.
    container = client.containers.run(
        image,
        ["sleep", str(runs * (timeout + 30) + 120)],
        detach=True,
        auto_remove=True,
        network_mode="none",
        init=True,
        mem_limit="4g",
        pids_limit=2048,
        labels={"forager.kind": "validate", "forager.image": image},
    )
    try:
        # Recorded here rather than in the build, which keeps the rebuild of a new commit one step shorter.
        freeze = _exec(container, "python -m pip freeze --all 2>/dev/null")[1]
        runs_outcomes: list[dict[str, str]] = []
        first_seconds = None
        for run in range(1, runs + 1):
            xml_path = f"/tmp/forager-junit-{run}.xml"
            command = f"{test_command} {pytest_args(xml_path)}"
            wrapped = f"timeout -k 10 {int(timeout)} bash -lc {shlex.quote(command)}"
            log(f"$ {command}   # run {run}/{runs}, timeout {timeout}s, network none")
            started = time.monotonic()
            code, output = _exec(container, wrapped)
            seconds = time.monotonic() - started
            first_seconds = first_seconds if first_seconds is not None else seconds
            log(output)
            log(f"exit code {code} after {seconds:.1f}s")
            if code in (TIMEOUT_EXIT, 137) and seconds >= timeout:
                return Validation("timeout", f"test run {run} exceeded {timeout}s", test_seconds=seconds, pip_freeze=freeze.splitlines())
            xml = _read_file(container, xml_path)
            try:
                outcomes = parse_junit(xml) if xml else {}
            except ValueError as exc:
                log(str(exc))
                outcomes = {}
            broken = _collection_errors(xml) if xml else []
            if not outcomes or len(broken) == len(outcomes):
                why = "no JUnit report" if not xml else f"collection errors in {', '.join(broken[:5])}" if broken else "no tests collected"
                return Validation("collect", f"{why} (pytest exit code {code})", test_seconds=seconds, pip_freeze=freeze.splitlines())
            runs_outcomes.append(outcomes)
    finally:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
    return _judge(runs_outcomes, min_pass_rate, first_seconds, freeze.splitlines())


def _judge(runs: list[dict[str, str]], min_pass_rate: float, seconds: float | None, freeze: list[str]) -> Validation:
    first = runs[0]
    every = set().union(*runs)
    flaky = sorted(t for t in every if len({r.get(t, "missing") for r in runs}) > 1)
    stable = {t: o for t, o in first.items() if t not in flaky}
    counts = summarize(stable)
    passed, failed = counts["passed"], counts["failed"] + counts["error"]
    v = Validation("ok", "", dict(first), flaky, passed, failed, counts["skipped"], seconds, freeze)
    counted = passed + failed
    rate = passed / counted if counted else 0.0
    summary = f"{passed}/{counted} counted tests pass ({len(first)} collected, {counts['skipped']} skipped, {len(flaky)} flaky)"
    if counted == 0:
        v.status, v.reason = "low_pass_rate", f"no test counts: {summary}"
    elif rate < min_pass_rate:
        v.status, v.reason = "low_pass_rate", f"pass rate {rate:.2f} < {min_pass_rate}: {summary}"
    else:
        v.reason = summary
    return v


def _collection_errors(xml: str) -> list[str]:
    """Node ids of modules pytest could not import (reported as cases with a 'collection failure' error)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []
    return sorted(
        node_id(case.get("classname", ""), case.get("name", ""), case.get("file"))
        for case in root.iter("testcase")
        if any(child.tag == "error" and "collection failure" in (child.get("message") or "") for child in case)
    )


def _exec(container, command: str) -> tuple[int, str]:
    result = container.exec_run(["bash", "-c", command], workdir="/repo", demux=False)
    return result.exit_code, (result.output or b"").decode(errors="replace")


def _read_file(container, path: str) -> str | None:
    try:
        stream, _ = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tf:
        member = tf.getmembers()[0]
        fh = tf.extractfile(member)
        return fh.read().decode(errors="replace") if fh else None
