"""Validation: run an image's test suite inside it, twice, in a sandbox (no network, a deadline, a lifeline).

Outcomes come only from the JUnit XML pytest writes (envserver.junit), never from printed text. A test
whose outcome differs between the two runs is flaky and does not count either way.

Each test may run `per_test_timeout` seconds (pytest-timeout, installed by the deps layer): a test that
hangs (a live-server test waiting forever) is killed in seconds and the run goes on. Tests killed so in
any run are listed in `timed_out`, count neither as passed nor failed, and stay `failed` in the outcomes,
so they never enter a pass-to-pass set. The whole-run timeout remains the backstop.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field


from envserver.junit import node_id, parse_junit, pytest_args, summarize, timed_out
from envserver.sandbox import Backend, DockerSandbox, run_pytest


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
    per_test_timeout: int | None = None  # what the runs used (None: no per-test limit)
    timed_out: list[str] = field(default_factory=list)


def validate(
    image: str, test_command: str, *, timeout: int, min_pass_rate: float, runs: int = 2, log=print,
    backend: Backend | None = None, per_test_timeout: int | None = None,
) -> Validation:
    # A sandbox with a lifeline: if this process dies, the container goes with it.
    with DockerSandbox.start(image, kind="validate", backend=backend, labels={"forager.image": image},
                             ttl=runs * (timeout + 60) + 600) as box:
        # Recorded here rather than in the build, which keeps the rebuild of a new commit one step shorter.
        freeze = box.run("python -m pip freeze --all 2>/dev/null > /tmp/forager-freeze.txt", 300)
        frozen = (box.read_text("/tmp/forager-freeze.txt") or "").splitlines() if freeze.exit_code == 0 else []
        if per_test_timeout and not any(line.lower().startswith(("pytest-timeout==", "pytest_timeout==")) for line in frozen):
            log(f"pytest-timeout is not in the image: no per-test timeout (older deps layer?)")
            per_test_timeout = None
        runs_outcomes: list[dict[str, str]] = []
        killed: set[str] = set()
        first_seconds = None
        for run in range(1, runs + 1):
            report = f"/tmp/forager-junit-{run}.xml"
            log(f"$ {test_command} {pytest_args(report, per_test_timeout)}   # run {run}/{runs}, timeout {timeout}s, network none")
            result = run_pytest(box, test_command, timeout, report=report, per_test_timeout=per_test_timeout)
            first_seconds = first_seconds if first_seconds is not None else result.seconds
            log(result.output)
            log(f"exit code {result.exit_code} after {result.seconds:.1f}s")
            if result.timed_out:
                return Validation("timeout", f"test run {run} exceeded {timeout}s", test_seconds=result.seconds,
                                  pip_freeze=frozen, per_test_timeout=per_test_timeout)
            xml = result.junit
            killed |= set(timed_out(xml)) if xml and per_test_timeout else set()
            try:
                outcomes = parse_junit(xml) if xml else {}
            except ValueError as exc:
                log(str(exc))
                outcomes = {}
            broken = _collection_errors(xml) if xml else []
            if not outcomes or len(broken) == len(outcomes):
                why = ("no JUnit report" if not xml else f"collection errors in {', '.join(broken[:5])}" if broken
                       else "no tests collected")
                return Validation("collect", f"{why} (pytest exit code {result.exit_code})",
                                  test_seconds=result.seconds, pip_freeze=frozen, per_test_timeout=per_test_timeout)
            runs_outcomes.append(outcomes)
    if killed:
        log(f"timed out (> {per_test_timeout}s each, not counted): {sorted(killed)}")
    v = _judge(runs_outcomes, min_pass_rate, first_seconds, frozen, killed)
    v.per_test_timeout = per_test_timeout
    return v


def _judge(runs: list[dict[str, str]], min_pass_rate: float, seconds: float | None, freeze: list[str],
           killed: set[str] = frozenset()) -> Validation:
    first = dict(runs[0])
    for test in killed:  # whatever a later run said, a test that hung once is not a passing test
        if test in first:
            first[test] = "failed"
    every = set().union(*runs)
    flaky = sorted(t for t in every if len({r.get(t, "missing") for r in runs}) > 1 and t not in killed)
    stable = {t: o for t, o in first.items() if t not in flaky and t not in killed}
    counts = summarize(stable)
    passed, failed = counts["passed"], counts["failed"] + counts["error"]
    v = Validation("ok", "", first, flaky, passed, failed, counts["skipped"], seconds, freeze, timed_out=sorted(killed))
    counted = passed + failed
    rate = passed / counted if counted else 0.0
    summary = (f"{passed}/{counted} counted tests pass ({len(first)} collected, {counts['skipped']} skipped, {len(flaky)} flaky"
               f"{f', {len(killed)} timed out' if killed else ''})")
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
