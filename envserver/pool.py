"""Warm containers per image, started ahead of demand and refilled in the background.

A pooled env is complete except for what the request decides (ttl, labels, setup, grading):
its container runs and its bash session is attached, so acquiring it costs no Docker call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

Make = Callable[[str], Awaitable[Any]]  # image -> a started env
Discard = Callable[[Any], Awaitable[None]]


class WarmPool:
    def __init__(self, make: Make, discard: Discard, parallel: int):
        self._make, self._discard = make, discard
        self._gate = asyncio.Semaphore(parallel)  # pool filling never takes every Docker thread
        self.targets: dict[str, int] = {}
        self.ready: dict[str, deque] = {}
        self._starting: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self.failures: dict[str, str] = {}
        self.closed = False

    def want(self, image: str, size: int) -> None:
        if size > self.targets.get(image, 0):
            self.targets[image] = size
        self._refill(image)

    def take(self, image: str):
        """A warm env for `image`, or None; the pool refills behind it."""
        queue = self.ready.get(image)
        env = queue.popleft() if queue else None
        self._refill(image)
        return env

    def release(self, image: str) -> list:
        """Nothing will want `image` again: stop refilling it; its warm envs are handed back to be removed."""
        self.targets.pop(image, None)
        return list(self.ready.pop(image, ()))

    def discard_dead(self, env) -> bool:
        queue = self.ready.get(env.image)
        if queue and env in queue:
            queue.remove(env)
            self._refill(env.image)
            return True
        return False

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            image: {"ready": len(self.ready.get(image, ())), "target": target, "starting": self._starting.get(image, 0)}
            for image, target in self.targets.items()
        }

    def _refill(self, image: str) -> None:
        if self.closed:
            return
        missing = self.targets.get(image, 0) - len(self.ready.get(image, ())) - self._starting.get(image, 0)
        for _ in range(max(0, missing)):
            self._starting[image] = self._starting.get(image, 0) + 1
            task = asyncio.get_running_loop().create_task(self._start_one(image))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _start_one(self, image: str) -> None:
        env = None
        try:
            async with self._gate:
                env = await self._make(image)
        except Exception as exc:  # noted for /healthz; the next take() or want() tries again
            self.failures[image] = f"{type(exc).__name__}: {exc}"
            return
        finally:
            self._starting[image] -= 1
        if self.closed or image not in self.targets:  # closed, or released while this one started
            await self._discard(env)
            return
        self.failures.pop(image, None)
        self.ready.setdefault(image, deque()).append(env)

    async def close(self) -> list:
        """Stop filling; return every warm env so the caller removes them."""
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        envs = [env for queue in self.ready.values() for env in queue]
        self.ready.clear()
        return envs
