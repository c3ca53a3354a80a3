"""/metrics in multiprocess mode, fast: the worker processes' files added up and written
in the text format, byte for byte what `generate_latest` writes for prometheus_client's
`MultiProcessCollector` over the same directory.

prometheus_client reads every value file at every scrape: per entry a key decoded and
parsed from JSON, a Sample built, sums in nested dicts, then each sample formatted. A
32-feature model has about 1,300 series per worker, each in every worker's files. Most
of that work comes out the same at every scrape; only the values change. So:

- each file is read whole, as prometheus_client reads it, and its *layout* (the parsed
  key of each entry and where its value and timestamp are) is kept while the file's
  bytes other than values are unchanged: one numpy comparison. Writers only ever append
  entries; a file removed and made again under the same name (a reused pid) changes
  bytes or length, and is parsed again.
- the *plan* (which output line adds up which entries, in prometheus_client's order) is
  kept while every file keeps its layout, and otherwise built again by the steps of
  `MultiProcessCollector._accumulate_metrics`, on entry positions instead of values.
- values are gathered by numpy, one fancy index per file, and sums made with
  `np.bincount` over the entries in file order: the additions prometheus_client's `+=`
  makes, in the same order, so the same floats. Lines are cached per series and value.

What this does not reproduce exactly (names that need escaping, OpenMetrics-only
samples, metric types other than the four multiprocess ones) raises `Unsupported`; the
caller then renders with prometheus_client.
"""

from __future__ import annotations

import glob
import json
import math
import mmap
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .metrics import _escape, _go_float, _number

Labels = tuple[tuple[str, str], ...]
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = ("counter", "gauge", "histogram", "summary")
# Gauge modes whose samples are combined over processes (the pid label dropped).
_COMBINED = {"min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent", "livemostrecent"}
_OPENMETRICS_ONLY = ("_created", "_gsum", "_gcount")
_unpack_int = struct.Struct("i").unpack_from
# Cached lines beyond twice the last exposition's, plus this, are stale (as TextWriter).
_CACHE_SLACK = 1_000


class Unsupported(Exception):
    """The directory holds something only prometheus_client renders exactly."""


@dataclass(frozen=True)
class _Entry:
    metric: str
    name: str
    labels: Labels  # sorted by name, as prometheus_client keys them
    help: str


class _Layout:
    """One file's entries and where their values are, valid while its other bytes stay."""

    def __init__(self, path: str, data: bytes, used: int, keys: dict[str, _Entry]) -> None:
        self.typ, self.mode, self.pid = _file_kind(path)
        self.used = used
        self.entries: list[_Entry] = []
        value_words: list[int] = []
        pos = 8
        while pos < used:  # mmap_dict._read_all_values, keys parsed once
            (length,) = _unpack_int(data, pos)
            if length + pos > used:
                raise RuntimeError("Read beyond file size detected, file is corrupted.")
            pos += 4
            key = data[pos : pos + length].decode("utf-8")
            pos += length + (8 - (length + 4) % 8)
            if pos + 16 > used:
                raise Unsupported(f"{path}: an entry runs past the used size")
            entry = keys.get(key)
            if entry is None:
                entry = keys[key] = _parse_key(key)
            self.entries.append(entry)
            value_words.append(pos // 8)
            pos += 16
        self.values = np.array(value_words, dtype=np.intp)
        self.stamps = self.values + 1
        fixed = np.ones(used // 8, dtype=bool)
        fixed[self.values] = False
        fixed[self.stamps] = False
        self.fixed = np.flatnonzero(fixed)
        self.skeleton = _words(data, used)[self.fixed].copy()

    def matches(self, data: bytes, used: int) -> bool:
        return used == self.used and bool(
            np.array_equal(_words(data, used)[self.fixed], self.skeleton)
        )


def _words(data: bytes, used: int) -> npt.NDArray[np.uint64]:
    return np.frombuffer(data, dtype=np.uint64, count=used // 8)


def _file_kind(path: str) -> tuple[str, str, str]:
    """Type, gauge mode and pid from a name like gauge_livesum_1234.db."""
    parts = os.path.basename(path).split("_")
    if parts[0] != "gauge":
        return parts[0], "", ""
    if len(parts) < 3:
        raise Unsupported(f"{path}: a gauge file without a mode and a pid")
    return "gauge", parts[1], parts[2][:-3]


def _parse_key(key: str) -> _Entry:
    metric, name, labels, help_text = json.loads(key)
    if not all(isinstance(v, str) for v in labels.values()):
        raise Unsupported(f"label values that are not strings in {key}")
    return _Entry(metric, name, tuple(sorted(labels.items())), help_text)


def _read(path: str) -> tuple[bytes, int]:
    """The file's bytes up to its used size (MmapedDict.read_all_values_from_file)."""
    with open(path, "rb") as infp:
        data = infp.read(mmap.PAGESIZE)
        (used,) = _unpack_int(data, 0)
        if used > len(data):
            data += infp.read(used - len(data))
    if not 0 <= used <= len(data) or used % 8:
        raise Unsupported(f"{path}: used size {used} of {len(data)} bytes")
    return data, used


# -- the plan: prometheus_client's accumulation, on entry positions ------------------------


@dataclass
class _Extreme:
    """min/max gauges: the first value, replaced by each strictly lower/higher one."""

    higher: bool
    entries: list[int] = field(default_factory=list)


@dataclass
class _Last:
    """Gauges kept per process ('all', 'liveall'): the last value written."""

    entry: int


@dataclass
class _Cumulative:
    """Bucket `index` of a histogram (its _count: the last), summing `slots` in order."""

    slots: list[int]
    index: int


_Source = int | _Extreme | _Last | _Cumulative  # int: a sum slot
_Group = dict[tuple[str, Labels], _Source]


@dataclass
class _Metric:
    name: str
    help: str
    typ: str
    mode: str = ""
    samples: list[tuple[str, Labels, int]] = field(default_factory=list)  # name, labels, entry


@dataclass
class _Family:
    header: str
    lines: list[tuple[str, _Source]]  # prefix, value source, in output order
    # mostrecent gauges instead: prefix, slot, group of each series
    recent: list[tuple[str, int, int]] | None = None


class _Plan:
    def __init__(self, layouts: list[_Layout]) -> None:
        self._sum_entries: list[int] = []  # entries added up, each into its slot
        self._sum_slots: list[int] = []
        self.n_sums = 0
        self._recent_entries: list[int] = []  # mostrecent gauges: entry, slot
        self._recent_slots: list[int] = []
        self.n_recent = 0
        self.families = [self._family(m) for m in _read_metrics(layouts).values()]
        self.sums = _indices(self._sum_entries), _indices(self._sum_slots)
        self.recent = _indices(self._recent_entries), _indices(self._recent_slots)

    def _add(self, group: _Group, key: tuple[str, Labels], entry: int) -> None:
        slot = group.get(key)
        if slot is None:
            slot = group[key] = self._new_sum()
        assert isinstance(slot, int)
        self._add_to(slot, entry)

    def _add_to(self, slot: int, entry: int) -> None:
        self._sum_entries.append(entry)
        self._sum_slots.append(slot)

    def _new_sum(self) -> int:
        self.n_sums += 1
        return self.n_sums - 1

    def _family(self, metric: _Metric) -> _Family:
        """MultiProcessCollector._accumulate_metrics for one metric."""
        typ, mode = metric.typ, metric.mode
        if typ == "gauge" and mode in ("mostrecent", "livemostrecent"):
            return self._recent(metric)
        groups: dict[Labels, _Group] = {}
        buckets: dict[Labels, dict[float, int]] = {}  # sum slots by float(le)
        for name, labels, entry in metric.samples:
            if typ == "gauge" and mode in _COMBINED:
                labels = tuple(label for label in labels if label[0] != "pid")
            if typ == "histogram":
                le = next((value for label, value in labels if label == "le"), None)
                if le is not None:
                    without = tuple(label for label in labels if label[0] != "le")
                    bounds = buckets.setdefault(without, {})
                    bound = float(le)
                    if bound not in bounds:
                        bounds[bound] = self._new_sum()
                    self._add_to(bounds[bound], entry)
                    continue
            group = groups.setdefault(labels, {})
            key = (name, labels)
            if typ == "gauge" and mode in ("min", "livemin", "max", "livemax"):
                extreme = group.setdefault(key, _Extreme(mode.endswith("max")))
                assert isinstance(extreme, _Extreme)
                extreme.entries.append(entry)
            elif typ == "gauge" and mode not in _COMBINED:
                group[key] = _Last(entry)  # a key that exists keeps its place
            else:  # counters, summaries, summed gauges, histogram sums
                self._add(group, key, entry)
        for without, slots in buckets.items():
            self._accumulate_buckets(metric.name, groups.setdefault(without, {}), without, slots)
        lines = [
            (_prefix(metric, name, labels), source)
            for group in groups.values()
            for (name, labels), source in group.items()
        ]
        return _Family(_header(metric), lines)

    def _accumulate_buckets(
        self, name: str, group: _Group, without: Labels, bounds: dict[float, int]
    ) -> None:
        if any(math.isnan(bound) for bound in bounds):
            raise Unsupported(f"{name}: a bucket bound that is NaN")
        ordered = sorted(bounds.items(), key=lambda item: item[0])
        chain = [slot for _, slot in ordered]
        for index, (bound, _) in enumerate(ordered):
            le = (("le", _go_float(bound)),)
            group[(name + "_bucket", without + le)] = _Cumulative(chain, index)
        group[(name + "_count", without)] = _Cumulative(chain, len(chain) - 1)

    def _recent(self, metric: _Metric) -> _Family:
        slots: dict[tuple[str, Labels], int] = {}
        groups: dict[Labels, int] = {}
        series: list[tuple[str, int, int]] = []
        for name, labels, entry in metric.samples:
            labels = tuple(label for label in labels if label[0] != "pid")
            slot = slots.get((name, labels))
            if slot is None:
                slot = slots[(name, labels)] = self.n_recent
                self.n_recent += 1
                group = groups.setdefault(labels, len(groups))
                series.append((_prefix(metric, name, labels), slot, group))
            self._recent_entries.append(entry)
            self._recent_slots.append(slot)
        return _Family(_header(metric), [], series)


def _indices(items: list[int]) -> npt.NDArray[np.intp]:
    return np.array(items, dtype=np.intp)


def _read_metrics(layouts: Iterable[_Layout]) -> dict[str, _Metric]:
    """MultiProcessCollector._read_metrics: samples by metric, entries numbered in order."""
    metrics: dict[str, _Metric] = {}
    entry = 0
    for layout in layouts:
        for e in layout.entries:
            metric = metrics.get(e.metric)
            if metric is None:
                if layout.typ not in _TYPES:
                    raise Unsupported(f"metric type {layout.typ!r}")
                metric = metrics[e.metric] = _Metric(e.metric, e.help, layout.typ)
            if layout.typ == "gauge":
                metric.mode = layout.mode  # the last file's, as prometheus_client
                metric.samples.append((e.name, (*e.labels, ("pid", layout.pid)), entry))
            else:
                metric.samples.append((e.name, e.labels, entry))
            entry += 1
    return metrics


def _header(metric: _Metric) -> str:
    name = metric.name + "_total" if metric.typ == "counter" else metric.name
    if not _NAME.fullmatch(name):
        raise Unsupported(f"metric name {name!r} needs escaping")
    doc = metric.help.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {metric.typ}\n"


def _prefix(metric: _Metric, name: str, labels: Labels) -> str:
    """`name{labels} `, as generate_latest's sample_line writes it."""
    if not _NAME.fullmatch(name) or name in {metric.name + s for s in _OPENMETRICS_ONLY}:
        raise Unsupported(f"sample name {name!r}")
    pairs = sorted(dict(labels).items())
    for label, _ in pairs:
        if not _LABEL.fullmatch(label):
            raise Unsupported(f"label name {label!r} needs escaping")
    if not pairs:
        return name + " "
    return name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "} "


# -- per scrape -------------------------------------------------------------------------------


class FileText:
    """Renders one multiprocess directory, keeping layouts, the plan and lines between
    scrapes. Not thread-safe: one scrape at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._keys: dict[str, _Entry] = {}
        self._layouts: dict[str, _Layout] = {}
        self._plan: _Plan | None = None
        self._planned: list[_Layout] = []
        self._lines: dict[str, tuple[float, str]] = {}
        self.plans = 0  # plans built so far

    def text(self) -> str:
        layouts, blocks = self._read_files()
        plan = self._plan
        if plan is None or not _same(self._planned, layouts):
            if len(self._keys) > 2 * sum(len(layout.entries) for layout in layouts) + 1000:
                self._keys.clear()
            plan = self._plan = _Plan(layouts)
            self._planned = layouts
            self.plans += 1
        return self._write(plan, layouts, blocks)

    def _read_files(self) -> tuple[list[_Layout], list[bytes]]:
        layouts, blocks = [], []
        paths = glob.glob(os.path.join(self.path, "*.db"))  # prometheus_client's order
        for path in paths:
            try:
                data, used = _read(path)
            except FileNotFoundError:
                parts = os.path.basename(path).split("_")
                if parts[0] == "gauge" and parts[1:] and parts[1].startswith("live"):
                    continue  # removed by mark_process_dead since the glob
                raise
            layout = self._layouts.get(path)
            if layout is None or not layout.matches(data, used):
                layout = self._layouts[path] = _Layout(path, data, used, self._keys)
            layouts.append(layout)
            blocks.append(data)
        if len(self._layouts) > len(layouts):
            current = set(paths)
            self._layouts = {p: v for p, v in self._layouts.items() if p in current}
        return layouts, blocks

    def _write(self, plan: _Plan, layouts: list[_Layout], blocks: list[bytes]) -> str:
        values, stamps = _gather(layouts, blocks)
        entries, slots = plan.sums
        sums: list[float] = np.bincount(
            slots, weights=values[entries], minlength=plan.n_sums
        ).tolist()
        listed: list[float] = values.tolist()
        recent = _latest(plan, values, stamps)
        chains: dict[int, list[float]] = {}
        cache = self._lines
        out: list[str] = []
        for family in plan.families:
            out.append(family.header)
            if family.recent is not None:
                series = _recent_series(family.recent, recent)
            else:
                series = [(p, _value(s, sums, listed, chains)) for p, s in family.lines]
            for prefix, value in series:
                cached = cache.get(prefix)
                # Equal non-zero numbers format alike; zeros may not (-0.0 == 0.0).
                if cached is not None and value and cached[0] == value:
                    out.append(cached[1])
                    continue
                line = prefix + _number(value) + "\n"
                cache[prefix] = (value, line)
                out.append(line)
        if len(cache) > 2 * len(out) + _CACHE_SLACK:
            cache.clear()
        return "".join(out)


def _same(a: list[_Layout], b: list[_Layout]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _gather(
    layouts: list[_Layout], blocks: list[bytes]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Every entry's value and timestamp, files in order, entries in file order."""
    if not layouts:
        return np.zeros(0), np.zeros(0)
    values, stamps = [], []
    for layout, data in zip(layouts, blocks, strict=True):
        floats = np.frombuffer(data, dtype=np.float64, count=layout.used // 8)
        values.append(floats[layout.values])
        stamps.append(floats[layout.stamps])
    return np.concatenate(values), np.concatenate(stamps)


def _value(
    source: _Source, sums: list[float], values: list[float], chains: dict[int, list[float]]
) -> float:
    if isinstance(source, int):
        return sums[source]
    if isinstance(source, _Cumulative):
        cumulative = chains.get(id(source.slots))
        if cumulative is None:
            acc = 0.0
            cumulative = chains[id(source.slots)] = []
            for slot in source.slots:
                acc += sums[slot]
                cumulative.append(acc)
        return cumulative[source.index]
    if isinstance(source, _Last):
        return values[source.entry]
    current = values[source.entries[0]]
    for entry in source.entries[1:]:
        value = values[entry]
        if (value > current) if source.higher else (value < current):
            current = value
    return current


@dataclass
class _Latest:
    value: dict[int, float]  # slot -> its latest value
    first: dict[int, int]  # slot -> rank of its first value with a timestamp above 0


def _latest(
    plan: _Plan, values: npt.NDArray[np.float64], stamps: npt.NDArray[np.float64]
) -> _Latest:
    """mostrecent gauges: per series the value with the latest timestamp (the first of
    equal ones; none at or below 0, nor NaN), as prometheus_client's `<` picks it."""
    entries, slots = plan.recent
    times = stamps[entries]
    later = times > 0
    entries, slots, times = entries[later], slots[later], times[later]
    latest = np.full(plan.n_recent, -np.inf)
    np.maximum.at(latest, slots, times)
    winners = times == latest[slots]
    won, first_win = np.unique(slots[winners], return_index=True)
    chosen = values[entries[winners][first_win]]
    seen, first_seen = np.unique(slots, return_index=True)
    return _Latest(
        dict(zip(won.tolist(), chosen.tolist(), strict=True)),
        dict(zip(seen.tolist(), first_seen.tolist(), strict=True)),
    )


def _recent_series(series: list[tuple[str, int, int]], latest: _Latest) -> list[tuple[str, float]]:
    """A mostrecent family's series that have a value, in prometheus_client's order:
    groups (label sets) by their first value set, and series within them likewise."""
    present = [s for s in series if s[1] in latest.first]
    group_first: dict[int, int] = {}
    for _, slot, group in present:
        rank = latest.first[slot]
        group_first[group] = min(rank, group_first.get(group, rank))
    present.sort(key=lambda s: (group_first[s[2]], latest.first[s[1]]))
    return [(prefix, latest.value[slot]) for prefix, slot, _ in present]
