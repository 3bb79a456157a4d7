"""A least-recently-used cache bounded twice: by its entries and by their total weight (what
an entry holds: a session's history messages, a response's transcript items). A count of
entries alone let a few long entries hold memory without bound."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    def __init__(self, max_entries: int, max_weight: int):
        self.max_entries = max_entries
        self.max_weight = max_weight
        self.weight = 0
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The entry, now the most recently used, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def weight_of(self, key: K) -> int | None:
        """The entry's weight (not a use of it), or None if it is not kept."""
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: K, value: V, weight: int) -> None:
        self.pop(key)
        self._entries[key] = (value, weight)
        self.weight += weight
        self._trim()

    def grew(self, key: K, by: int) -> None:
        """The entry (if still kept) holds `by` more than when it was put."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries[key] = (entry[0], entry[1] + by)
            self.weight += by
            self._trim()

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self.weight -= entry[1]
        return entry[0]

    def _trim(self) -> None:
        while len(self._entries) > self.max_entries or (self.weight > self.max_weight and self._entries):
            _, (_, weight) = self._entries.popitem(last=False)
            self.weight -= weight
