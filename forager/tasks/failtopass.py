"""Fail-to-pass validation of a mined fix, in a network-less sandbox of the image built at the fix's parent.

With the hidden test patch applied, the relevant tests run `runs` times (before); then the gold patch goes
on and they run `runs` times again (after). A test whose outcome varies within either phase is flaky and
dropped. F2P = failing in every run before and passing in every run after; P2P = passing in all of them.
A test passing before and failing after is a regression (rejected); no F2P, rejected; a run past its
deadline, a hang (rejected).

Which tests: the test modules the test patch touches, named on the image's test command (what SWE-bench
grades too). The fix's own tests are all there, each run costs seconds rather than a whole suite, and the
task's grading runs the same command, so validation and grading can never disagree about which tests exist.
A test patch that touches only helpers or conftest.py keeps the image's whole test command. When nothing
changes and the fix's test modules do not even import after the fix, the verdict is `uncollectable`: the
environment (today's pytest or a dependency) no longer fits the commit.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from envserver.junit import node_id, parse_junit
from envserver.sandbox import Backend, DockerSandbox, run_pytest
from forager.models import ImageRecord
from forager.tasks.history import FixPatches
from forager.tasks.schedule import narrow_command
from forager.tasks.statements import failure_messages

TEST_PATCH = "/tmp/forager-mine-test.patch"
GOLD_PATCH = "/tmp/forager-mine-gold.patch"
APPLY = "git -c core.hooksPath=/dev/null apply --whitespace=nowarn"

# Verdicts of validation (besides "task"), in the benchmark's order.
VERDICTS = ("build_failed", "test_patch_conflict", "gold_patch_conflict", "no_report", "hang", "uncollectable",
            "regression", "flaky", "no_f2p", "certificate_failed", "error")


@dataclass
class Judgement:
    verdict: str  # "task" or one of VERDICTS
    detail: str = ""
    fail_to_pass: list[str] = field(default_factory=list)
    pass_to_pass: list[str] = field(default_factory=list)
    flaky: list[str] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)  # failure messages of the F2P tests, before the fix
    test_command: str = ""
    runs: int = 0  # test runs made
    seconds: float = 0.0


def narrowed_command(image_command: str, test_modules: list[str]) -> str:
    """The image's test command narrowed to the touched test modules (the whole command when it cannot be)."""
    return (narrow_command(image_command, test_modules) if test_modules else None) or image_command


def collection_errors(junit: str) -> dict[str, str]:
    """{report id: the error's exception line} for test modules pytest could not import (a newer pytest or
    dependency than the commit was written for often does this: a removed API, a deprecation made an error)."""
    try:
        root = ET.fromstring(junit)
    except ET.ParseError:
        return {}
    found = {}
    for case in root.iter("testcase"):
        for child in case:
            if child.tag == "error" and "collection failure" in (child.get("message") or ""):
                lines = [ln[1:].strip() for ln in (child.text or "").splitlines() if ln.startswith("E ")]
                raised = [ln for ln in lines if re.match(r"[\w.]*(Error|Exception|Warning)\b", ln)]
                found[node_id(case.get("classname", ""), case.get("name", ""), case.get("file"))] = (
                    (raised or lines or ["collection failure"])[-1])[:300]
    return found


def _state(outcome: str | None) -> str:
    # a test missing from a report counts as failed (it did not run, or its module did not import)
    return {"passed": "passed", "skipped": "skipped"}.get(outcome or "failed", "failed")


def decide(before: list[dict[str, str]], after: list[dict[str, str]]) -> Judgement:
    """F2P, P2P, flaky tests and the verdict from the outcomes of each run before and after the fix."""
    tests = set().union(*before, *after)
    flaky = sorted(t for t in tests if len({_state(r.get(t)) for r in before}) > 1
                   or len({_state(r.get(t)) for r in after}) > 1)
    stable = sorted(tests - set(flaky))
    b = {t: _state(before[0].get(t)) for t in stable}
    a = {t: _state(after[0].get(t)) if after else "failed" for t in stable}
    f2p = [t for t in stable if b[t] == "failed" and a[t] == "passed"]
    p2p = [t for t in stable if b[t] == "passed" and a[t] == "passed"]
    broken = [t for t in stable if b[t] == "passed" and a[t] == "failed"]
    j = Judgement("task", fail_to_pass=f2p, pass_to_pass=p2p, flaky=flaky)
    if broken:
        j.verdict, j.detail = "regression", f"{len(broken)} tests pass before the fix and fail after: {', '.join(broken[:5])}"
    elif not f2p:
        still = [t for t in stable if b[t] == "failed" and a[t] == "failed"]
        if any(_state(r.get(t)) == "failed" for r in before for t in flaky):
            j.verdict, j.detail = "flaky", f"only flaky tests fail before the fix: {', '.join(flaky[:5])}"
        elif still:
            j.verdict, j.detail = "no_f2p", f"{len(still)} tests fail before the fix and after it: {', '.join(still[:5])}"
        else:
            j.verdict, j.detail = "no_f2p", "every test passes before the fix: the tests do not catch the bug"
    return j


def validate_fix(record: ImageRecord, patches: FixPatches, *, runs: int = 3, timeout: float = 300,
                 backend: Backend | None = None) -> Judgement:
    """Run the relevant tests before and after the gold patch in a fresh sandbox of `record`'s image."""
    started = time.monotonic()
    command = narrowed_command(record.test_command or "python -m pytest", patches.test_modules)
    extra = f"--timeout={record.per_test_timeout} --timeout-method=signal" if record.per_test_timeout else ""
    made = 0

    def phase(box: DockerSandbox, passing_before: set[str] | None) -> tuple[list[dict[str, str]], str, Judgement | None]:
        nonlocal made
        outcomes, first_junit = [], ""
        for i in range(runs):
            run = run_pytest(box, command, timeout, extra_args=extra, report=f"/tmp/forager-mine-{made}.xml")
            made += 1
            if run.timed_out:
                return outcomes, first_junit, Judgement("hang", f"a test run exceeded {timeout:.0f}s")
            try:
                outcomes.append(parse_junit(run.junit) if run.junit else None)
            except ValueError:
                outcomes.append(None)
            if outcomes[-1] is None:
                return outcomes, first_junit, Judgement("no_report", f"pytest wrote no report (exit {run.exit_code}): "
                                                                     f"{run.output[-300:]}")
            first_junit = first_junit or run.junit
            if passing_before is not None and i == 0 and not any(
                    o == "passed" and t not in passing_before for t, o in outcomes[0].items()):
                broken = collection_errors(run.junit)
                if broken:  # the fix's own tests cannot even be imported here: the environment, not the fix
                    return outcomes, first_junit, Judgement("uncollectable", "; ".join(
                        f"{t}: {m}" for t, m in sorted(broken.items())[:3])[:500])
                still = sorted(t for t, o in outcomes[0].items() if t not in passing_before and _state(o) == "failed")
                return outcomes, first_junit, Judgement(
                    "no_f2p", f"no test failing before the fix passes after it; {len(still)} fail after it too: "
                              f"{', '.join(still[:5])}")
        return outcomes, first_junit, None

    with DockerSandbox.start(record.tag, kind="mine", backend=backend, workdir=record.workdir,
                             labels={"forager.repo": record.repo}) as box:
        if patches.test_patch:
            box.write(TEST_PATCH, patches.test_patch)
            applied = box.run(f"{APPLY} {TEST_PATCH}", 120)
            if applied.exit_code != 0:
                return _done(Judgement("test_patch_conflict", applied.text[-300:]), started, command, made)
        before, junit, stop = phase(box, None)
        if stop:
            return _done(stop, started, command, made)
        if not any(_state(o) == "failed" for r in before for o in r.values()):
            j = decide(before, [])
            j.verdict, j.detail = "no_f2p", "every test passes before the fix: the tests do not catch the bug"
            return _done(j, started, command, made)
        box.write(GOLD_PATCH, patches.gold_patch)
        applied = box.run(f"{APPLY} {GOLD_PATCH}", 120)
        if applied.exit_code != 0:
            return _done(Judgement("gold_patch_conflict", applied.text[-300:]), started, command, made)
        after, _, stop = phase(box, {t for t in set().union(*before) if all(r.get(t) == "passed" for r in before)})
        if stop:
            return _done(stop, started, command, made)
    judgement = decide(before, after)
    all_messages = failure_messages(junit) if junit else {}
    judgement.messages = {t: all_messages.get(t, "") for t in judgement.fail_to_pass}
    return _done(judgement, started, command, made)


def _done(j: Judgement, started: float, command: str, runs: int) -> Judgement:
    j.test_command, j.runs, j.seconds = command, runs, round(time.monotonic() - started, 2)
    return j
