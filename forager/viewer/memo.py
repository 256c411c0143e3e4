"""Aggregates kept until the index changes: they can only change when a refresh writes.

The overview, the collections and the filter menus scan the whole trajectories table (a few hundred
ms at 100k rows). Keyed by the index's generation, each is computed once per change of the store, and
the refresher computes the common ones right after it writes, so a visitor does not wait for them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from forager.viewer.index import StoreIndex

MAX_ENTRIES = 512  # filter combinations pile up; past this the memo starts over


class Memo:
    def __init__(self, index: StoreIndex):
        self.index = index
        self._generation = -1
        self._values: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        generation = self.index.generation
        with self._lock:
            if generation != self._generation:
                self._values.clear()
                self._generation = generation
            if key in self._values:
                return self._values[key]
        value = compute()  # outside the lock: two threads may compute the same key once, never block each other
        with self._lock:
            if self._generation == generation:  # not when the index moved on while computing
                if len(self._values) >= MAX_ENTRIES:
                    self._values.clear()
                self._values[key] = value
        return value
