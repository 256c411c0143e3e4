"""Reading the store's JSONL files tolerantly: a line that does not parse is counted, never fatal.

Every reader returns the byte offset and length of each good line, so the index can later read one
record (a trace) without reading its whole file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


@dataclass
class Parsed(Generic[Model]):
    """The good records of one file (in file order) and what was skipped."""

    records: list[tuple[int, int, Model]] = field(default_factory=list)  # (offset, length, record)
    bad: int = 0
    error: str | None = None  # the first problem, for the "skipped files" page

    def skip(self, where: str, exc: Exception) -> None:
        self.bad += 1
        if self.error is None:
            self.error = f"{where}: {first_line(exc)}"


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    if isinstance(exc, ValidationError):  # "1 validation error for X\nfield\n  message": keep field and message
        lines = text.splitlines()
        return " ".join(line.strip() for line in lines[:3])[:300]
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def lines_with_offsets(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (byte offset, line) for each non-blank line; reading in binary keeps offsets exact."""
    offset = 0
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield offset, line
            offset += len(line)


def parse_jsonl(path: Path, model: type[Model]) -> Parsed[Model]:
    parsed: Parsed[Model] = Parsed()
    try:
        for offset, line in lines_with_offsets(path):
            try:
                parsed.records.append((offset, len(line), model.model_validate_json(line)))
            except (ValidationError, ValueError) as exc:
                parsed.skip(f"byte {offset}", exc)
    except OSError as exc:
        parsed.skip("read", exc)
    return parsed


def last_wins(records: list[tuple[int, int, Model]], key) -> list[tuple[int, int, Model]]:
    """Keep the last record of each key (the store appends; a later line supersedes an earlier one)."""
    latest: dict = {}
    for item in records:
        latest[key(item[2])] = item
    return list(latest.values())


def read_one(path: Path, offset: int, length: int, model: type[Model]) -> Model:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return model.model_validate_json(fh.read(length))
