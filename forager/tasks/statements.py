"""Problem statements from what the failing tests say: the behaviour and its errors, never the changed line."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from envserver.junit import node_id

def failure_messages(junit_xml: str) -> dict[str, str]:
    """{test id: the failure's message} from a JUnit report (message attribute, else first text lines)."""
    messages: dict[str, str] = {}
    for case in ET.fromstring(junit_xml).iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                body = (child.text or "").strip().splitlines()
                text = child.get("message") or (body[-1] if body else "")
                tid = node_id(case.get("classname", ""), case.get("name", ""), case.get("file"))
                messages[tid] = text or child.tag
                break
    return messages


def problem_statement(repo: str, f2p: list[str], messages: dict[str, str], hidden_lines: set[str],
                      hide_tests: bool = True, limit: int = 4) -> str:
    """What a user would report: the failing behaviour and its errors, never the changed line."""
    seen: list[str] = []
    for test in f2p:
        msg = _clean(messages.get(test, ""), hidden_lines)
        if msg and msg not in seen:
            seen.append(msg)
    lines = [
        f"Something in `{repo}` is broken: part of its behaviour no longer works as the project's test suite expects.",
        "",
        f"{len(f2p)} test{'s' if len(f2p) != 1 else ''} of the existing suite now fail{'s' if len(f2p) == 1 else ''}. "
        "The errors observed:",
        "",
    ]
    lines += [f"- {m}" for m in seen[:limit]] or ["- (the tests fail without a message)"]
    if not hide_tests:
        lines += ["", "Failing tests:", *[f"- {t}" for t in f2p]]
    lines += ["", "Find the cause in the library's source code and fix it. The tests are correct: do not change them."]
    return "\n".join(lines)


def _clean(message: str, hidden_lines: set[str]) -> str:
    keep = []
    for line in message.splitlines():
        stripped = line.strip()
        if not stripped or stripped in hidden_lines or any(h and h in stripped for h in hidden_lines if len(h) > 12):
            continue
        keep.append(stripped)
        if len(keep) == 3:
            break
    text = " / ".join(keep)
    return re.sub(r"\s+", " ", text)[:300]
