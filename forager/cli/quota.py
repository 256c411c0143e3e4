"""A Docker data root on a btrfs file system, so every env can get a disk quota.

Docker limits a container's disk (`--storage-opt size=`) only with some storage drivers: overlay2 on XFS
mounted with project quotas, btrfs (qgroups), zfs. This machine's disk is ext4 and its kernel has no XFS
quota support (CONFIG_XFS_QUOTA is off) but has btrfs, which Docker's btrfs driver limits per container.
So when `forager setup` starts the Docker engine itself, it gives it a data root on a btrfs file system in
a sparse file, loop-mounted: an env that writes past its quota (`fallocate -l 500G /big`) fails inside the
env with "Disk quota exceeded", and the host's free space is never at stake beyond the file's size. A
Docker engine that was already running (systemd, or started by someone else) is left as it is; `forager
setup --check` and the env server's /healthz say whether quotas work there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from forager.errors import SetupError

DATA_ROOT = Path("/var/lib/forager/docker")
DISK_FILE = Path("/var/lib/forager/docker.btrfs")
MIN_GB, MAX_GB = 20, 2048
STORAGE_DRIVER = "btrfs"


def mounted(path: Path = DATA_ROOT) -> bool:
    """Whether `path` is a mounted btrfs file system."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(len(p := line.split()) >= 3 and p[1] == str(path) and p[2] == "btrfs" for line in mounts)


def default_size_gb(where: Path) -> int:
    """85% of the free space where the file lives (it is sparse: it takes only what Docker writes)."""
    free = shutil.disk_usage(where).free / 2**30
    return int(max(MIN_GB, min(MAX_GB, free * 0.85)))


def btrfs_data_root(install: Callable[[list[str]], None], log: Callable[[str], None]) -> Path:
    """The mounted btrfs data root, made and mounted first when needed; SetupError says why it cannot be."""
    if mounted():
        return DATA_ROOT
    if "btrfs" not in Path("/proc/filesystems").read_text():
        raise SetupError("this kernel has no btrfs")
    DISK_FILE.parent.mkdir(parents=True, exist_ok=True)
    if not DISK_FILE.exists():
        if not shutil.which("mkfs.btrfs"):
            install(["btrfs-progs"])
        size = int(os.environ.get("FORAGER_DOCKER_DISK_GB") or default_size_gb(DISK_FILE.parent))
        log(f"making a btrfs file system for Docker's data ({size} GB, sparse) in {DISK_FILE}")
        partial = DISK_FILE.with_suffix(".partial")
        with open(partial, "wb") as fh:
            fh.truncate(size * 2**30)
        _run(["mkfs.btrfs", "-q", str(partial)], "mkfs.btrfs")
        partial.rename(DISK_FILE)
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    log(f"mounting {DISK_FILE} on {DATA_ROOT}")
    _run(["mount", "-o", "loop", str(DISK_FILE), str(DATA_ROOT)], "mount")
    if not mounted():
        raise SetupError(f"{DATA_ROOT} did not mount as btrfs")
    return DATA_ROOT


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SetupError(f"{what} failed: {(proc.stderr or proc.stdout).strip()[-1000:]}")


def accounting(root: Path) -> str | None:
    """Whether btrfs counts every write against its quotas on `root`: 'exact', 'inconsistent', or None (no quotas).

    The kernel marks every qgroup inconsistent when it drops a subvolume tree deeper than its
    `drop_subtree_threshold` (3 by default) instead of accounting the drop, and Docker drops a container's
    subvolume for every env removed, so accounting goes inconsistent within minutes. Then a limit still
    refuses a reservation past it (`fallocate -l 500G` fails) but buffered writes are not counted (measured:
    `dd` wrote 1 GB in an env with a 256 MB quota). Exact accounting of every drop (threshold 8) stalled
    Docker here (dockerd blocked in btrfs for minutes while containers were removed), and a rescan takes
    minutes and holds only until the next deep drop; btrfs simple quotas (kernel >= 6.7), which never go
    inconsistent, are the way to close this (docs/security.md: not done yet)."""
    uuid = _fs_uuid(root)
    qgroups = Path(f"/sys/fs/btrfs/{uuid}/qgroups") if uuid else None
    if qgroups is None or not qgroups.is_dir():
        return None
    return "exact" if (qgroups / "inconsistent").read_text().strip() == "0" else "inconsistent"


def _fs_uuid(root: Path) -> str | None:
    proc = subprocess.run(["btrfs", "filesystem", "show", str(root)], capture_output=True, text=True)
    for word in proc.stdout.split():
        if len(word) == 36 and word.count("-") == 4:
            return word
    return None
