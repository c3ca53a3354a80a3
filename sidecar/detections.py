"""Which injected bugs the monitor named, and how long after each was injected.

The live demo (sidecar/livedemo.py) injects bugs one after another and hands every
closed window's reports to a `Tracker`; the tracker says what is new (a bug named,
or a diagnosis nobody injected) and keeps what the summary table shows. No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .demo import Bug
from .report import WindowReport

__all__ = ["Event", "Injected", "Tracker", "format_event", "format_summary"]


@dataclass
class Injected:
    """A bug in the stream since `at` (unix time of its first request)."""

    bug: Bug
    at: float
    named_at: float | None = None  # end of the first window that named it
    explanation: str = ""
    # Other kinds diagnosed on the bug's feature since it was injected.
    other_kinds: set[str] = field(default_factory=set)

    @property
    def seconds(self) -> float | None:
        return None if self.named_at is None else self.named_at - self.at


@dataclass(frozen=True)
class Event:
    """A diagnosis seen for the first time: the naming of an injected bug, or not."""

    feature: str
    kind: str
    explanation: str
    role: str
    injected: Injected | None  # None: a diagnosis nobody injected


class Tracker:
    def __init__(self) -> None:
        self.injected: list[Injected] = []
        self.unexpected: dict[tuple[str, str], str] = {}  # (feature, kind) -> role

    def inject(self, bug: Bug, at: float) -> Injected:
        entry = Injected(bug, at)
        self.injected.append(entry)
        return entry

    def observe(self, reports: Sequence[WindowReport], window_end: float) -> list[Event]:
        """One closed window's reports (requests, then responses), closed at
        `window_end` (unix time). A bug counts as named by a window that closed after
        it was injected and gave its feature the bug's kind among its diagnoses."""
        events = []
        bugs = {entry.bug.feature: entry for entry in self.injected}
        for report in reports:
            for feature in report.features.values():
                entry = bugs.get(feature.name)
                if entry is not None and window_end < entry.at:
                    entry = None  # the window closed before the bug arrived
                for diagnosis in feature.diagnosis:
                    key = (feature.name, diagnosis.kind)
                    if entry is not None and diagnosis.kind == entry.bug.kind:
                        if entry.named_at is None:
                            entry.named_at = window_end
                            entry.explanation = diagnosis.explanation
                            events.append(Event(*key, diagnosis.explanation, feature.role, entry))
                    elif entry is not None:
                        entry.other_kinds.add(diagnosis.kind)
                    elif key not in self.unexpected:
                        self.unexpected[key] = feature.role
                        events.append(Event(*key, diagnosis.explanation, feature.role, None))
        return events

    @property
    def missed(self) -> list[Injected]:
        return [entry for entry in self.injected if entry.named_at is None]


def format_event(event: Event, elapsed: float) -> list[str]:
    """Lines of the live feed for one event, `elapsed` seconds into the replay."""
    what = f"{event.feature}: {event.kind}"
    if event.injected is not None:
        head = f"NAMED  {what}, {event.injected.seconds:.1f} s after injection"
    else:
        head = f"also   {what} ({_not_injected(event.role)})"
    return [f"{elapsed:6.1f} s  {head}", f"{'':16}{event.explanation}"]


def _not_injected(role: str) -> str:
    if role == "prediction":
        return "the model's output, moved by the bugs in its inputs"
    return "no bug injected here: a false alarm"


def format_summary(tracker: Tracker, bugs: Sequence[Bug]) -> list[str]:
    """The table: every bug of the demo, injected or not, named or not."""
    entries = {entry.bug: entry for entry in tracker.injected}
    table = [("injected bug", "feature", "diagnosis", "named after")]
    for bug in bugs:
        entry = entries.get(bug)
        if entry is None:
            result = "not injected"
        elif entry.seconds is not None:
            result = f"{entry.seconds:.1f} s"
        else:
            seen = ", ".join(sorted(entry.other_kinds)) or "nothing"
            result = f"NOT NAMED (diagnosed: {seen})"
        table.append((bug.title, bug.feature, bug.kind, result))
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3]])
        for row in table
    ]
    for (feature, kind), role in sorted(tracker.unexpected.items()):
        lines.append(f"also diagnosed: {feature}: {kind} ({_not_injected(role)})")
    lines.append(_verdict(tracker, len(bugs)))
    return lines


def _verdict(tracker: Tracker, bugs: int) -> str:
    injected = len(tracker.injected)
    if not injected:
        return "no bug was injected"
    if tracker.missed:
        return f"{len(tracker.missed)} of {injected} injected bugs not named: " + ", ".join(
            e.bug.title for e in tracker.missed
        )
    named = [e.seconds for e in tracker.injected if e.seconds is not None]
    span = f"{min(named):.1f}" if len(named) == 1 else f"{min(named):.1f}-{max(named):.1f}"
    timing = f"{span} s after injection (mean {sum(named) / len(named):.1f} s)"
    if injected < bugs:
        return f"{injected} of {bugs} bugs injected before the end, all named, {timing}"
    return f"all {injected} injected bugs named, {timing}"
