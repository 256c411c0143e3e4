"""Problem statements: from what the failing tests say (mutate-fix) or from the fix commit's message plus what
the failing tests say (issue-fix); the behaviour and its errors, never the changed line."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from envserver.junit import node_id
from forager.tasks.codechange import added_lines
from forager.tasks.history import PR_SUFFIX, clean_message

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


def commit_statement(message: str, issues: list[int], f2p: list[str], messages: dict[str, str], gold_patch: str,
                     hide_tests: bool = True, limit: int = 4) -> str:
    """An issue-fix task's statement: the fix commit's message (subject and body, no trailers), the issues it
    references, and the failures seen before the fix; never a line the gold patch adds, nor (hidden) a test name."""
    hidden = added_lines(gold_patch)
    test_names = {t.split("::")[-1].split("[")[0] for t in f2p} if hide_tests else set()
    text = clean_message(message)
    subject, _, body = text.partition("\n")
    kept = [ln for ln in body.strip().splitlines()
            if not any(h in ln for h in hidden) and not any(n in ln for n in test_names)]
    subject = PR_SUFFIX.sub("", subject).strip()
    lines = [subject if subject and not any(h in subject for h in hidden) else "A bug fix", ""]
    if any(ln.strip() for ln in kept):
        lines += [*kept, ""]
    if issues:
        lines += ["Referenced issues: " + ", ".join(f"#{n}" for n in issues), ""]
    seen: list[str] = []
    for test in f2p:
        msg = _clean(messages.get(test, ""), hidden)
        if msg and not any(n in msg for n in test_names) and msg not in seen:
            seen.append(msg)
    lines += [f"Before the fix, {len(f2p)} test{'s' if len(f2p) != 1 else ''} of the project's hidden test changes "
              f"fail{'s' if len(f2p) == 1 else ''}. The errors observed:", ""]
    lines += [f"- {m}" for m in seen[:limit]] or ["- (the tests fail without a message)"]
    if not hide_tests:
        lines += ["", "Failing tests:", *[f"- {t}" for t in f2p]]
    lines += ["", "Change the library's source code so this is fixed. Hidden tests check the behaviour; "
              "do not change the tests."]
    return "\n".join(lines)
