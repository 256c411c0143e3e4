"""Mutations as data: a `Candidate` (one mutated file), its `git apply`-compatible diff, and the functions of a
module by qualified name. The operators that make candidates are in operators.py."""

from __future__ import annotations

import ast
import difflib
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    file: str
    function: str  # qualified name, e.g. "Parser.parse"
    lineno: int  # line of the mutated node
    operator: str
    description: str
    source: str  # the whole mutated file

    def diff(self, original: str) -> str:
        return unified_diff(self.file, original, self.source)

    def key(self, original: str) -> str:
        """Identity for de-duplication and resume: function, operator and the diff's changed text."""
        changed = [
            re.sub(r"\s+", "", line)
            for line in self.diff(original).splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        digest = hashlib.sha1("\n".join(changed).encode()).hexdigest()[:16]
        return f"{self.file}:{self.function}:{self.operator}:{digest}"


def unified_diff(path: str, before: str, after: str) -> str:
    """A `git apply`-compatible unified diff of one file (handles a missing final newline)."""
    a, b = _lines(before), _lines(after)
    out = [f"diff --git a/{path} b/{path}\n"]
    body = list(difflib.unified_diff(a, b, f"a/{path}", f"b/{path}", n=3))
    if not body:
        return ""
    for line in body:
        if line.endswith("\n"):
            out.append(line)
        else:
            out.append(line + "\n\\ No newline at end of file\n")
    return "".join(out)


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


# ---------------------------------------------------------------- locating functions


def functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method with its qualified name (matches code objects' co_qualname)."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                yield name, child
                yield from walk(child, f"{name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")  # type: ignore[misc]
