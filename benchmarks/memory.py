"""Memory figures for the benchmarks, read from /proc and Docker's cgroups (Linux, cgroup v1 or v2).

RSS counts a page once per process that maps it, so forked processes sharing pages copy-on-write are
over-counted by it; PSS splits each shared page between its users, so PSS adds up to what the processes
really cost together. Both are reported where processes fork (the fleet's work horses).
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def _kb(text: str, field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else 0


def rss(pid: int) -> int:
    """Resident bytes of one process (0 if it is gone)."""
    try:
        return _kb(Path(f"/proc/{pid}/status").read_text(), "VmRSS")
    except OSError:
        return 0


def pss(pid: int) -> int:
    """Proportional set size of one process (0 if it is gone)."""
    try:
        return _kb(Path(f"/proc/{pid}/smaps_rollup").read_text(), "Pss")
    except OSError:
        return 0


def children(pid: int) -> list[int]:
    """Every descendant of `pid`."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for kid in kids.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


def tree(pid: int, include_root: bool = True) -> dict[str, int]:
    """RSS and PSS summed over a process and its descendants, and how many processes that is."""
    pids = ([pid] if include_root else []) + children(pid)
    return {"rss": sum(rss(p) for p in pids), "pss": sum(pss(p) for p in pids), "processes": len(pids)}


def container_memory(container_id: str) -> int:
    """A container's memory use as its cgroup counts it, less the page cache (cgroup v1 or v2)."""
    for base in (Path("/sys/fs/cgroup/memory/docker") / container_id,
                 Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope")):
        stat = base / "memory.stat"
        if stat.exists():
            fields = dict(line.split() for line in stat.read_text().splitlines() if len(line.split()) == 2)
            if "total_rss" in fields:  # v1
                return int(fields["total_rss"]) + int(fields.get("total_mapped_file", 0))
            return int(fields.get("anon", 0)) + int(fields.get("kernel", fields.get("kernel_stack", 0)))
    return 0


def shims(container_ids: set[str]) -> dict[str, int]:
    """containerd-shim processes of these containers: {"rss": bytes, "processes": n}."""
    total = count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"containerd-shim-runc-v2") and b"-id" in cmd:
            cid = cmd[cmd.index(b"-id") + 1].decode()
            if cid in container_ids:
                total += rss(int(entry))
                count += 1
    return {"rss": total, "processes": count}


def mb(n: float) -> float:
    return round(n / 2**20, 2)
