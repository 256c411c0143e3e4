"""What a change does to Python code, from file texts and diffs alone: whether it changes the code at all
(not just whitespace, comments or docstrings), which functions and classes it touches, and whether a test
change reaches them (names them, or imports the package they live in)."""

from __future__ import annotations

import ast
import re
from pathlib import PurePosixPath

# Names too common to count as evidence that a test reaches the changed code.
GENERIC_NAMES = {"__init__", "main", "run", "call", "get", "set", "test", "tests", "self", "cls"}


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def same_code(before: str | None, after: str | None) -> bool:
    """True when two versions of a module differ only in whitespace, comments and docstrings."""
    if before is None or after is None:
        return False
    try:
        return ast.dump(_strip_docstrings(ast.parse(before))) == ast.dump(_strip_docstrings(ast.parse(after)))
    except (SyntaxError, ValueError, RecursionError):
        return False  # not Python 3 we can parse: count it as a real change


def changed_lines(patch: str) -> tuple[set[int], set[int]]:
    """(old line numbers deleted, new line numbers added) of a one-file unified diff."""
    old_lines, new_lines = set(), set()
    old = new = 0
    for line in patch.splitlines():
        m = re.match(r"@@ -(\d+)(?:,\d+)? \+(\d+)", line)
        if m:
            old, new = int(m.group(1)), int(m.group(2))
        elif line.startswith("-") and not line.startswith("---"):
            old_lines.add(old)
            old += 1
        elif line.startswith("+") and not line.startswith("+++"):
            new_lines.add(new)
            new += 1
        elif line.startswith(" "):
            old += 1
            new += 1
    return old_lines, new_lines


def enclosing(source: str | None, lines: set[int]) -> set[str]:
    """Names of the functions and classes (every level) that hold any of `lines`."""
    if not source or not lines:
        return set()
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if any(first <= n <= (node.end_lineno or node.lineno) for n in lines):
                names.add(node.name)
    return names


def touched_names(path: str, before: str | None, after: str | None, patch: str) -> set[str]:
    """What a library file's change touches: its enclosing functions/classes and the module's own name."""
    old_lines, new_lines = changed_lines(patch)
    names = enclosing(before, old_lines) | enclosing(after, new_lines)
    stem = PurePosixPath(path).stem
    names.add((PurePosixPath(path).parent.name if stem == "__init__" else stem).lstrip("_"))
    return {n for n in names if len(n) >= 3 and n not in GENERIC_NAMES}


def top_package(path: str) -> str:
    """The importable top-level name a library file belongs to (`src/click/core.py` → click)."""
    parts = [p for p in PurePosixPath(path).parts[:-1] if p not in ("src", "lib", "python")]
    return parts[0] if parts else PurePosixPath(path).stem


def imports(source: str | None) -> set[str]:
    """Every module a file imports, with each dotted prefix (`a.b.c` gives a, a.b, a.b.c)."""
    try:
        tree = ast.parse(source or "")
    except (SyntaxError, ValueError, RecursionError):
        return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return found


def reached(names: set[str], test_diff: str, test_paths: list[str], test_sources: list[str | None],
            code_paths: list[str]) -> list[str]:
    """How a test change reaches the changed code: the names it mentions, else the changed packages its
    test modules import ([] when neither)."""
    text = test_diff + "\n" + "\n".join(test_paths)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    parts = {p for w in words for p in w.split("_") if p}
    found = [n for n in sorted(names) if n in words or n.lstrip("_") in words or n in parts]
    if found:
        return found
    imported = set().union(set(), *(imports(s) for s in test_sources))
    return [f"import {p}" for p in sorted({top_package(p) for p in code_paths} & imported)]


def added_lines(patch: str, min_chars: int = 12) -> set[str]:
    """The stripped lines a patch adds that are long enough to be recognisable if quoted elsewhere."""
    return {ln[1:].strip() for ln in patch.splitlines()
            if ln.startswith("+") and not ln.startswith("+++") and len(ln[1:].strip()) >= min_chars}
