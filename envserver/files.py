"""edit/create semantics on bytes, independent of where the file lives.

The edit touches only the bytes of the one match: tabs, CRLF line endings and a missing final
newline elsewhere in the file come back exactly as they were.
"""

from __future__ import annotations

import posixpath

SNIPPET_CONTEXT = 8


class ToolError(Exception):
    """What the agent did wrong, in words it can act on (sent as ok=false, HTTP 200)."""


def resolve(path: str, workdir: str) -> str:
    if not path or not path.strip():
        raise ToolError("path is empty")
    if "\x00" in path:
        raise ToolError("path contains a NUL byte")
    full = posixpath.normpath(posixpath.join(workdir, path))
    return "/" + full.lstrip("/")  # normpath keeps a leading '//'


def apply_edit(data: bytes, old: str, new: str, path: str) -> tuple[bytes, str]:
    """Replace the single occurrence of `old`; returns (new bytes, numbered snippet around the change)."""
    if old == "":
        raise ToolError("old is empty: give the exact text to replace (use create for a new file)")
    if old == new:
        raise ToolError("old and new are identical: nothing would change")
    old_b, new_b = old.encode(), new.encode()
    matches = _find_all(data, old_b)
    if not matches and b"\r\n" in data and "\n" in old and "\r\n" not in old:
        # The file uses CRLF and the agent wrote LF: match and replace in the file's own line endings.
        crlf_old = old_b.replace(b"\n", b"\r\n")
        matches = _find_all(data, crlf_old)
        if matches:
            old_b, new_b = crlf_old, new_b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not matches:
        raise ToolError(f"old text not found in {path}: it must match the file exactly, including whitespace")
    if len(matches) > 1:
        lines = ", ".join(str(_line_of(data, m)) for m in matches)
        raise ToolError(
            f"old text occurs {len(matches)} times in {path}, at lines {lines}: include more surrounding "
            "lines so it matches exactly once"
        )
    at = matches[0]
    result = data[:at] + new_b + data[at + len(old_b) :]
    first = _line_of(result, at)
    last = _line_of(result, at + len(new_b) - 1) if new_b else first  # the line holding the last new byte
    return result, snippet(result, first, last)


def snippet(data: bytes, first: int, last: int, context: int = SNIPPET_CONTEXT) -> str:
    """Lines first-context .. last+context, numbered like `cat -n`."""
    lines = data.decode(errors="replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lo, hi = max(1, first - context), min(len(lines), last + context)
    return "\n".join(f"{n:6d}\t{lines[n - 1].rstrip(chr(13))}" for n in range(lo, hi + 1))


def _find_all(data: bytes, needle: bytes) -> list[int]:
    found, at = [], data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + 1)  # overlapping matches count: the edit would be ambiguous too
    return found


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1
