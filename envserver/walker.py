"""The state probe: a small Python process in the env that walks the workdir in-process, so a step's stat walk
costs one round trip on an open socket and no fork (a `find` per step was measured at 40-60 ms on a loaded
host, almost all of it process creation; an in-process walk of a few thousand files takes a few ms).

It is started through the exec attach socket (a root bash with a fixed PATH that `exec`s the image's own
`python3 -I -S`: isolated, no site, so nothing in the repository is imported) and speaks one JSON line each
way. `walk` returns the files whose (mode, size, inode, mtime, ctime, link target) changed since its last
walk, and the deleted ones (everything on its first walk); `read` returns digests, and the content of files
up to `keep` bytes. An image without python3 gets no walker: the tracker falls back to `find` (state.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shlex

WALKER = r'''
import base64, hashlib, json, os, stat, sys
root, prune, top_prune, max_files = sys.argv[1], set(json.loads(sys.argv[2])), set(json.loads(sys.argv[3])), int(sys.argv[4])
last = None

def walk():
    out, stack = {}, [""]
    while stack:
        rel = stack.pop()
        try:
            it = os.scandir(os.path.join(root, rel) if rel else root)
        except OSError:
            continue
        with it:
            for e in it:
                p = rel + "/" + e.name if rel else e.name
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if not (e.name in prune or e.name.endswith(".egg-info") or p in top_prune):
                        stack.append(p)
                    continue
                link = stat.S_ISLNK(st.st_mode)
                if not (link or stat.S_ISREG(st.st_mode)):
                    continue
                out[p] = ["l" if link else "f", st.st_mode & 0o7777, st.st_size, st.st_ino, st.st_mtime_ns,
                          st.st_ctime_ns, os.readlink(e.path) if link else ""]
                if len(out) > max_files:
                    return None
    return out

def read(paths, keep, limit):
    files = {}
    for p in paths:
        full = os.path.join(root, p)
        try:
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                continue
            h, kept = hashlib.sha1(), []
            with open(full, "rb") as f:
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    h.update(chunk)
                    if st.st_size <= keep:
                        kept.append(chunk)
        except OSError:
            continue
        files[p] = [st.st_mode & 0o7777, h.hexdigest(),
                    base64.b64encode(b"".join(kept)).decode() if st.st_size <= keep else None]
    return files

sys.stdout.write("READY\n")
sys.stdout.flush()
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "walk":
        now = walk()
        if now is None:
            resp = {"too_large": True}
        elif last is None:
            resp = {"full": True, "entries": now, "deleted": []}
        else:
            resp = {"full": False, "entries": {p: s for p, s in now.items() if last.get(p) != s},
                    "deleted": [p for p in last if p not in now]}
        last = now
    else:
        resp = {"files": read(req["paths"], req["keep"], req["limit"])}
    sys.stdout.write(json.dumps(resp) + "\n")
    sys.stdout.flush()
'''


class NoWalker(Exception):
    """This env cannot run the walker (no python3, or it died): use `find`."""


class Walker:
    def __init__(self, backend, container_id: str, root: str, env: list[str]):
        self.backend, self.container_id, self.root, self.env = backend, container_id, root, env
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buf = bytearray()

    async def start(self, prune: list[str], top_prune: list[str], max_files: int, timeout: float) -> None:
        _exec_id, sock = await asyncio.to_thread(self.backend.attach_bash, self.container_id, "root", self.env)
        self._reader, self._writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        args = " ".join(shlex.quote(a) for a in (WALKER, self.root, json.dumps(prune), json.dumps(top_prune),
                                                   str(max_files)))
        self._writer.write(f"shopt -s execfail; exec python3 -I -S -u -c {args} 2>/dev/null; "
                           "builtin echo __FORAGER_NO_WALKER__\n".encode())
        line = await asyncio.wait_for(self._line(), timeout)
        if line != b"READY":
            await self.close()
            raise NoWalker(line.decode(errors="replace")[:200])

    async def call(self, request: dict, timeout: float) -> dict:
        if self._writer is None:
            raise NoWalker("not started")
        self._writer.write(json.dumps(request).encode() + b"\n")
        try:
            line = await asyncio.wait_for(self._line(), timeout)
        except BaseException:
            await self.close()  # a late answer must never be taken for the next request's
            raise
        return json.loads(line)

    async def _line(self) -> bytes:
        """The next line of the process's stdout (Docker's stream frames: 8-byte header, then the payload)."""
        try:
            while (end := self._buf.find(b"\n")) < 0:
                header = await self._reader.readexactly(8)
                data = await self._reader.readexactly(int.from_bytes(header[4:8], "big"))
                if header[0] == 1:  # stdout only
                    self._buf += data
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            await self.close()
            raise NoWalker(f"the walker's stream ended: {exc}") from exc
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def decode(b64: str | None) -> bytes | None:
    return base64.b64decode(b64) if b64 is not None else None
