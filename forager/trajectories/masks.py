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
- `benchmark`: pytest-benchmark's result tables, which are timings through and through: the title's dash
  padding, the header's unit and spacing, the rules, and each row's figures (a row keeps only its test
  name; rows are sorted, since the table is ordered by the measured minimum). Only inside a table (from
  its title, header or first row to the next blank line); applied first.
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


_BENCH_TITLE = re.compile(r"^-+ (benchmark(?: '[^']*')?: \d+ tests?) -+$")
_BENCH_HEADER = re.compile(r"^Name \(time in \S+\)\s")
_BENCH_FIGURE = re.compile(r"[\d,]+(?:\.\d+)? \(>?[\d.]+\)")  # `52,613,604.9994 (1.09)`: a value and its ratio
_RULE = re.compile(r"^-{10,}$")


def _is_row(line: str) -> bool:
    return len(_BENCH_FIGURE.findall(line)) >= 3 and not line[:1].isspace()


def mask_benchmark_tables(text: str) -> str:
    out: list[str] = []
    rows: list[str] = []
    in_table = False
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if _is_row(line):
            rows.append(f"<BENCHMARK ROW {line.split()[0]}>")
            in_table = True
            continue
        out.extend(sorted(rows))
        rows = []
        if title := _BENCH_TITLE.match(line):
            out.append(f"<{title[1]}>")
            in_table = True
        elif _BENCH_HEADER.match(line):
            out.append("<BENCHMARK HEADER>")
            in_table = True
        elif _RULE.match(line) and (in_table or (i + 1 < len(lines) and _is_row(lines[i + 1]))):
            out.append("<BENCHMARK RULE>")  # also the rule above the rows when `tail` cut the title and header
        else:
            in_table = in_table and line.strip() != ""
            out.append(line)
    out.extend(sorted(rows))
    return "\n".join(out)


def mask(text: str) -> str:
    text = mask_benchmark_tables(text)
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
