"""The worker's usual sample read straight into columns (sidecar/_records.c).

Most sampled requests are one flat JSON object holding every feature once, or a list
of them (bare, or as `{"instances": [...]}`). Parsing one
into a dict and gathering its values back out into numpy arrays was most of the
worker's CPU per sample; the compiled reader scans the bytes once and writes numbers
and category slots into the matrices `Engine.check_columns` counts. A body it does not
fully understand (another payload format, a missing, repeated or unknown key, null, a
value of another type, an escaped string, NaN, invalid JSON) it leaves to the Python
path, which parses and counts it as before, so the counts are the same either way.

There is no reader without the compiled module, with `SKEW_SIDECAR_PURE_PYTHON=1`, for
a baseline with features it does not take (timestamps, lists, number or boolean
categories, nested names), or with four features or fewer (as many keys as an envelope
has: the Python path's payload detection decides what such a body is). The Python path
then reads every body. Bodies of more than 64 records, and every other payload format,
are read in Python.

The usual response of a one-output model, `{"predictions": [x]}` with x a number, is
read the same way into the prediction column (`read_predictions`), and the check that a
body has no Content-Encoding is compiled too (`identity`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .compiled import compiled
from .engine import Engine, FloatArray, IntArray, no_pause
from .extract import is_plain_record

_Layout = compiled("_records", "Layout")
COMPILED = _Layout is not None
# read_predictions(bodies, headers, out) -> (rows, left): the usual response of a
# one-output model, `{"predictions": [x]}`, into the prediction column (None: not built).
read_predictions: Callable[[Sequence[bytes], Sequence[Any], FloatArray], tuple[int, list[int]]]
read_predictions = compiled("_records", "read_predictions")
# identity(headers) -> bool: no Content-Encoding, for headers as servers send them.
identity: Callable[[Any], bool] | None = compiled("_records", "identity")
# Read per call (about 2 ns a byte), the GIL released: between calls the worker's pacer
# may step aside for the serving thread.
CHUNK_BYTES = 16 << 10


class RecordReader:
    """Reads request bodies into `engine`'s columns."""

    def __init__(self, engine: Engine) -> None:
        if not self.takes(engine):
            raise ValueError("RecordReader: no compiled reader, or features it does not take")
        self.engine = engine
        features: list[tuple[str, dict[Any, int] | None, int]] = [
            (name, None, 0) for name in engine.numbers
        ]
        features += [(name, c.index, c.unseen_slot) for name, c in engine.categories.items()]
        self.layout = _Layout(features)
        self.shortest = sum(len(name.encode()) + 5 for name, _, _ in features) + 1

    @staticmethod
    def takes(engine: Engine) -> bool:
        """Whether the reader was built and takes every feature of `engine`, and a body
        holding exactly those is read by the Python path as that one record, not as an
        envelope of another payload format."""
        names = dict.fromkeys(engine.checkers)
        return _Layout is not None and engine.takes_columns and is_plain_record(names)

    @classmethod
    def for_engine(cls, engine: Engine) -> RecordReader | None:
        """A reader for `engine`, or None where the Python path must read every body."""
        return cls(engine) if cls.takes(engine) else None

    def read(
        self, bodies: Sequence[bytes], pause: Callable[[], None] = no_pause
    ) -> tuple[FloatArray, IntArray, list[int]]:
        """(numbers, slots, left): one row per record read, in order, and the indices of
        the bodies left for the Python path. `pause` runs before each chunk of bodies
        (read with the GIL released: the serving thread may run meanwhile)."""
        n = len(bodies)
        # No record is shorter than its keys, quotes, colons, one-character values,
        # commas and braces: so many rows at most.
        numbers, slots = self.empty(sum(map(len, bodies)) // self.shortest + 1)
        left: list[int] = []
        row = start = 0
        while start < n:
            pause()
            start, rows, skipped = self.layout.read(
                bodies, numbers[row:], slots[row:], start, CHUNK_BYTES
            )
            row += rows
            left += skipped
        return numbers[:row], slots[:row], left

    def empty(self, rows: int = 0) -> tuple[FloatArray, IntArray]:
        """Uninitialised matrices for `rows` rows."""
        numbers = np.empty((rows, len(self.engine.numbers)), dtype=np.float64)
        slots = np.empty((rows, len(self.engine.categories)), dtype=np.int64)
        return numbers, slots
