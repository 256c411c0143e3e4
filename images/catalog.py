"""The image catalog: $FORAGER_HOME/catalog.jsonl, one ImageRecord per line, appended.

Appends are whole lines under an exclusive file lock, so parallel builders (threads or processes)
never interleave. Readers take the last record per (repo, source, commit); a line that does not parse
(a crash mid-write on another filesystem) is skipped with a warning, never fatal.
"""

from __future__ import annotations

import fcntl
import json
import logging
from pathlib import Path

from pydantic import ValidationError

from forager.models import ImageRecord

log = logging.getLogger(__name__)


def append_record(path: str | Path, record: ImageRecord) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = record.model_dump_json() + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(line)
            fh.flush()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_records(path: str | Path) -> list[ImageRecord]:
    """Every build outcome, the last record per (repo, source, commit), in order of first appearance."""
    path = Path(path)
    if not path.exists():
        return []
    latest: dict[tuple, ImageRecord] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = ImageRecord.model_validate(json.loads(line))
        except (json.JSONDecodeError, ValidationError) as exc:
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
