"""Per-step environment state: what each tool call changed in the repository and in the shell.

After every shell/edit/create call the server records, in the tool's response (`StateRecord`):

- files created, modified and deleted under the env's workdir, with a unified diff (capped per step), found
  by a stat walk (`find -printf` of type, mode, size, inode, mtime and ctime) run by a *probe*: a second
  persistent bash in the container, so the walk costs one round trip on an open socket and no exec. Only
  files whose stat changed are read (one tar through the probe) and hashed; the rest keep their digests.
- the shell's cwd and the exported variables that changed, from the agent's own session: its sentinel
  carries `$PWD` and `export -p` at no extra round trip.
- `tree_digest`: sha256 over (git mode, content sha1, path) of every file, so two steps with the same digest
  left the repository in the same state, in any env.

The walk leaves out `.git` and the caches envserver/patch.py names, as grading does. The record is
observational (world-model data), not a security boundary: the agent can change what the probe runs (it is
root in its env: it can replace `find` or `tar`, or kill the probe, which is then restarted and the step
recorded as None). A change that keeps size, mtime, inode and ctime is not seen; ctime cannot be set from
user space, but a clock change could. Grading never uses this record. The baseline (content digests of the untouched
tree) is read once per (image, workdir, setup patch) through the archive API and shared by every env of it.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import io
import logging
import re
import shlex
import tarfile
import time
from collections import OrderedDict

from envserver import patch as patches
from envserver.models import StateRecord
from envserver.session import BashSession

log = logging.getLogger("envserver")

PROBE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"]
PROBE_TIMEOUT = 60
READ_LIMIT = 8 << 20  # files over this are hashed in the container (sha1sum) and never read or diffed
KEPT_LIMIT = 1 << 20  # file versions up to this size are kept (by digest) to diff the next change against
MAX_FILES = 50_000  # a tree past this is not walked every step: its steps record no state


class TreeTooLarge(Exception):
    """The workdir holds more than MAX_FILES files, or is / (no repository to watch)."""
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
        self.probe: BashSession | None = None
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
        fresh = await self._digests(changed, stats)
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

    async def _run(self, command: str) -> bytes:
        if self.probe is None:
            self.probe = BashSession(self.backend, self.container_id, "/", "root", env=PROBE_ENV)
            await self.probe.start()
        result = await self.probe.run(command, PROBE_TIMEOUT)
        if result.timed_out or result.session_ended:  # the probe was killed (by the agent's kill -9 -1?)
            raise RuntimeError("the state probe did not finish")
        return result.output

    async def _walk(self) -> dict[str, tuple]:
        """{path: (type, mode, size, inode, mtime, ctime, link target)} of every file under the workdir."""
        if self.workdir.rstrip("/") == "":
            raise TreeTooLarge("the workdir is /: there is no repository to watch")
        prune = " -o ".join(["-path " + shlex.quote(self.workdir.rstrip("/") + "/.git")]
                            + [f"-name {shlex.quote(d)}" for d in sorted(patches.CACHE_DIRS)] + ["-name '*.egg-info'"])
        # One process (no pipe to head: each fork costs in a loaded container); the probe's output is bounded.
        out = await self._run(f"find {shlex.quote(self.workdir)} -mindepth 1 \\( {prune} \\) -prune -o "
                              r"\( -type f -o -type l \) -printf '%y %m %s %i %T@ %C@ %P\0%l\0' 2>/dev/null")
        fields = out.split(b"\0")
        if len(fields) > 2 * MAX_FILES + 1:
            raise TreeTooLarge(f"the workdir holds over {MAX_FILES} files")
        stats = {}
        for head, link in zip(fields[0::2], fields[1::2]):
            kind, mode, size, ino, mtime, ctime, path = head.decode(errors="surrogateescape").split(" ", 6)
            if not patches.is_cache(path):
                stats[path] = (kind, mode, size, ino, mtime, ctime, link.decode(errors="surrogateescape"))
        return stats

    async def _digests(self, paths: list[str], stats: dict[str, tuple]) -> dict[str, patches.Entry]:
        """Entries of the changed paths: links from their target, files read (one tar) or hashed in place."""
        entries: dict[str, patches.Entry] = {}
        small, large = [], []
        for p in paths:
            kind, mode, size = stats[p][0], int(stats[p][1], 8), int(stats[p][2])
            if kind == "l":
                entries[p] = patches.Entry("l", 0o777, hashlib.sha1(stats[p][6].encode(errors="surrogateescape")).hexdigest())
            else:
                (large if size > READ_LIMIT else small).append(p)
        root = shlex.quote(self.workdir)
        if small:
            names = " ".join(shlex.quote(p) for p in small)
            data = await self._run(f"cd {root} && printf '%s\\0' {names} | tar --null --no-recursion --hard-dereference -T - -cf - 2>/dev/null")
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for member in tar:
                    if member.isfile():
                        content = tar.extractfile(member).read()
                        digest = hashlib.sha1(content).hexdigest()
                        self.contents.put(digest, content)
                        entries[member.name] = patches.Entry("f", 0o755 if member.mode & 0o111 else 0o644, digest)
        if large:
            out = await self._run(f"cd {root} && sha1sum -z -- {' '.join(shlex.quote(p) for p in large)} 2>/dev/null")
            for line in out.split(b"\0"):
                digest, _, path = line.decode(errors="surrogateescape").partition("  ")
                if path:
                    mode = int(stats[path][1], 8)
                    entries[path] = patches.Entry("f", 0o755 if mode & 0o111 else 0o644, digest)
        return entries

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
