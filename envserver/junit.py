"""Test outcomes from JUnit XML, keyed by pytest node id.

Grading and validation read results only from this structured report (and exit codes), never
from text a program printed: an agent can print "PASSED", it cannot write the report pytest
writes after it runs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Literal

Outcome = Literal["passed", "failed", "error", "skipped"]

# xunit1 keeps the `file` attribute, which lets us rebuild the exact node id.
_PYTEST_ARGS = "--junitxml={path} -o junit_family=xunit1 -p no:cacheprovider"


def pytest_args(xml_path: str, per_test_timeout: int | None = None) -> str:
    """Arguments appended to a pytest command so it writes the report this module reads.

    With `per_test_timeout`, pytest-timeout (which the image must have) fails a test that runs longer,
    by a signal in that test, so one hanging test costs seconds and the rest of the run goes on.
    """
    args = _PYTEST_ARGS.format(path=xml_path)
    if per_test_timeout:
        args += f" --timeout={int(per_test_timeout)} --timeout-method=signal"
    return args


TIMEOUT_MESSAGE = "Timeout >"  # how pytest-timeout's failure message begins ("Failed: Timeout >10.0s")


def timed_out(xml_text: str) -> list[str]:
    """Node ids of tests the per-test timeout killed, from a JUnit report."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return []
    found = []
    for case in root.iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error") and TIMEOUT_MESSAGE in (child.get("message") or "")[:200]:
                found.append(node_id(case.get("classname", ""), case.get("name", ""), case.get("file")))
                break
    return sorted(set(found))


def node_id(classname: str, name: str, file: str | None) -> str:
    """Rebuild `path/to/test_x.py::Class::test[param]` from a JUnit testcase.

    pytest writes classname as the dotted module path plus any classes; with the file known, the
    module part is the file path without `.py`, and what follows it are class names.
    """
    if file and file.endswith(".py"):
        module = file[:-3].replace("/", ".").replace("\\", ".")
        parts = [file]
        if classname == module:
            pass
        elif classname.startswith(module + "."):
            parts.extend(classname[len(module) + 1 :].split("."))
        else:
            # rootdir differs from the file's package path: keep the trailing names that are classes
            tail = [p for p in classname.split(".") if p and p[0].isupper()]
            parts.extend(tail)
        parts.append(name)
        return "::".join(parts)
    if classname:
        return f"{classname.replace('.', '/')}.py::{name}" if "." not in classname else f"{classname}::{name}"
    return name


def parse_junit(xml_text: str) -> dict[str, Outcome]:
    """Map each test case in a JUnit report to its outcome. Raises ValueError on a malformed report."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ValueError(f"malformed JUnit XML: {exc}") from exc
    outcomes: dict[str, Outcome] = {}
    for case in root.iter("testcase"):
        tid = node_id(case.get("classname", ""), case.get("name", ""), case.get("file"))
        tags = {child.tag for child in case}
        if "error" in tags:
            outcome: Outcome = "error"
        elif "failure" in tags:
            outcome = "failed"
        elif "skipped" in tags:
            outcome = "skipped"
        else:
            outcome = "passed"
        # A test reported twice (teardown error after a pass) keeps its worst outcome.
        prev = outcomes.get(tid)
        if prev is None or _rank(outcome) > _rank(prev):
            outcomes[tid] = outcome
    return outcomes


def _rank(outcome: Outcome) -> int:
    return {"skipped": 0, "passed": 1, "failed": 2, "error": 3}[outcome]


def summarize(outcomes: dict[str, Outcome]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for o in outcomes.values():
        counts[o] += 1
    return counts
