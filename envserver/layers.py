"""Forks by snapshot of a container's writable layer, on Docker's btrfs storage driver (blocking calls).

Docker's btrfs driver keeps a container's whole filesystem as one btrfs subvolume,
`<data root>/btrfs/subvolumes/<mount id>` (the mount id is in `<data root>/image/btrfs/layerdb/mounts/
<container id>/mount-id`), and mounts it when the container starts. A fork is a container created, not
started, from the source's image whose subvolume is then replaced by a snapshot of the source's: the
source's whole filesystem at that moment, copy-on-write, so it costs metadata and no data. One read-only
*origin* snapshot of the source is taken (atomic: the source keeps running); every fork is snapshotted
from the origin, which is deleted once they run. Docker applies a container's disk quota (its qgroup limit) when it mounts
the subvolume, so a fork keeps its quota.

Needs the env server on the Docker host, as root, with the `btrfs` tool: `find()` says whether it can be
used here; elsewhere forks fall back to `docker commit` (envserver/world.py). Measured against the commit
and a cold env by benchmarks/world_bench.py.

Left alone: deleting a subvolume leaves its qgroup "stale" while btrfs cleans it (Docker's own container
removal does the same); `btrfs qgroup clear-stale` removes them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ORIGINS = "forager-fork-origins"  # under <data root>/btrfs, on the same filesystem as the layers


class LayerSnapshots:
    def __init__(self, root: Path, tool: str):
        self.root, self.tool = root, tool
        self.origins = root / "btrfs" / ORIGINS

    @classmethod
    def find(cls, info: dict) -> LayerSnapshots | None:
        """Snapshots where the daemon (its `info()`) uses btrfs and its data root is this host's, writable by us."""
        tool, root = shutil.which("btrfs"), Path(info.get("DockerRootDir") or "/nonexistent")
        if info.get("Driver") != "btrfs" or not tool or os.geteuid() != 0:
            return None
        if not (root / "btrfs" / "subvolumes").is_dir() or not (root / "image" / "btrfs" / "layerdb" / "mounts").is_dir():
            return None  # a daemon on another host (or in another mount namespace)
        return cls(root, tool)

    def layer(self, container_id: str) -> Path:
        mount_id = (self.root / "image" / "btrfs" / "layerdb" / "mounts" / container_id / "mount-id").read_text().strip()
        path = self.root / "btrfs" / "subvolumes" / mount_id
        if not mount_id or "/" in mount_id or not path.is_dir():
            raise FileNotFoundError(f"no btrfs layer for container {container_id[:12]} at {path}")
        return path

    def take(self, container_id: str, name: str) -> Path:
        """A read-only snapshot of the container's layer as it is now (pause the container around this)."""
        self.origins.mkdir(exist_ok=True)
        origin = self.origins / name
        self._btrfs("subvolume", "snapshot", "-r", self.layer(container_id), origin)
        return origin

    def place(self, origin: Path, container_id: str) -> None:
        """Make a created, never started container's layer a writable snapshot of `origin`."""
        layer = self.layer(container_id)
        self._btrfs("subvolume", "delete", layer)
        self._btrfs("subvolume", "snapshot", origin, layer)

    def drop(self, origin: Path) -> None:
        if origin.exists():
            self._btrfs("subvolume", "delete", origin)

    def drop_all(self, prefix: str) -> int:
        """Delete the origins named `prefix*` (what a killed server left half-way through a fork)."""
        stale = sorted(self.origins.glob(prefix + "*")) if self.origins.is_dir() else []
        for origin in stale:
            self.drop(origin)
        return len(stale)

    def _btrfs(self, *args) -> None:
        done = subprocess.run([self.tool, *map(str, args)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise OSError(f"btrfs {' '.join(map(str, args[:2]))} failed: {(done.stderr or done.stdout).strip()[-500:]}")


def snapshot_layer(backend, container_id: str, name: str) -> Path:
    """(Bound as Backend.snapshot_layer.) An origin of the container's filesystem as it is now.

    Not paused: a btrfs snapshot is atomic and flushes the subvolume's pending writes first, so it holds
    exactly the state a pause would have frozen (a process half-way through writing two files is caught
    half-way either way), without two more Docker round trips on the fork's path."""
    return backend.layer_snapshots.take(container_id, name)
