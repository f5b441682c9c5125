"""A small time-to-live cache for a value that is costly to read and rarely changes: the Ray token of a RayCluster,
which the 5 s status loop needs for every call to that cluster's dashboard (handlers.ray_auth_token). KubeRay makes
one token Secret per RayCluster and a new cluster has a new name, so a token found once stays right for the
cluster's life; the time to live only bounds how long a replaced Secret could go unnoticed.

A found value is reused until it expires; a miss (None: no Secret yet, or the read failed) is not remembered, so the
next call reads again. At most ``max_entries`` keys: expired ones go first, then the oldest.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Generic, Hashable, Optional, TypeVar

V = TypeVar("V")


class TTLCache(Generic[V]):
    def __init__(self, ttl_s: float, max_entries: int = 256, clock: Callable[[], float] = time.monotonic):
        if ttl_s <= 0 or max_entries < 1:
            raise ValueError("ttl_s must be > 0 and max_entries >= 1")
        self.ttl_s, self.max_entries, self._clock = ttl_s, max_entries, clock
        self._entries: dict[Hashable, tuple[V, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, fetch: Callable[[], Optional[V]]) -> Optional[V]:
        """The cached value of ``key`` while it is fresh, else ``fetch()`` (remembered unless it is None)."""
        now = self._clock()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[1] > now:
                return hit[0]
        value = fetch()  # outside the lock: a slow read must not hold up other keys
        with self._lock:
            self._entries.pop(key, None)  # re-inserted last when found, so insertion order stays age order
            if value is None:
                return None
            if len(self._entries) >= self.max_entries:
                for k in [k for k, (_, expires) in self._entries.items() if expires <= now]:
                    del self._entries[k]
                while len(self._entries) >= self.max_entries:
                    del self._entries[next(iter(self._entries))]  # the oldest insertion
            self._entries[key] = (value, now + self.ttl_s)
        return value

    def __len__(self) -> int:
        return len(self._entries)
