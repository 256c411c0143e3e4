"""Containers created ahead of forks, so a fork waits for no `docker create`.

A fork by layer snapshot (envserver/world.py, layers.py) needs a container that was created and never started,
whose layer is then replaced by a snapshot of the source's. Creating it is the larger part of a fork's time, and
it does not depend on the source's state: so, for an image that is forked, a few are created ahead. Each one is
an env being started (`Manager._start_env`) whose `prepare` step waits for the origin snapshot a fork hands it;
once handed one, its layer is put in place and it starts (bash session, no base commit: the source's).

Demand-driven: after a fork of K envs of an image, up to min(K, per_image) wait for the next fork of it, and
`--fork-ready N` keeps N per image from its first env on. They wait in Docker threads (each holds one of the
server's `docker_threads` while it waits), so the total is capped. Closed with the server: each waiting one is
told to give up, and its container is removed as any env that fails to start.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from dataclasses import dataclass, field

from envserver.models import Limits


class Abandoned(Exception):
    """A ready container nobody will fork into (the server is stopping)."""


@dataclass
class Ready:
    origin: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    task: asyncio.Task | None = None  # the env being started: done once a fork hands it its origin


class ForkReady:
    def __init__(self, manager, snapshots, per_image: int, total: int):
        self.manager, self.snapshots = manager, snapshots
        self.per_image, self.total = per_image, total
        self.ready: dict[tuple[str, str], deque[Ready]] = {}
        self.closed = False

    def count(self) -> int:
        return sum(len(q) for q in self.ready.values())

    def want(self, image: str, limits: Limits, n: int) -> None:
        """Keep at least min(n, per_image) ready for this image and limits (within the server's total)."""
        if self.closed or self.snapshots is None:
            return
        queue = self.ready.setdefault(_key(image, limits), deque())
        while len(queue) < min(n, self.per_image) and self.count() < self.total:
            item = Ready()
            item.task = asyncio.ensure_future(self.manager._start_env(image, limits, None, None,
                                                                      prepare=self._placer(item)))
            queue.append(item)

    def take(self, image: str, limits: Limits, n: int) -> list[Ready]:
        queue = self.ready.get(_key(image, limits)) or deque()
        taken = []
        while queue and len(taken) < n:
            item = queue.popleft()
            if item.task.done():  # failed while waiting (Docker error): not usable
                continue
            taken.append(item)
        return taken

    def _placer(self, item: Ready):
        def place(container_id: str) -> None:
            origin = item.origin.result()  # waits, in its Docker thread, for a fork to hand it an origin
            self.snapshots.place(origin, container_id)
        return place

    async def close(self) -> None:
        self.closed = True
        items = [item for queue in self.ready.values() for item in queue]
        self.ready.clear()
        for item in items:
            if not item.origin.done():
                item.origin.set_exception(Abandoned("the server is stopping"))
        await asyncio.gather(*(item.task for item in items), return_exceptions=True)


def _key(image: str, limits: Limits) -> tuple[str, str]:
    return image, limits.model_dump_json()
