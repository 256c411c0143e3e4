"""How the state tracker (state.py) sees an env's workdir: a stat walk, and digests of the files it changed.

`PythonProbe` (the default) talks to the walker of walker.py: one round trip per step, no process started.
`FindProbe` is the fallback for an image where python3 cannot run: `find -printf` and `tar` through a root
bash session, one process per step. Both return the same things: `walk()` → {path: stat signature} of every
file (the signature's form is the probe's own; the tracker only compares them), and `digests(paths)` →
({path: Entry}, {digest: content} for files small enough to keep for diffs).
"""

from __future__ import annotations

import hashlib
import io
import shlex
import tarfile

from envserver import patch as patches
from envserver.session import BashSession
from envserver.walker import NoWalker, Walker, decode

PROBE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"]
PROBE_TIMEOUT = 60
READ_LIMIT = 8 << 20  # files over this are hashed, never read into the server or diffed
KEPT_LIMIT = 1 << 20  # file versions up to this size are kept (by digest) to diff the next change against
MAX_FILES = 50_000  # a tree past this is not walked every step: its steps record no state


class TreeTooLarge(Exception):
    """The workdir holds more than MAX_FILES files, or is / (no repository to watch)."""


class ProbeDied(Exception):
    """The probe's process ended (the agent can kill it): a new one is started for the next step."""


def _entry(mode: int, digest: str) -> patches.Entry:
    return patches.Entry("f", 0o755 if mode & 0o111 else 0o644, digest)


def _link(target: str) -> patches.Entry:
    return patches.Entry("l", 0o777, hashlib.sha1(target.encode(errors="surrogateescape")).hexdigest())


async def start(backend, container_id: str, workdir: str, contents, fallback: bool):
    if workdir.rstrip("/") == "":
        raise TreeTooLarge("the workdir is /: there is no repository to watch")
    if not fallback:
        walker = Walker(backend, container_id, workdir, PROBE_ENV)
        try:
            await walker.start(sorted(patches.CACHE_DIRS), [".git"], MAX_FILES, PROBE_TIMEOUT)
            return PythonProbe(walker)
        except NoWalker:
            pass
    probe = FindProbe(BashSession(backend, container_id, "/", "root", env=PROBE_ENV), workdir)
    await probe.session.start()
    return probe


class PythonProbe:
    def __init__(self, walker: Walker):
        self.walker = walker
        self.listing: dict[str, tuple] = {}

    async def walk(self) -> dict[str, tuple]:
        try:
            resp = await self.walker.call({"op": "walk"}, PROBE_TIMEOUT)
        except NoWalker as exc:
            raise ProbeDied(str(exc)) from exc
        if resp.get("too_large"):
            raise TreeTooLarge(f"the workdir holds over {MAX_FILES} files")
        if resp["full"]:
            self.listing = {}
        for path in resp["deleted"]:
            self.listing.pop(path, None)
        self.listing.update((p, tuple(sig)) for p, sig in resp["entries"].items() if not patches.is_cache(p))
        return dict(self.listing)

    async def digests(self, paths: list[str], stats: dict[str, tuple]):
        entries = {p: _link(stats[p][6]) for p in paths if stats[p][0] == "l"}
        files = [p for p in paths if stats[p][0] != "l"]
        kept = {}
        if files:
            try:
                resp = await self.walker.call({"op": "read", "paths": files, "keep": KEPT_LIMIT, "limit": READ_LIMIT},
                                              PROBE_TIMEOUT)
            except NoWalker as exc:
                raise ProbeDied(str(exc)) from exc
            for path, (mode, digest, b64) in resp["files"].items():
                entries[path] = _entry(mode, digest)
                if b64 is not None:
                    kept[digest] = decode(b64)
        return entries, kept

    async def close(self) -> None:
        await self.walker.close()


class FindProbe:
    def __init__(self, session: BashSession, workdir: str):
        self.session, self.workdir = session, workdir

    async def _run(self, command: str) -> bytes:
        result = await self.session.run(command, PROBE_TIMEOUT)
        if result.timed_out or result.session_ended:
            raise ProbeDied("the find probe did not finish")
        return result.output

    async def walk(self) -> dict[str, tuple]:
        prune = " -o ".join(["-path " + shlex.quote(self.workdir.rstrip("/") + "/.git")]
                            + [f"-name {shlex.quote(d)}" for d in sorted(patches.CACHE_DIRS)] + ["-name '*.egg-info'"])
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

    async def digests(self, paths: list[str], stats: dict[str, tuple]):
        entries = {p: _link(stats[p][6]) for p in paths if stats[p][0] == "l"}
        kept = {}
        small = [p for p in paths if stats[p][0] != "l" and int(stats[p][2]) <= READ_LIMIT]
        large = [p for p in paths if stats[p][0] != "l" and int(stats[p][2]) > READ_LIMIT]
        root = shlex.quote(self.workdir)
        if small:
            names = " ".join(shlex.quote(p) for p in small)
            data = await self._run(f"cd {root} && printf '%s\\0' {names} | "
                                   "tar --null --no-recursion --hard-dereference -T - -cf - 2>/dev/null")
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for member in tar:
                    if member.isfile():
                        content = tar.extractfile(member).read()
                        entries[member.name] = _entry(member.mode, hashlib.sha1(content).hexdigest())
                        if len(content) <= KEPT_LIMIT:
                            kept[entries[member.name].digest] = content
        if large:
            out = await self._run(f"cd {root} && sha1sum -z -- {' '.join(shlex.quote(p) for p in large)} 2>/dev/null")
            for line in out.split(b"\0"):
                digest, _, path = line.decode(errors="surrogateescape").partition("  ")
                if path:
                    entries[path] = _entry(int(stats[path][1], 8), digest)
        return entries, kept

    async def close(self) -> None:
        await self.session.close()
