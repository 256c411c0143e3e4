"""Which mutations synthesis tries, in which order: covered functions of the library (never its tests),
one mutation per function per round, operators interleaved, all in a seeded order."""

from __future__ import annotations

import ast
import random
from collections import deque
from collections.abc import Iterator

from forager.tasks.mutations import Candidate, functions
from forager.tasks.operators import mutate_function


def is_test_path(path: str) -> bool:
    parts = path.split("/")
    name = parts[-1]
    return (
        name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
        or any(p in ("tests", "test", "testing") for p in parts[:-1])
    )


def candidates_for(box, covering, passing, test_files, seed) -> tuple[int, Iterator[tuple[Candidate, list[str], str]]]:
    """(covered functions, their mutations round-robin across functions in a seeded order).

    A function's mutations are generated only when the round-robin first reaches it: generating
    every covered function's mutations up front took minutes on a large repo (boltons), for a
    budget that draws a few dozen.
    """
    rng = random.Random(seed)
    tests_set = set(test_files)
    by_file: dict[str, list[str]] = {}
    for key in sorted(covering):
        path, _, qualname = key.partition("::")
        if path in tests_set or is_test_path(path) or "<" in qualname or path.startswith(("setup.py", "docs/")):
            continue
        by_file.setdefault(path, []).append(qualname)
    entries: list[tuple[str, str, str, list[str]]] = []
    for path, names in sorted(by_file.items()):
        try:
            source = box.read(path).decode()
            known = {n for n, _ in functions(ast.parse(source))}
        except (FileNotFoundError, SyntaxError, UnicodeDecodeError):
            continue
        for name in names:
            if name not in known:
                continue
            tests = sorted(t for t in covering[f"{path}::{name}"] if t in passing) or sorted(covering[f"{path}::{name}"])
            entries.append((path, source, name, tests))
    rng.shuffle(entries)
    return len(entries), _round_robin(entries, rng)


def _round_robin(entries, rng: random.Random) -> Iterator[tuple[Candidate, list[str], str]]:
    """(mutation, covering tests, the file's original text): one mutation per function per round, in the
    entries' order; later rounds take each function's next one."""
    rounds: deque[tuple[Iterator[Candidate], list[str], str]] = deque()
    for path, source, name, tests in entries:  # first round: generate lazily, function by function
        cands = iter(_interleave_operators(mutate_function(path, source, name), rng))
        first = next(cands, None)
        if first is not None:
            yield first, tests, source
            rounds.append((cands, tests, source))
    while rounds:
        cands, tests, source = rounds.popleft()
        nxt = next(cands, None)
        if nxt is not None:
            yield nxt, tests, source
            rounds.append((cands, tests, source))


def _interleave_operators(cands: list[Candidate], rng: random.Random) -> list[Candidate]:
    """One of each operator in turn (shuffled), so operators with many sites (e.g. remove_arg) don't crowd out the rest."""
    groups: dict[str, list[Candidate]] = {}
    for c in cands:
        groups.setdefault(c.operator, []).append(c)
    order = list(groups.values())
    for g in order:
        rng.shuffle(g)
    rng.shuffle(order)
    out: list[Candidate] = []
    while order:
        for g in list(order):
            out.append(g.pop(0))
            if not g:
                order.remove(g)
    return out
