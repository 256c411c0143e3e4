"""Listing the store's files cheaply, as (path relative to home, mtime_ns, size).

Strings and os.scandir, not pathlib: at 100k files, building Path objects cost more than the stat
calls. For trajectories a directory shortcut skips whole repositories: the store writes a record by
renaming a temp file into trajectories/<repo>/, and a rename (like a create or a delete) changes the
directory's mtime, so a directory whose mtime has not moved holds the same files as last time. A file
rewritten in place does not move its directory's mtime; the periodic full sweep catches that.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field

# A directory modified this recently may change again within the same clock tick without its mtime
# moving (coarse timestamps): it is listed again next time rather than trusted.
RACY_NS = 2_000_000_000

Entry = tuple[str, int, int]  # (path relative to home, mtime_ns, size)


@dataclass
class TrajectoryListing:
    files: list[Entry] = field(default_factory=list)  # the files of the directories listed
    listed: list[str] = field(default_factory=list)  # directories (relative to home) whose files were listed
    skipped: set[str] = field(default_factory=set)  # directories unchanged since the last refresh
    vanished: list[str] = field(default_factory=list)  # directories known before and gone now
    marks: dict[str, int] = field(default_factory=dict)  # directory -> mtime_ns to remember (-1: do not trust)


def _entry(home: str, path: str) -> Entry | None:
    try:
        st = os.stat(path)
    except OSError:  # vanished between the listing and the stat: the next refresh settles it
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return os.path.relpath(path, home), st.st_mtime_ns, st.st_size


def file_entry(home: str, path: str) -> list[Entry]:
    found = _entry(home, path)
    return [found] if found else []


def jsonl_entries(home: str, directory: str, skip_suffix: str | None = None) -> list[Entry]:
    if not os.path.isdir(directory):
        return []
    with os.scandir(directory) as it:
        names = sorted(e.name for e in it if e.name.endswith(".jsonl") and not (skip_suffix and e.name.endswith(skip_suffix)))
    return [e for e in (_entry(home, os.path.join(directory, n)) for n in names) if e]


def trajectory_listing(home: str, root: str, known_dirs: dict[str, int], full: bool) -> TrajectoryListing:
    """trajectories/<repo>/<id>.jsonl without the store's in-flight .tmp- files; unchanged directories
    are skipped unless `full`."""
    out = TrajectoryListing()
    rel_root = os.path.relpath(root, home)
    present = set()
    if os.path.isdir(root):
        now = time.time_ns()
        with os.scandir(root) as repos:
            for repo in repos:
                if not repo.is_dir(follow_symlinks=False):
                    continue
                rel_dir = f"{rel_root}/{repo.name}"
                present.add(rel_dir)
                mtime = repo.stat(follow_symlinks=False).st_mtime_ns  # read before listing: a later change moves it
                if not full and known_dirs.get(rel_dir) == mtime:
                    out.skipped.add(rel_dir)
                    continue
                out.listed.append(rel_dir)
                out.marks[rel_dir] = mtime if now - mtime > RACY_NS else -1
                with os.scandir(repo.path) as entries:
                    for e in entries:
                        if not e.name.endswith(".jsonl") or e.name.startswith(".tmp-"):
                            continue
                        try:
                            st = e.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if stat.S_ISREG(st.st_mode):
                            out.files.append((f"{rel_dir}/{e.name}", st.st_mtime_ns, st.st_size))
    out.vanished = [d for d in known_dirs if d not in present]
    return out
