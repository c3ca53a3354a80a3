"""Baseline hot reload: watch a baseline file, and carry running totals across baselines.

A monitor swaps baselines only between windows (`Monitor.replace_baseline`, applied when
the current window closes), so every window is judged against one baseline. The counters
it exports are running totals: `carry` moves them onto the new baseline's features so
that no counter goes down (a feature whose statistics did not change keeps everything,
one whose statistics changed keeps its plain counts but not its bins, a removed feature's
series end, an added one starts at 0).

`BaselineFile` is polled by the monitor's worker thread (a `stat` per `interval`, the
load only when the file changed, never on the event loop); a file that does not load is
refused with one log line per version of the file, and the old baseline stays.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from .baseline import Baseline, BaselineError
from .engine import Window

logger = logging.getLogger("sidecar")

# FeatureWindow fields that are plain counts, kept whatever the new statistics are.
_COUNTS = (
    "values",
    "missing",
    "absent",
    "nonfinite",
    "type_mismatch",
    "low",
    "high",
    "unseen",
    "shape_mismatch",
    "finite",
)

Signature = tuple[int, int, int]  # inode, size, mtime in ns


class BaselineFile:
    """One model's baseline file, checked for a new version at most every `interval`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        model: str,
        current: Baseline,
        *,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"the baseline poll interval must be positive, got {interval!r}")
        self.path = os.fspath(path)
        self.model = model
        self.interval = interval
        self.clock = clock
        self.hash = current.baseline_hash
        self.forced = False  # set by SIGHUP or an admin call: look now
        self._signature = self._stat()
        self._next = clock() + interval

    def _stat(self) -> Signature | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def poll(self) -> Baseline | None:
        """A new, valid baseline if the file changed since the last look (or a look was
        forced); None otherwise, also when the new file does not load (logged)."""
        now = self.clock()
        if not self.forced and now < self._next:
            return None
        self._next = now + self.interval
        forced, self.forced = self.forced, False
        signature = self._stat()
        if signature == self._signature and not forced:
            return None
        self._signature = signature
        baseline, problem = self.load()
        if baseline is None:
            logger.warning(
                "model %s: the new baseline in %s is refused, still checking against %s: %s",
                self.model,
                self.path,
                self.hash,
                problem,
            )
        return baseline

    def load(self) -> tuple[Baseline | None, str]:
        """(the file's baseline, "") if it loads and differs from the current one;
        (None, "") if it is the same; (None, why) if it does not load."""
        try:
            baseline = Baseline.load(self.path)
        except (BaselineError, OSError, ValueError) as exc:
            return None, str(exc)
        if baseline.baseline_hash == self.hash:
            return None, ""
        self.hash = baseline.baseline_hash
        return baseline, ""


def unchanged(old: Baseline, new: Baseline) -> frozenset[str]:
    """Features whose statistics are the same in both baselines (same bins, same labels)."""
    return frozenset(
        name
        for name, feature in new.features.items()
        if name in old.features and old.features[name].to_json() == feature.to_json()
    )


def carry(old: Window, new: Window, same: frozenset[str]) -> Window:
    """`new` (an empty window of the new baseline's checkers) with `old`'s running totals
    moved over, so that no exported counter goes down. Features in `same` keep their
    bins too."""
    new.rows, new.rejected_rows = old.rows, old.rejected_rows
    keys = old.keys
    for name, was in old.features.items():
        now = new.features.get(name)
        if now is None:  # removed: its occurrences stay known, not unknown, keys
            keys -= old.rows - was.absent
        elif name in same:
            now.add(was)
        else:
            for field in _COUNTS:
                setattr(now, field, getattr(was, field))
    for name, now in new.features.items():
        if name not in old.features:
            now.absent = old.rows  # added: absent from the rows before, not unknown
    new.keys = keys
    return new
