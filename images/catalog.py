"""The image catalog: $FORAGER_HOME/catalog.jsonl, one ImageRecord per line, appended.

Appends are whole lines under an exclusive file lock (forager.jsonl), so parallel builders (threads or
processes) never interleave. Readers take the last record per (repo, source, commit); a line that does not parse
(a crash mid-write on another filesystem) is skipped with a warning, never fatal.
"""

from __future__ import annotations

import logging
from pathlib import Path

from forager import jsonl
from forager.models import ImageRecord

log = logging.getLogger(__name__)


def append_record(path: str | Path, record: ImageRecord) -> None:
    jsonl.append(path, [record])


def load_records(path: str | Path) -> list[ImageRecord]:
    """Every build outcome, the last record per (repo, source, commit), in order of first appearance."""
    latest: dict[tuple, ImageRecord] = {}
    for number, obj, _line in jsonl.read(path):
        try:
            if obj is None:
                raise ValueError("not a JSON object")
            record = ImageRecord.model_validate(obj)
        except ValueError as exc:  # pydantic's ValidationError is one
            log.warning("%s:%d: skipping unreadable catalog line: %s", path, number, str(exc)[:200])
            continue
        key = (record.repo, record.source, record.commit)
        latest.pop(key, None)  # re-insert so order follows the newest record
        latest[key] = record
    return list(latest.values())


def load_catalog(path: str | Path) -> dict[str, ImageRecord]:
    """Records that name an image, keyed by tag (the last record for a tag wins)."""
    return {r.tag: r for r in load_records(path) if r.tag}


def ok_records(path: str | Path) -> list[ImageRecord]:
    """The validated, runnable images: status ok with a tag."""
    return [r for r in load_catalog(path).values() if r.status == "ok"]


def find_ok(path: str | Path, repo: str, commit: str) -> ImageRecord | None:
    """The latest ok record for repo@commit, if any."""
    for record in reversed(load_records(path)):
        if record.repo == repo and record.commit == commit and record.status == "ok" and record.tag:
            return record
    return None
