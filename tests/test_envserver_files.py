"""edit semantics on bytes (no Docker): exactly-once matching, line numbers, untouched bytes."""

from __future__ import annotations

import pytest

from envserver.files import ToolError, apply_edit, resolve
from envserver.session import quote


def test_single_match_replaced_and_snippet_numbered():
    data = b"".join(b"line %d\n" % i for i in range(1, 31))
    new, snippet = apply_edit(data, "line 15\n", "fifteen\nand a half\n", "f.txt")
    assert new == data.replace(b"line 15\n", b"fifteen\nand a half\n")
    numbers = [int(line.split("\t")[0]) for line in snippet.splitlines()]
    assert numbers == list(range(7, 25))  # 8 lines of context around the two new lines (15-16)


def test_every_match_is_listed_including_overlapping_ones():
    with pytest.raises(ToolError, match="3 times .* lines 1, 2, 4"):
        apply_edit(b"aa\naa\nb\naa\n", "aa", "c", "f")
    with pytest.raises(ToolError, match="2 times .* lines 1, 1"):
        apply_edit(b"aaa\n", "aa", "b", "f")  # overlapping: ambiguous too


def test_errors_for_missing_identical_and_empty_old():
    with pytest.raises(ToolError, match="not found"):
        apply_edit(b"x\n", "y", "z", "f")
    with pytest.raises(ToolError, match="identical"):
        apply_edit(b"x\n", "x", "x", "f")
    with pytest.raises(ToolError, match="empty"):
        apply_edit(b"x\n", "", "y", "f")


def test_crlf_file_edited_in_its_own_line_endings_and_nothing_else_changes():
    data = b"a\r\nb\r\nc\r\n\tkeep\r\nlast"
    new, _ = apply_edit(data, "b\nc", "B\nC", "f")
    assert new == b"a\r\nB\r\nC\r\n\tkeep\r\nlast"


def test_paths_resolve_against_the_workdir():
    assert resolve("src/x.py", "/repo") == "/repo/src/x.py"
    assert resolve("/etc/hosts", "/repo") == "/etc/hosts"
    assert resolve("../tmp/y", "/repo") == "/tmp/y"
    with pytest.raises(ToolError):
        resolve("  ", "/repo")


def test_commands_are_quoted_for_bash_ansi_c_strings():
    import subprocess

    command = "echo 'it''s' \"q\" \\ $HOME\n\tprintf '%s' \x01done"
    out = subprocess.run(["bash", "-c", f"printf '%s' {quote(command)}"], capture_output=True).stdout.decode()
    assert out == command
