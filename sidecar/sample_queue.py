"""The queue between the serving path and the worker: bounded by samples and by the
body bytes they hold, filled without blocking, woken once a batch is waiting.

The event loop puts (`put`), the worker takes (`popleft`); both hold the GIL. The
compiled `SampleQueue` (sidecar/_tap.c) keeps its counters in a struct, which the
compiled tap reaches without an attribute lookup: in Python, `Monitor.submit` and
this queue cost about 3,400 instructions a sample on the event loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .compiled import compiled

if TYPE_CHECKING:
    from .worker import Sample


class PythonSampleQueue:
    """Samples waiting for the worker, in order.

    `limit` samples or `max_bytes` body bytes at most (a sample over either is refused:
    `put` returns False and the caller counts the drop); `limit` 0 refuses all. Once
    `wake_samples` are waiting, `wake()` is called, then not again until the worker
    sets `woken` back to False."""

    def __init__(
        self, limit: int, max_bytes: int, wake_samples: int, wake: Callable[[], object]
    ) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.wake_samples = wake_samples
        self.wake = wake
        self.woken = False
        self.sampled = 0  # samples ever queued
        self._items: deque[Sample] = deque()
        # Their sizes beside them: (sample, size) pairs would be tracked by the cyclic GC.
        self._sizes: deque[int] = deque()
        # Body bytes: added by the loop, removed by the worker, one writer each (two
        # threads' `+=` on one attribute could lose an update).
        self._bytes_in = 0
        self._bytes_out = 0

    @property
    def bytes(self) -> int:
        """Body bytes the queued samples hold."""
        return self._bytes_in - self._bytes_out

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Sample]:
        return iter(list(self._items))

    def put(self, sample: Sample, size: int) -> bool:
        """Queue `sample` (of `size` body bytes) unless the queue is full."""
        if size < 0:
            raise ValueError("put(): a sample's size cannot be negative")
        if len(self._items) >= self.limit or self.bytes + size > self.max_bytes:
            return False
        # Queued samples wait up to a second. The cyclic GC stops tracking a tuple of
        # bytes at its first collection, but a list (the server's header lists) is
        # promoted with the sample to the older generations, whose collections take
        # milliseconds on the serving thread and come sooner the more they are given.
        sample.headers = tuple(sample.headers)
        sample.response_headers = tuple(sample.response_headers)
        self._bytes_in += size
        self._sizes.append(size)  # first: the worker pops a size for every sample it sees
        self._items.append(sample)
        self.sampled += 1
        # Wake the worker only for a full batch: waking it per sample costs a thread
        # switch per request and leaves numpy with batches of one row.
        if len(self._items) >= self.wake_samples and not self.woken:
            self.woken = True
            self.wake()
        return True

    def popleft(self) -> Sample:
        """The oldest sample; its bytes leave the bound. IndexError when empty."""
        sample = self._items.popleft()
        self._bytes_out += self._sizes.popleft()
        return sample

    def clear(self) -> None:
        while self._items:
            self.popleft()


SampleQueue: Any = compiled("_tap", "SampleQueue") or PythonSampleQueue
