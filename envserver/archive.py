"""Files in and out of containers through the Engine API's archive calls (tar streams): no exec, so nothing
an agent changed inside the container (its shell, its binaries) is in the path, and large trees stream."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import docker.errors

from envserver.errors import DockerUnavailable, EnvGone


@dataclass
class FileStat:
    name: str
    size: int
    mode: int  # Go os.FileMode bits
    link_target: str

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & (1 << 31))

    @property
    def is_symlink(self) -> bool:
        return bool(self.mode & (1 << 27))


def _gone_or_missing(backend, container_id: str, path: str) -> Exception:
    if not backend.state(container_id):
        return EnvGone(f"container {container_id[:12]} is gone")
    return FileNotFoundError(path)


def stat(backend, container_id: str, path: str) -> FileStat | None:
    api = backend.api
    res = api.head(api._url("/containers/{0}/archive", container_id), params={"path": path})
    if res.status_code == 404:
        if not backend.state(container_id):
            raise EnvGone(f"container {container_id[:12]} is gone")
        return None
    api._raise_for_status(res)
    raw = json.loads(base64.b64decode(res.headers["X-Docker-Container-Path-Stat"]))
    return FileStat(raw.get("name", ""), raw.get("size", 0), raw.get("mode", 0), raw.get("linkTarget", ""))


def read_file(backend, container_id: str, path: str) -> tuple[bytes, tarfile.TarInfo]:
    try:
        stream, _stat = backend.api.get_archive(container_id, path)
    except docker.errors.NotFound:
        raise _gone_or_missing(backend, container_id, path) from None
    tar = tarfile.open(fileobj=io.BytesIO(b"".join(stream)))
    member = tar.next()
    data = tar.extractfile(member).read() if member is not None and member.isfile() else b""
    return data, member


def iter_tree(backend, container_id: str, path: str) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Names are relative to `path`'s parent, as Docker writes them (`repo/x.py` for /repo). Closing the
    generator stops the transfer."""
    try:
        stream, _stat = backend.api.get_archive(container_id, path, chunk_size=1 << 20)
    except docker.errors.NotFound:
        raise _gone_or_missing(backend, container_id, path) from None
    reader = _ChunkReader(stream)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                yield member, tar
    finally:
        reader.close()


def put_tar(backend, container_id: str, directory: str, data: bytes) -> None:
    api = backend.api
    try:
        ok = api.put_archive(container_id, directory, data)
    except docker.errors.NotFound:
        if not backend.state(container_id):
            raise EnvGone(f"container {container_id[:12]} is gone") from None
        mkdir = api.exec_create(container_id, ["mkdir", "-p", directory], user="root")["Id"]
        api.exec_start(mkdir)
        ok = api.put_archive(container_id, directory, data)
    if not ok:
        raise DockerUnavailable(f"Docker could not write into {directory}")


def file_tar(path: str, data: bytes, template: tarfile.TarInfo | None = None, mtime: float | None = None) -> bytes:
    info = tarfile.TarInfo(path.rpartition("/")[2])
    if template is not None:
        info.mode, info.uid, info.gid, info.uname, info.gname = (
            template.mode, template.uid, template.gid, template.uname, template.gname,
        )
    else:
        info.mode = 0o644
    info.size, info.mtime = len(data), time.time() if mtime is None else mtime
    return tar_bytes([(info, data)])


def files_tar(files: dict[str, bytes], mode: int = 0o644) -> bytes:
    """A tar of files at relative paths, with entries for the subdirectories they name."""
    now = time.time()
    entries, made = [], set()
    for rel, data in files.items():
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in made:
                dinfo = tarfile.TarInfo(d)
                dinfo.type, dinfo.mode, dinfo.mtime = tarfile.DIRTYPE, 0o755, now
                entries.append((dinfo, None))
                made.add(d)
        info = tarfile.TarInfo(rel)
        info.size, info.mode, info.mtime = len(data), mode, now
        entries.append((info, data))
    return tar_bytes(entries)


def tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


class _ChunkReader(io.RawIOBase):
    """A file-like view of Docker's chunk generator, for tarfile's streaming mode."""

    def __init__(self, chunks):
        self._chunks, self._buf = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n], self._buf = self._buf[:n], self._buf[n:]
        return n

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close:
            close()
        super().close()
