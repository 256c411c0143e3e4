"""Per-step environment state: what each tool call changed in the repository and in the shell.

After every shell/edit/create call the server records, in the tool's response (`StateRecord`):

- files created, modified and deleted under the env's workdir, with a unified diff (capped per step), found
  by a stat walk (type, mode, size, inode, mtime, ctime) done by a *probe* (probes.py): a small Python
  process in the container (walker.py) that walks in-process and answers over the exec attach socket, so a
  step costs one round trip and no process start (`find` through a bash session where python3 cannot run).
  Only files whose stat changed are read and hashed; the rest keep their digests.
- the shell's cwd and the exported variables that changed, from the agent's own session: its sentinel
  carries `$PWD` and `export -p` at no extra round trip.
- `tree_digest`: sha256 over (git mode, content sha1, path) of every file, so two steps with the same digest
  left the repository in the same state, in any env.

The walk leaves out `.git` and the caches envserver/patch.py names, as grading does. The record is
observational (world-model data), not a security boundary: the agent is root in its env and can change what
the probe runs (its python3, or `find`), or kill the probe (that step records None; a new probe starts). A
change that keeps size, mtime, inode and ctime is not seen; ctime cannot be set from user space, but a clock
change could. Grading never uses this record. The baseline (content digests of the untouched tree) is read
once per (image, workdir, setup patch) through the archive API and shared by every env of it.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import logging
import re
import time
from collections import OrderedDict

from envserver import patch as patches
from envserver import probes
from envserver.models import StateRecord
from envserver.probes import KEPT_LIMIT, TreeTooLarge  # noqa: F401  (named here for callers)
from envserver.session import BashSession

log = logging.getLogger("envserver")

IGNORED_VARS = {"PWD", "OLDPWD", "SHLVL", "_"}  # follow from cwd, or change by themselves
_EXPORT = re.compile(r'^(?:declare -[A-Za-z-]+|export) ([A-Za-z_][A-Za-z0-9_]*)(?:=("(?:[^"\\]|\\.)*"))?$', re.M | re.S)
_UNESCAPE = re.compile(r'\\([\\"$`])')


def parse_exports(text: str) -> dict[str, str]:
    """`export -p` output → {name: value} (a variable exported without a value maps to "")."""
    return {m[1]: _UNESCAPE.sub(r"\1", m[2][1:-1]) if m[2] else "" for m in _EXPORT.finditer(text)}


def tree_digest(entries: dict[str, patches.Entry]) -> str:
    h = hashlib.sha256()
    for path in sorted(entries):
        e = entries[path]
        h.update(f"{e.git_mode} {e.digest} {path}\0".encode())
    return "sha256:" + h.hexdigest()


class Contents:
    """File versions by content digest, shared by every env of the server, bounded in bytes (LRU)."""

    def __init__(self, limit: int = 256 << 20):
        self.limit, self.size = limit, 0
        self._data: OrderedDict[str, bytes] = OrderedDict()

    def put(self, digest: str, data: bytes) -> None:
        if len(data) > KEPT_LIMIT or digest in self._data:
            return
        self._data[digest] = data
        self.size += len(data)
        while self.size > self.limit:
            self.size -= len(self._data.popitem(last=False)[1])

    def get(self, digest: str) -> bytes | None:
        data = self._data.get(digest)
        if data is not None:
            self._data.move_to_end(digest)
        return data


class Baselines:
    """The untouched tree of each (image id, workdir, setup patch): content digests, read once."""

    def __init__(self, contents: Contents, cached: int = 64):
        self.contents, self.cached = contents, cached
        self._trees: OrderedDict[str, dict[str, patches.Entry]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    async def entries(self, backend, key: str, container_id: str, workdir: str) -> dict[str, patches.Entry]:
        async with self._locks.setdefault(key, asyncio.Lock()):
            if key not in self._trees:
                self._trees[key] = read_tree_into(await asyncio.to_thread(_read, backend, container_id, workdir),
                                                  self.contents)
                while len(self._trees) > self.cached:
                    self._trees.popitem(last=False)
            self._trees.move_to_end(key)
            return self._trees[key]



def _read(backend, container_id: str, workdir: str):
    """(entries, kept contents) of a whole tree through the archive API (in a thread)."""
    try:
        return patches.read_tree(backend.iter_tree(container_id, workdir), base={})
    except FileNotFoundError:
        return {}, {}


def read_tree_into(tree, contents: Contents) -> dict[str, patches.Entry]:
    """Keep a tree's file versions (on the event loop: Contents is not shared with threads)."""
    entries, kept = tree
    for path, (_info, data) in kept.items():
        contents.put(entries[path].digest, data)
    return entries


class StateTracker:
    """One env's view of its own state: the last stat walk, content digests, cwd and exported variables."""

    def __init__(self, backend, container_id: str, workdir: str, contents: Contents, diff_cap: int):
        self.backend, self.container_id, self.workdir = backend, container_id, workdir
        self.contents, self.diff_cap = contents, diff_cap
        self.probe = None  # probes.PythonProbe, or probes.FindProbe where python3 cannot run
        self._no_walker = False
        self.stats: dict[str, tuple] | None = None
        self.entries: dict[str, patches.Entry] | None = None
        self.cwd: str | None = None
        self.exports: dict[str, str] | None = None

    def clone_for(self, container_id: str) -> "StateTracker":
        """A fork's tracker: the same content digests; its own stat walk (inodes differ) on first use."""
        other = StateTracker(self.backend, container_id, self.workdir, self.contents, self.diff_cap)
        other.entries = dict(self.entries) if self.entries is not None else None
        other.cwd, other.exports = self.cwd, dict(self.exports) if self.exports is not None else None
        return other

    async def ensure_baseline(self, session: BashSession, load_entries) -> None:
        """Before the first step: the untouched tree's digests (`load_entries()`), this container's stats."""
        if self.stats is not None:
            return
        stats = await self._walk()
        if self.entries is None:
            self.entries = await load_entries()
        if set(stats) != set(self.entries):  # not the tree the shared baseline describes: read this one
            tree = await asyncio.to_thread(_read, self.backend, self.container_id, self.workdir)
            self.entries = read_tree_into(tree, self.contents)
        self.stats = stats
        self.cwd, self.exports = session.cwd, parse_exports(session.exports)

    async def record(self, session: BashSession) -> StateRecord:
        t0 = time.monotonic()
        stats = await self._walk()
        old_stats, old_entries = self.stats or {}, self.entries or {}
        changed = sorted(p for p, sig in stats.items() if old_stats.get(p) != sig)
        fresh, kept = await self._digests(changed, stats)
        for digest, data in kept.items():
            self.contents.put(digest, data)
        for p in changed:
            if p not in fresh:  # gone between the walk and the read
                del stats[p]
        changed = [p for p in changed if p in fresh]
        entries = {p: e for p, e in old_entries.items() if p in stats}
        entries.update(fresh)
        created = [p for p in changed if p not in old_entries]
        modified = [p for p in changed if p in old_entries and old_entries[p] != entries.get(p)]
        deleted = sorted(p for p in old_entries if p not in stats)
        diff = self._diff(old_entries, entries, sorted(created + modified + deleted))
        exports = parse_exports(session.exports)
        old_exports = self.exports or {}
        env_changed = {k: v for k, v in exports.items() if old_exports.get(k) != v and k not in IGNORED_VARS}
        env_changed.update({k: None for k in old_exports if k not in exports and k not in IGNORED_VARS})
        record = StateRecord(
            files_created=created, files_modified=modified, files_deleted=deleted,
            diff=diff[: self.diff_cap], diff_truncated=len(diff) > self.diff_cap, diff_bytes=len(diff),
            cwd=session.cwd, cwd_changed=self.cwd is not None and session.cwd != self.cwd,
            env_changed=dict(sorted(env_changed.items())), tree_digest=tree_digest(entries),
        )
        self.stats, self.entries, self.cwd, self.exports = stats, entries, session.cwd, exports
        record.seconds = round(time.monotonic() - t0, 6)
        return record

    # ------------------------------------------------------------------ the probe

    async def _probe(self):
        """The walker (a Python process in the env), or `find` through a bash session where it cannot run."""
        if self.probe is None:
            self.probe = await probes.start(self.backend, self.container_id, self.workdir, self.contents,
                                            fallback=self._no_walker)
            self._no_walker = isinstance(self.probe, probes.FindProbe)
        return self.probe

    async def _walk(self) -> dict[str, tuple]:
        try:
            return await (await self._probe()).walk()
        except (probes.ProbeDied, asyncio.TimeoutError, TimeoutError):
            await self._drop_probe()  # killed (by the agent's kill -9 -1?): a new one next step, this step unknown
            raise

    async def _digests(self, paths: list[str], stats: dict[str, tuple]):
        try:
            return await (await self._probe()).digests(paths, stats)
        except (probes.ProbeDied, asyncio.TimeoutError, TimeoutError):
            await self._drop_probe()
            raise

    async def _drop_probe(self) -> None:
        if self.probe is not None:
            await self.probe.close()
            self.probe = None

    def _diff(self, old: dict[str, patches.Entry], new: dict[str, patches.Entry], paths: list[str]) -> str:
        parts = []
        for path in paths:
            before, after = old.get(path), new.get(path)
            a = self._text(before)
            b = self._text(after)
            if a is None or b is None:
                parts.append(f"diff {path}: binary or large file {'changed' if before and after else 'added' if after else 'deleted'}\n")
                continue
            lines = difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True),
                                         "/dev/null" if before is None else f"a/{path}",
                                         "/dev/null" if after is None else f"b/{path}")
            parts.append("".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                                 for line in lines))
            if before and after and before.mode != after.mode:
                parts.append(f"mode {path}: {before.git_mode} -> {after.git_mode}\n")
        return "".join(parts)

    def _text(self, entry: patches.Entry | None) -> str | None:
        if entry is None:
            return ""
        if entry.kind == "l":
            return None
        data = self.contents.get(entry.digest)
        if data is None or b"\0" in data[:8192]:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return None

    async def close(self) -> None:
        if self.probe is not None:
            await self.probe.close()
            self.probe = None
