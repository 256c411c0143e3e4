"""What replay treats as legitimately variable in an observation, masked on both sides before comparing.

Each rule is (name, pattern, replacement), applied in this order to the text the model read
(render.observation_text). Nothing else is masked: any other difference is a difference.

- `duration`: a number with a time unit, as test runners and tools print how long they took
  (`in 0.12s`, `12.5 ms`, `(3.01 seconds)`, `0:00:01.52`)
- `address`: hexadecimal addresses of 6+ digits (`0x7f3a2c1b9e80`), as in Python object reprs
- `tmp`: paths under /tmp and /var/tmp (`/tmp/pytest-of-root/pytest-3/x0`, `/tmp/tmpa1b2c3d4`), and
  tempfile's names (`tmpa1b2c3d4`) anywhere
- `pid`: a number after `pid`/`PID`/`process` (`pid=1234`, `PID 99`, `process 4242`)
- `datetime`: ISO dates and times (`2024-05-01T12:00:03.123Z`, `2024-05-01 12:00`), clock times (`12:00:03`),
  `ls -l` and `date` dates (`May  1 12:00`, `Jan  1  2000`, `Wed May  1 12:00:03 UTC 2024`), unix times
  (10-digit numbers starting with 1, optionally with a fraction)
"""

from __future__ import annotations

import re

_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"

RULES: list[tuple[str, re.Pattern, str]] = [
    ("datetime", re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b"),
     "<DATETIME>"),
    ("datetime", re.compile(rf"\b(?:{_DAY}\s+)?{_MONTH}\s+\d{{1,2}}\s+(?:\d{{2}}:\d{{2}}(?::\d{{2}})?(?:\s+[A-Z]{{2,5}})?(?:\s+\d{{4}})?|\d{{4}})\b"),
     "<DATE>"),
    ("duration", re.compile(r"\b\d+:\d{2}:\d{2}(?:\.\d+)?\b"), "<T>"),
    ("datetime", re.compile(r"\b\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\b"), "<TIME>"),
    ("datetime", re.compile(r"(?<![\d.])1\d{9}(?:\.\d+)?(?![\d.])"), "<EPOCH>"),
    ("duration", re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:s|ms|us|µs|ns|sec|secs|seconds?|minutes?|min)\b"), "<T>"),
    ("address", re.compile(r"\b0x[0-9a-fA-F]{6,}\b"), "0x<ADDR>"),
    ("tmp", re.compile(r"/(?:var/)?tmp/[^\s'\"):,\]]+"), "/tmp/<TMP>"),
    ("tmp", re.compile(r"\btmp[a-z0-9_]{8}\b"), "tmp<NAME>"),
    ("pid", re.compile(r"\b(pid|PID|process)(\s*[=:]?\s*)\d+\b"), r"\1\2<PID>"),
]


def mask(text: str) -> str:
    for _name, pattern, replacement in RULES:
        text = pattern.sub(replacement, text)
    return text


def first_difference(a: str, b: str) -> str:
    """The first line where two (masked) texts differ, as `recorded | replayed` (for the nondeterminism catalog)."""
    la, lb = a.splitlines(), b.splitlines()
    for i in range(max(len(la), len(lb))):
        x = la[i] if i < len(la) else "<missing>"
        y = lb[i] if i < len(lb) else "<missing>"
        if x != y:
            return f"line {i + 1}: {x[:200]!r} | {y[:200]!r}"
    return ""
