"""Latest-frame mailbox: the newest item wins, nothing queues up, overwritten items are counted."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """One slot between a producer thread and one consumer thread.

    `put` replaces whatever is there; an item replaced before anyone took it counts as dropped.
    `get` waits for an item the consumer has not taken yet, so the same item is never handed out twice.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._fresh = False
        self._closed = False
        self.dropped = 0
        self.puts = 0

    def put(self, item: T) -> None:
        with self._cond:
            if self._fresh:
                self.dropped += 1
            self._item = item
            self._fresh = True
            self.puts += 1
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        """The newest untaken item, waiting up to `timeout` seconds; None on timeout or close."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._fresh or self._closed, timeout):
                return None
            return self._take()

    def take_new(self) -> T | None:
        """The newest untaken item without waiting, or None."""
        with self._cond:
            return self._take()

    def _take(self) -> T | None:
        if not self._fresh:
            return None
        self._fresh = False
        return self._item

    def close(self) -> None:
        """Wake every waiter; later gets return at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
