"""JSON Lines on disk: append, read, replace. One durability rule for all of Forager's files:

a write counts once it is fsynced. Appends write whole lines under an exclusive lock and fsync the
file, so parallel writers (threads or processes) never interleave and a crash leaves at most one torn
last line, which readers skip. A replace writes a temp file in the same directory, fsyncs it, renames
it over the target and fsyncs the directory, so a crash leaves the old file or the new one, never half.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel


def dumps(row: Any) -> str:
    """One compact JSON line (no newline) for a dict or a pydantic model."""
    if isinstance(row, BaseModel):
        return row.model_dump_json()
    return json.dumps(row, separators=(",", ":"), default=str)


def append(path: str | Path, rows: Iterable[Any]) -> None:
    """Append whole lines (dicts or models), locked and fsynced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(dumps(r) + "\n" for r in rows)
    if not text:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read(path: str | Path) -> Iterator[tuple[int, dict | None, str]]:
    """(line number, the object or None when the line is not a JSON object, raw line); blank lines skipped.

    A missing file reads as empty.
    """
    try:
        fh = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                yield number, None, line
                continue
            yield number, obj if isinstance(obj, dict) else None, line


def objects(path: str | Path) -> Iterator[dict]:
    """Just the JSON objects of a file, skipping torn or invalid lines."""
    for _, obj, _ in read(path):
        if obj is not None:
            yield obj


@contextmanager
def replacing(path: str | Path) -> Iterator[IO[str]]:
    """`with replacing(p) as fh: fh.write(...)`: p is replaced atomically when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def replace(path: str | Path, rows: Iterable[Any]) -> None:
    """Write `rows` as the whole file, atomically."""
    with replacing(path) as fh:
        for row in rows:
            fh.write(dumps(row) + "\n")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # makes the rename itself durable
    finally:
        os.close(fd)
