"""Which images this server may start: explicit tags, globs, and the builder's catalog."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path


class AllowList:
    def __init__(self, patterns: list[str], catalog: Path | None):
        self.patterns = list(patterns)
        self.catalog = catalog
        self._catalog_tags: set[str] = set()
        self._catalog_mtime: tuple[int, int] | None = None

    def allows(self, image: str) -> bool:
        if any(image == p or fnmatch.fnmatchcase(image, p) for p in self.patterns):
            return True
        # A bare repository name means its :latest tag, as Docker reads it.
        if ":" not in image.rsplit("/", 1)[-1] and self.allows_tag(image + ":latest"):
            return True
        return image in self.catalog_tags()

    def allows_tag(self, tag: str) -> bool:
        return any(tag == p or fnmatch.fnmatchcase(tag, p) for p in self.patterns) or tag in self.catalog_tags()

    def catalog_tags(self) -> set[str]:
        """Tags of 'ok' records; re-read only when the file changed (the builder appends while we run)."""
        if not self.catalog:
            return set()
        try:
            st = self.catalog.stat()
        except FileNotFoundError:
            return set()
        mtime = (st.st_mtime_ns, st.st_size)  # size too: an append within one mtime tick still counts
        if mtime != self._catalog_mtime:
            latest: dict[tuple, dict] = {}  # the last record for a (repo, commit) wins
            for line in self.catalog.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a torn last line while the builder writes: skip it, read it next time
                if isinstance(rec, dict):
                    latest[(rec.get("repo"), rec.get("commit"))] = rec
            tags = {r["tag"] for r in latest.values() if r.get("status") == "ok" and r.get("tag")}
            self._catalog_tags, self._catalog_mtime = tags, mtime
        return self._catalog_tags

    def describe(self) -> str:
        parts = [", ".join(self.patterns) or "no patterns"]
        if self.catalog:
            parts.append(f"'ok' records of {self.catalog}")
        return "; ".join(parts)
