"""The background consumer: parse, extract, check, window, export. One queue, one thread.

The serving path only appends a `Sample` to a bounded queue (`Monitor.submit`);
everything that costs CPU happens here, off the event loop, in batches small
enough that the thread never holds the GIL for long.
"""

from __future__ import annotations

import atexit
import bisect
import dataclasses
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import orjson
from prometheus_client import REGISTRY, CollectorRegistry

from .baseline import SCHEMA_VERSION, Baseline
from .engine import Engine, FloatArray, IntArray, Window
from .evidence import EvidenceLog, EvidenceOptions, Recorder, Redactor, request_id
from .extract import extract_request, extract_response, is_plain_prediction, is_plain_record
from .metrics import BATCH_BUCKETS, MonitorSnapshot, collector_for
from .multiprocess import Mirror
from .records import RecordReader, identity, read_predictions
from .reload import BaselineFile, carry, unchanged
from .report import DriftRule, WindowReport, build_report
from .sample_queue import PythonSampleQueue, SampleQueue
from .sampling import Sampler

logger = logging.getLogger("sidecar")

Extractor = Callable[[Any], Sequence[Any]]
# Rows already in columns (Engine.check_columns): requests read by a RecordReader, and
# plain numeric predictions.
Columns = tuple[Engine, FloatArray, IntArray]
EXACT = 2**53  # ints up to this size are exact as doubles
Headers = Iterable[tuple[bytes, bytes]]


class Sample:
    """One sampled exchange as the serving path saw it: body chunks and header lists,
    by reference. Joining, header reading and parsing all happen in the worker.

    A slotted class, not a dataclass: it is built on the event loop for every
    sample, and a frozen dataclass's __init__ costs several times more.
    """

    __slots__ = ("headers", "request", "response", "response_headers", "status")

    def __init__(
        self,
        request: Sequence[bytes],
        response: Sequence[bytes] = (),
        status: int = 200,
        headers: Headers = (),
        response_headers: Headers = (),
    ) -> None:
        self.request = request
        self.response = response
        self.status = status
        self.headers = headers
        self.response_headers = response_headers


@dataclass
class _Counts:
    """Plain integers: the loop writes seen/sampled/dropped, the worker the rest."""

    seen: int = 0
    sampled: int = 0  # the datagram tap's: a Monitor's queue counts its own
    checked: int = 0  # samples whose rows reached the checks (written by the worker)
    dropped: dict[str, int] = field(default_factory=dict)  # written by the event loop
    rejected: dict[str, int] = field(default_factory=dict)  # written by the worker
    errors: dict[str, int] = field(default_factory=dict)
    # Per-bucket (not cumulative) counts; the last one is +Inf.
    batch_buckets: list[int] = field(default_factory=lambda: [0] * (len(BATCH_BUCKETS) + 1))
    batch_sum: float = 0.0

    def exported(self, sampler: Sampler | None) -> tuple[int, dict[str, int]]:
        """Requests seen and samples dropped by reason, with the in-app tap's sampler
        (which counts requests seen and refused by the cap itself)."""
        seen, dropped = self.seen, _summed(self.dropped, self.rejected)
        if sampler is not None:
            seen += sampler.seen
            if limited := sampler.rate_limited:
                _bump(dropped, "rate_limited", limited)
        return seen, dropped

    def observe_batch(self, seconds: float) -> None:
        self.batch_sum += seconds
        self.batch_buckets[bisect.bisect_left(BATCH_BUCKETS, seconds)] += 1


class Pacer:
    """Offers the GIL once `slice_seconds` of work have passed since the last offer.

    The worker calls `tick()` where it may pause (before each sample it parses, between
    the features it checks), so the serving thread rarely waits on it for much more than
    a slice, whatever the batch size. A tick that is not due costs one clock read.
    Measured with `python bench/worker_stalls.py --other <checkout>`: event-loop stalls
    over 0.6 ms caused by the worker went from 40 to 21 in 6 s at 870 samples/s against
    offering the GIL once per 128 samples (and to 3 once the numeric block paused too).

    With `activity` (a count the serving thread moves with every request it takes) the
    worker also steps aside while the serving thread is busy: when requests arrived
    during the slice just done, it sleeps `busy_pause_seconds` instead of only offering
    the GIL, so a request being served gets the core to itself rather than meeting a
    worker slice at every turn of the event loop. Unless `behind()`: a queue filling up
    means the worker must keep pace, and it only offers the GIL. Inside the engine's
    check, where the worker holds the lock a scrape reads under, it pauses once at most
    (`hold`, `tick_holding`).
    """

    __slots__ = (
        "activity",
        "behind",
        "busy_pause",
        "since",
        "slice",
        "sleep",
        "_held_pause",
        "_seen",
    )

    def __init__(
        self,
        slice_seconds: float,
        busy_pause_seconds: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.slice = slice_seconds
        self.busy_pause = busy_pause_seconds
        self.sleep = sleep
        self.since = time.perf_counter()
        self.activity: Callable[[], int] | None = None
        self.behind: Callable[[], bool] = lambda: False
        self._seen = 0
        self._held_pause = False

    def tick(self) -> None:
        if time.perf_counter() - self.since >= self.slice:
            self._step_aside(True)
            self.since = time.perf_counter()

    def hold(self) -> None:
        """The worker takes a lock a scrape may wait on: from now until the next `hold`,
        `tick_holding` pauses once at most, so the scrape waits for one chunk's work and
        one pause, not a pause per slice of it."""
        self._held_pause = True

    def tick_holding(self) -> None:
        """`tick` while holding the lock `hold` announced."""
        if time.perf_counter() - self.since >= self.slice:
            if self._step_aside(self._held_pause):
                self._held_pause = False
            self.since = time.perf_counter()

    def _step_aside(self, may_pause: bool) -> bool:
        """Sleeps busy_pause (True) or only offers the GIL (False)."""
        if self.activity is not None and self.busy_pause > 0:
            seen = self.activity()
            if seen != self._seen:
                self._seen = seen
                if may_pause and not self.behind():
                    self.sleep(self.busy_pause)  # the GIL and the core, for a while
                    return True
        # Hands the GIL over if the serving thread asked for it (after a switch interval,
        # 5 ms), so it waits at most one slice. os.sched_yield would hand it over at once,
        # but the bench measured it to cost more CPU than the checking itself.
        self.sleep(0)
        return False


def _bump(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def _size(sample: Sample) -> int:
    """Body bytes a queued sample holds."""
    return sum(map(len, sample.request)) + sum(map(len, sample.response))


def _summed(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for key, n in b.items():
        out[key] = out.get(key, 0) + n
    return out


def content_encoding_bytes(headers: Headers) -> bytes:
    """The Content-Encoding header's value as it came, else b"" (the datagram tap sends
    it so, on the event loop: no decoding there)."""
    for key, value in headers:
        # The length first: most headers are not this one, and lower() allocates.
        if len(key) == 16 and key.lower() == b"content-encoding":
            return bytes(value)
    return b""


def content_encoding(headers: Headers) -> str:
    return content_encoding_bytes(headers).decode("latin-1")


def _identity(headers: Headers) -> bool:
    """Whether a body is sent as it is (no Content-Encoding, or an empty one): the
    worker's fast path, twice per sample, so `content_encoding` inlined. Headers it
    cannot read take the slow path, which counts them."""
    try:
        for key, value in headers:
            if len(key) == 16 and key.lower() == b"content-encoding":
                return not bytes(value)
        return True
    except Exception:
        return False


# The compiled check where it was built (a tenth of the instructions): it is False
# also for headers of types servers do not send, which then take the slow path.
_sent_as_is: Callable[[Headers], bool] = identity or _identity


def parse_json(data: bytes) -> Any:
    """orjson, falling back to a parser that reads the NaN/Infinity tokens TF Serving
    clients send and numbers beyond float64 (the values then count as non-finite).

    ValueError for anything that is not JSON, including nesting too deep to parse."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if b"NaN" not in data and b"Infinity" not in data and "number" not in str(exc):
            raise
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply to parse") from None


class UnsupportedEncoding(ValueError):
    """A Content-Encoding we do not decode (e.g. br): counted, not parsed."""


def decompress(data: bytes, encoding: str, limit: int) -> bytes | None:
    """Decoded body, or None when it would exceed `limit` bytes (a zip bomb)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedEncoding(encoding)
    wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS
    try:
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"bad {encoding} body: {exc}") from None
    if len(out) > limit:
        return None
    if not inflater.eof:  # the app's own decoder would refuse it too
        raise ValueError(f"truncated {encoding} body")
    return out


class Monitor:
    """Checks sampled bodies against one baseline and exports the results.

    `submit` is safe to call from the event loop (it never blocks); `start` and
    `stop` manage the worker thread; `stop` flushes the last window.
    """

    def __init__(
        self,
        baseline: Baseline,
        *,
        model: str = "default",
        queue_size: int = 10_000,
        max_queue_bytes: int = 64 << 20,
        window_seconds: float = 60.0,
        rule: DriftRule | None = None,
        extractor: Extractor | None = None,
        registry: CollectorRegistry | None = REGISTRY,
        max_restarts: int = 3,
        batch_samples: int = 128,  # parsed, then their rows checked
        batch_rows: int = 256,  # checked in one engine call
        gil_slice_seconds: float = 0.0002,  # the longest the worker holds on to the GIL
        busy_pause_seconds: float = 0.001,  # steps aside this long while requests arrive
        max_decompressed_bytes: int = 8 << 20,
        flush_seconds: float = 1.0,
        wake_samples: int = 256,
        export_bins: bool = True,
        multiprocess: bool = False,
        evidence: EvidenceOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be positive, got {queue_size}")
        if max_queue_bytes < 1:
            raise ValueError(f"max_queue_bytes must be positive, got {max_queue_bytes}")
        if not window_seconds > 0:
            raise ValueError(f"window_seconds must be positive, got {window_seconds}")
        self.model = model
        self.queue_size = queue_size
        self.max_restarts = max_restarts  # worker crashes survived before disabling
        self.window_seconds = window_seconds
        self.rule = rule or DriftRule()
        self.extractor = extractor
        self.batch_samples = batch_samples
        self.batch_rows = batch_rows
        if gil_slice_seconds < 0:
            raise ValueError(f"gil_slice_seconds must be >= 0, got {gil_slice_seconds}")
        if busy_pause_seconds < 0:
            raise ValueError(f"busy_pause_seconds must be >= 0, got {busy_pause_seconds}")
        self.pacer = Pacer(gil_slice_seconds, busy_pause_seconds)
        self.pacer.activity = self._requests_seen
        self.pacer.behind = self._behind
        self.max_decompressed_bytes = max_decompressed_bytes
        self.flush_seconds = flush_seconds  # the longest a sample waits to be checked
        self.export_bins = export_bins
        self.clock = clock
        self.counts = _Counts()
        # Evidence (opt-in): recent offending values, found here in the worker.
        self.evidence: EvidenceLog | None = None
        self._evidence_options = evidence
        self._recorders: tuple[Recorder, Recorder] | None = None
        self._id_header = b""
        if evidence is not None:
            self.evidence = EvidenceLog(evidence.per_feature, evidence.max_total)
            self._id_header = evidence.request_id_header.lower().encode("latin-1")
        self._use(baseline)
        # Hot reload: a baseline waiting for the current window to close, and the file
        # the worker watches for one (watch_baseline).
        self._next_baseline: Baseline | None = None
        self.baseline_file: BaselineFile | None = None
        self._wakeup = threading.Event()
        # Its limit is 0 once disabled: every sample is refused.
        # Bounds as the queue's integers: "no bound" (math.inf, say) as 2**62.
        samples, body_bytes = (int(min(n, 1 << 62)) for n in (queue_size, max_queue_bytes))
        self._queue: PythonSampleQueue = SampleQueue(
            samples, body_bytes, wake_samples, self._wakeup.set
        )
        # The compiled queue: the compiled tap puts in it, and it sorts batches in C.
        self._triaged = type(self._queue) is not PythonSampleQueue
        self.restarts = 0
        self.disabled = False
        self._lock = threading.Lock()  # guards engines, totals and reports
        self._totals = [Window(self.requests.checkers), Window(self.responses.checkers)]
        self._last: list[WindowReport] = []
        self._diagnosed: dict[str, set[str]] = {}  # feature -> kinds ever diagnosed
        # Scrapes rebuild the running-totals reports only after rows were checked.
        self._checked = 0
        self._totals_at = -1
        self._totals_report: list[WindowReport] = []
        self._window_end_unix = 0.0
        self._windows = 0
        self._deadline = clock() + window_seconds
        self._thread: threading.Thread | None = None
        # Whether start() ran (and stop() did not since): a plain attribute, read for
        # every sampled request by the serving path (a property would run a Python
        # frame there).
        self.started = False
        self._stopping = False
        self._start_lock = threading.Lock()
        self._logged: set[str] = set()
        # The in-app tap counts requests seen and refused by the cap in its sampler.
        self.sampler: Sampler | None = None
        # Several worker processes (prometheus_client's multiprocess mode): the counts go
        # to this process's files through a mirror, not through the registry's collector.
        self.mirror: Mirror | None = None
        if registry is not None:
            if multiprocess:
                self.mirror = Mirror(self)
            else:
                collector_for(registry).add(self)

    def _use(self, baseline: Baseline) -> None:
        """Check against `baseline` from now on (at construction, or between windows)."""
        self.baseline = baseline
        self.baseline_hash = baseline.baseline_hash  # hashing serialises the baseline: once
        self.requests = Engine(baseline, roles=("input",))
        self.responses = Engine(baseline, roles=("prediction",))
        self._reader = RecordReader.for_engine(self.requests)
        self.checks_responses = bool(self.responses.checkers)
        # Unnamed outputs (a bare list of scores) take the one prediction column's name.
        outputs = list(self.responses.checkers)
        self.output_name = outputs[0] if len(outputs) == 1 else "prediction"
        # The usual response, `{"predictions": [x]}` with x a number, goes into a column
        # when the one output is numeric: no row dict, and no per-row work in the check.
        # With a second output, each such row lacks it: the row path counts that.
        self._prediction_column = (
            len(outputs) == 1
            and self.responses.takes_columns
            and list(self.responses.numbers) == outputs
        )
        # Positional payloads (lists without names) take the baseline's input order.
        self.input_names = list(self.requests.checkers)
        options = self._evidence_options
        if options is not None and self.evidence is not None:
            if self._recorders is not None:  # the same digests across baselines
                options = dataclasses.replace(options, key=self._recorders[0].redactor.key)
            redactor = Redactor(options, baseline.features)
            self._recorders = (
                Recorder(self.requests, baseline, self.evidence, redactor),
                Recorder(self.responses, baseline, self.evidence, redactor),
            )

    # -- hot reload ---------------------------------------------------------------------

    def watch_baseline(self, path: str | os.PathLike[str], interval: float = 5.0) -> None:
        """Load the baseline again from `path` when the file changes (checked every
        `interval` seconds by the worker) or `reload()` is called."""
        self.baseline_file = BaselineFile(path, self.model, self.baseline, interval=interval)

    def reload(self) -> None:
        """Look at the watched file now (SIGHUP); the worker loads it, off the loop."""
        if self.baseline_file is not None:
            self.baseline_file.forced = True
            self._wakeup.set()

    def replace_baseline(self, baseline: Baseline) -> None:
        """Check against `baseline` from the next window on; the current one closes at
        its time (or at once if it would be extended) against the baseline it began with.
        Running totals carry over: no counter goes down."""
        logger.info(
            "skew monitor %s: baseline %s replaces %s when the current window closes",
            self.model,
            baseline.baseline_hash,
            self.baseline_hash,
        )
        self._next_baseline = baseline
        self._wakeup.set()

    def _swap(self, baseline: Baseline) -> None:
        """Under the lock, between two windows: the new baseline's engines and totals."""
        same = unchanged(self.baseline, baseline)
        totals = self._totals
        self._use(baseline)
        self._totals = [
            carry(totals[0], Window(self.requests.checkers), same),
            carry(totals[1], Window(self.responses.checkers), same),
        ]
        self._checked += 1
        if self.baseline_file is not None:
            self.baseline_file.hash = baseline.baseline_hash
        logger.info(
            "skew monitor %s: now checking against baseline %s", self.model, self.baseline_hash
        )

    # -- the serving side (event loop) -----------------------------------------

    def submit(self, sample: Sample, size: int = -1) -> bool:
        """Queue a sample without blocking; a full queue (by samples, or by the body
        bytes they hold) drops it and counts the drop. `size`: the sample's body bytes,
        when the caller has them (else they are added up here). The compiled tap puts
        its samples in the queue itself."""
        if size < 0:
            size = _size(sample)
        if self._queue.put(sample, size):
            return True
        _bump(self.counts.dropped, "monitor_disabled" if self.disabled else "queue_full")
        return False

    def _requests_seen(self) -> int:
        """Requests the in-app tap counted so far (read racily from the worker: any
        change between two reads is all the pacer needs)."""
        sampler = self.sampler
        return 0 if sampler is None else sampler.seen

    def _behind(self) -> bool:
        """Half the queue's room used, by samples or by their bytes: keep pace."""
        queue = self._queue
        return len(queue) > queue.limit // 2 or queue.bytes > queue.max_bytes // 2

    # -- lifecycle ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._start_lock:
            if self.running or self.disabled:
                return
            self._stopping = False
            self._deadline = self.clock() + self.window_seconds
            self._thread = threading.Thread(
                target=self._supervise, name=f"skew-monitor-{self.model}", daemon=True
            )
            self._thread.start()
            self.started = True
            # Mounted sub-apps get no lifespan shutdown: flush at interpreter exit.
            atexit.register(self.stop)

    def stop(self, timeout: float = 10.0) -> None:
        """Check what is queued, flush the last window, and join the thread."""
        with self._start_lock:
            thread = self._thread
            if thread is None:
                return
            self._stopping = True
            self._wakeup.set()
            thread.join(timeout)
            if not thread.is_alive() and not self.disabled:
                self.process_pending()  # queued after the worker's last pass
            self._thread = None
            self.started = False
            atexit.unregister(self.stop)

    # -- the worker thread --------------------------------------------------------

    def _supervise(self) -> None:
        """The thread: runs the loop again after a crash (an exception that escaped its
        per-batch handler), up to `max_restarts` times, then disables the monitor."""
        while True:
            try:
                self._run()
                return
            except BaseException:
                self._error("worker")
                self.restarts += 1  # stopping too: the loop still has a window to close
                if self.restarts > self.max_restarts:
                    self._disable()
                    return

    def _disable(self) -> None:
        """Refuse every sample from now on; what is queued is dropped, all counted."""
        self.disabled = True
        self._queue.limit = 0
        logger.error(
            "skew monitor %s: worker crashed %d times; disabled, samples are dropped as "
            "monitor_disabled (the app is not affected)",
            self.model,
            self.restarts,
        )
        while self._queue:
            self._queue.popleft()
            _bump(self.counts.rejected, "monitor_disabled")

    def _run(self) -> None:
        while True:
            try:
                stopping = self._stopping
                self.process_pending()
                if stopping:
                    self.close_window()
                    if self.mirror is not None:
                        self.mirror.sync(force=True)
                    return
                if self.baseline_file is not None:
                    new = self.baseline_file.poll()
                    if new is not None:
                        self.replace_baseline(new)
                if self.clock() >= self._deadline or self._next_baseline is not None:
                    self.close_window(final=False)
                if self.mirror is not None:
                    self.mirror.sync()
                remaining = self._deadline - self.clock()
                # A due window still short of rows is re-checked every flush_seconds;
                # a zero timeout here would spin the thread at 100% CPU while idle.
                timeout = (
                    self.flush_seconds if remaining <= 0 else min(self.flush_seconds, remaining)
                )
                self._wakeup.wait(timeout)
                self._wakeup.clear()
                self._queue.woken = False  # the next full batch wakes it again
            except Exception:  # the thread must outlive any bug in one batch
                self._error("worker")

    def process_pending(self) -> int:
        """Check everything queued now; returns the number of samples processed.

        In batches: up to `batch_samples` samples are parsed, then their rows checked
        (in chunks of `batch_rows`); the pacer offers the GIL to the serving thread
        every `gil_slice_seconds` of that work, so the event loop never waits long.
        """
        processed = 0
        # Only what is queued now: under a steady stream the loop would never end, and
        # neither would a stop() (nor would a due window close).
        remaining = len(self._queue)
        while remaining > 0:
            started = time.perf_counter()
            requests: list[Any] = []
            responses: list[Any] = []
            columns: list[Columns] = []
            n = min(remaining, self.batch_samples)
            remaining -= n
            if self._recorders is None:
                self._extract_batch(n, requests, responses, columns)
                ids = None
            else:
                ids = self._extract_with_ids(n, requests, responses)
            processed += n
            self._check(requests, responses, ids, columns)
            seconds = time.perf_counter() - started
            self.counts.observe_batch(seconds)
            if self.mirror is not None:
                self.mirror.observe_batch(seconds)
        return processed

    def _extract_batch(
        self,
        n: int,
        requests: list[Any],
        responses: list[Any],
        columns: list[Columns],
    ) -> None:
        """`_extract` of the next n queued samples, with the usual exchange inlined: one
        chunk each way, no Content-Encoding, a plain record in and one prediction out.
        The calls this saves were a third of the worker's CPU per sample. With a
        `RecordReader`, the plain requests are read in bulk into `columns`."""
        queue = self._queue
        plain = self.extractor is None
        reader = self._reader
        check_responses = self.checks_responses
        # One-chunk responses of the one numeric output, for the compiled reader.
        read_outputs = self._prediction_column and read_predictions is not None
        predictions: list[float] = []  # plain numeric predictions read in Python
        if plain and reader is not None and self._triaged:
            self._extract_triaged(
                n, reader, read_outputs, requests, responses, predictions, columns
            )
            self._prediction_column_of(predictions, columns)
            return
        tick = self.pacer.tick
        unread: list[Sample] = []  # plain requests, for the reader
        outputs: list[Sample] = []
        for i in range(n):
            # With a reader, a usual sample takes a couple of µs here (its body is read
            # after the loop): a look at the clock every eighth is often enough for a
            # 200 µs slice, and one per sample was 4 % of the worker's instructions.
            if reader is None or not i & 7:
                tick()
            sample = queue.popleft()
            request = sample.request
            if not plain or len(request) != 1 or not _sent_as_is(sample.headers):
                self._extract(sample, requests, responses)
                tick()  # the slow path may take long: a large or compressed body
                continue
            if reader is not None:
                unread.append(sample)
            else:
                self._count(self._plain_request(sample, requests))
            response = sample.response
            if check_responses and response and 200 <= sample.status < 300:
                if read_outputs and len(response) == 1:
                    outputs.append(sample)
                else:
                    self._plain_response(sample, responses, predictions)
        if reader is not None and unread:
            self._read(reader, unread, [s.request[0] for s in unread], requests, columns)
        if outputs:
            bodies = [s.response[0] for s in outputs]
            headers = [s.response_headers for s in outputs]
            self._read_outputs(outputs, bodies, headers, responses, predictions, columns)
        self._prediction_column_of(predictions, columns)

    def _extract_triaged(
        self,
        n: int,
        reader: RecordReader,
        read_outputs: bool,
        requests: list[Any],
        responses: list[Any],
        predictions: list[float],
        columns: list[Columns],
    ) -> None:
        """`_extract_batch`'s loop with the compiled queue sorting the samples, without
        a Python step per sample: the usual exchanges go to the readers in bulk, the
        others one by one as the loop takes them."""
        tick = self.pacer.tick
        tick()
        queue = self._queue
        queued = len(queue)
        try:
            sorted_ = queue.triage(n, _sent_as_is, self.checks_responses, read_outputs)  # type: ignore[attr-defined]
        except Exception:  # no memory for its lists: what it took is counted, not lost
            self._error("extract")
            _bump(self.counts.rejected, "monitor_error", queued - len(queue))
            return
        plain, bodies, outputs, output_bodies, output_headers, others, slow = sorted_
        for sample in slow:
            self._extract(sample, requests, responses)
            tick()  # the slow path may take long: a large or compressed body
        if plain:
            self._read(reader, plain, bodies, requests, columns)
        for sample in others:
            tick()
            self._plain_response(sample, responses, predictions)
        if outputs:
            self._read_outputs(
                outputs, output_bodies, output_headers, responses, predictions, columns
            )

    def _prediction_column_of(self, predictions: list[float], columns: list[Columns]) -> None:
        """Predictions read in Python, as one more block of the prediction column."""
        if predictions:
            numbers = np.array(predictions, dtype=np.float64).reshape(-1, 1)
            columns.append((self.responses, numbers, np.empty((len(numbers), 0), np.int64)))

    def _plain_response(
        self, sample: Sample, responses: list[Any], predictions: list[float]
    ) -> None:
        """A successful response's outputs, its body parsed by orjson if it can: the
        usual `{"predictions": [x]}` with x a number goes to `predictions` (the numeric
        prediction column), any other output to `responses` as rows."""
        response = sample.response
        out: Any = None
        if len(response) == 1 and _sent_as_is(sample.response_headers):
            try:
                out = orjson.loads(response[0])
            except Exception:
                pass  # parsed again below, failures counted there
        if is_plain_prediction(out):
            value = out["predictions"][0]
            # orjson's floats are finite; ints beyond 2**53 would round.
            if self._prediction_column and (
                type(value) is float or (type(value) is int and -EXACT <= value <= EXACT)
            ):
                predictions.append(value)
            else:
                responses.append({self.output_name: value})
        elif out is not None:
            self._output_rows(out, responses)
        else:
            self._response_rows(sample, responses)

    def _read_outputs(
        self,
        samples: list[Sample],
        bodies: list[bytes],
        headers: list[Headers],
        responses: list[Any],
        predictions: list[float],
        columns: list[Columns],
    ) -> None:
        """One-chunk responses (`bodies`, with their `headers`) read by the compiled
        reader into the prediction column when they are `{"predictions": [x]}`, without
        Python objects per sample; the others, as `_plain_response` reads them."""
        numbers = np.empty((len(samples), 1), dtype=np.float64)
        left: Sequence[int]
        try:
            rows, left = read_predictions(bodies, headers, numbers)
        except Exception:  # counted; the Python path reads them all
            self._error("extract")
            rows, left = 0, range(len(samples))
        if rows:
            columns.append((self.responses, numbers[:rows], np.empty((rows, 0), np.int64)))
        for i in left:
            self._plain_response(samples[i], responses, predictions)

    def _read(
        self,
        reader: RecordReader,
        samples: list[Sample],
        bodies: list[bytes],
        requests: list[Any],
        columns: list[Columns],
    ) -> None:
        """Plain requests (one-chunk `bodies`) into `columns`; those the reader leaves,
        as rows."""
        try:
            numbers, slots, left = reader.read(bodies, self.pacer.tick)
        except Exception:  # counted; the Python path reads them all
            self._error("extract")
            numbers, slots = reader.empty()
            left = list(range(len(samples)))
        columns.append((reader.engine, numbers, slots))
        self.counts.checked += len(samples) - len(left)
        tick = self.pacer.tick
        for i in left:
            tick()  # parsed in Python: a body of another format may take a while
            self._count(self._plain_request(samples[i], requests))

    def _plain_request(self, sample: Sample, requests: list[Any]) -> str:
        """`_request_rows` of a one-chunk, unencoded request, orjson tried first."""
        try:
            body = orjson.loads(sample.request[0])
        except Exception:  # parse_json's fallbacks, and the drop reasons: the slow path
            return self._request_rows(sample, requests)
        return self._body_rows(body, requests)

    def _count(self, reason: str) -> None:
        """A sample counts once: as checked, or dropped by reason."""
        if reason:
            _bump(self.counts.rejected, reason)
        else:
            self.counts.checked += 1

    def _extract(self, sample: Sample, requests: list[Any], responses: list[Any]) -> None:
        """The sample's rows; the sample counts once: as checked, or dropped by reason."""
        reason = self._request_rows(sample, requests) if sample.request else "empty_body"
        if self.checks_responses and sample.response and 200 <= sample.status < 300:
            n = len(responses)
            self._response_rows(sample, responses)
            if reason == "empty_body" and len(responses) > n:
                reason = ""  # a response alone: a CloudEvent exchange without its request
        self._count(reason)

    def _request_rows(self, sample: Sample, requests: list[Any]) -> str:
        """Append the request's rows; "" when there were some, else the drop reason."""
        body, problem = self._parse(sample.request, sample.headers)
        return problem or self._body_rows(body, requests)

    def _body_rows(self, body: Any, requests: list[Any]) -> str:
        """Append the rows of a parsed request body; "" or the drop reason."""
        n = len(requests)
        try:
            if self.extractor is not None:
                requests.extend(self.extractor(body))
            elif is_plain_record(body):  # the common case, without building an Extracted
                requests.append(body)
            else:
                extracted = extract_request(body, names=self.input_names)
                if extracted is None:
                    return "unrecognised_payload"
                requests.extend(extracted.rows)
        except Exception:
            del requests[n:]  # an extractor may fail halfway through its rows
            self._error("extract")
            return "monitor_error"
        return "" if len(requests) > n else "no_rows"

    def _response_rows(self, sample: Sample, responses: list[Any]) -> None:
        """Append the response's output rows; one that cannot be parsed has none."""
        out, problem = self._parse(sample.response, sample.response_headers)
        if not problem:
            self._output_rows(out, responses)

    def _output_rows(self, out: Any, responses: list[Any]) -> None:
        n = len(responses)
        try:
            extracted = extract_response(out, output_name=self.output_name)
            if extracted is not None:
                responses.extend(extracted.rows)
        except Exception:
            del responses[n:]
            self._error("extract")

    def _extract_with_ids(
        self, n: int, requests: list[Any], responses: list[Any]
    ) -> tuple[list[str | None], list[str | None]]:
        """Extract n samples, and the request id of each row (for evidence)."""
        request_ids: list[str | None] = []
        response_ids: list[str | None] = []
        for _ in range(n):
            self.pacer.tick()
            sample = self._queue.popleft()
            self._extract(sample, requests, responses)
            rid = request_id(sample.headers, self._id_header)
            request_ids.extend(repeat(rid, len(requests) - len(request_ids)))
            response_ids.extend(repeat(rid, len(responses) - len(response_ids)))
        return request_ids, response_ids

    def _parse(self, chunks: Sequence[bytes], headers: Headers) -> tuple[Any, str]:
        """(parsed JSON, ""), or (None, why not): a drop reason."""
        try:
            data: bytes | None = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            encoding = content_encoding(headers)
            if encoding and data is not None:
                data = decompress(data, encoding, self.max_decompressed_bytes)
            if data is None:
                return None, "too_large"
            return parse_json(data), ""
        except UnsupportedEncoding:
            return None, "unsupported_encoding"
        except ValueError:  # orjson.JSONDecodeError and json's, bad gzip data
            return None, "invalid_json"
        except Exception:
            self._error("parse")
            return None, "monitor_error"

    def _check(
        self,
        requests: list[Any],
        responses: list[Any],
        ids: tuple[list[str | None], list[str | None]] | None = None,
        columns: Sequence[Columns] = (),
    ) -> None:
        step = self.batch_rows
        for engine, numbers, slots in columns:  # the engine they were read for
            for i in range(0, len(numbers), step):
                try:
                    with self._lock:  # as below
                        self._checked += 1
                        self.pacer.hold()
                        engine.check_columns(
                            numbers[i : i + step], slots[i : i + step], self.pacer.tick_holding
                        )
                except Exception:
                    self._error("check")
                self.pacer.tick()
        now = time.time() if ids is not None else 0.0  # evidence's timestamps
        batches = ((self.requests, requests), (self.responses, responses))
        for j, (engine, rows) in enumerate(batches):
            for i in range(0, len(rows), step):
                try:
                    # The check pauses once at most for the serving thread with the lock
                    # held (a scrape waits for about one chunk's work and one pause). The
                    # lock is not released for it: a scrape would see a half-counted
                    # chunk, whose unknown-feature count can be lower than the last one.
                    with self._lock:
                        self._checked += 1  # the running totals changed
                        self.pacer.hold()
                        if ids is None or self._recorders is None:
                            engine.check(rows[i : i + step], self.pacer.tick_holding)
                        else:  # the same check, and the offending values as evidence
                            self._recorders[j].check(rows[i : i + step], ids[j][i : i + step], now)
                except Exception:
                    self._error("check")
                self.pacer.tick()

    def close_window(self, final: bool = True) -> None:
        """Close the current window: its measures become the exported ones.

        A due window with fewer rows than the drift rule's minimum is extended
        (final=False), not closed: slow traffic still gets verdicts.
        """
        try:
            with self._lock:
                waiting = self._next_baseline
                if not final and waiting is None and self.requests.window.rows < self.rule.min_rows:
                    return  # extended: due again at the next wake-up, not a full window later
                if waiting is not None and self.clock() < self._deadline and not final:
                    return  # a new baseline waits for the window's end
                windows = [self.requests.close_window(), self.responses.close_window()]
                for total, window in zip(self._totals, windows, strict=True):
                    total.add(window)
                self._checked += 1
                if windows[0].rows or windows[1].rows:
                    self._last = [
                        build_report(w, self.baseline, self.rule, baseline_hash=self.baseline_hash)
                        for w in windows[: 2 if self.checks_responses else 1]
                    ]
                    self._windows += 1
                    self._window_end_unix = time.time()
                    for report in self._last:
                        for r in report.features.values():
                            if r.diagnosis:
                                kinds = self._diagnosed.setdefault(r.name, set())
                                kinds.update(d.kind for d in r.diagnosis)
                if waiting is not None:
                    self._next_baseline = None
                    self._swap(waiting)
        except Exception:
            self._error("report")
        self._deadline = self.clock() + self.window_seconds

    def _error(self, stage: str) -> None:
        _bump(self.counts.errors, stage)
        if stage not in self._logged:  # once per stage: a bug must not flood the logs
            self._logged.add(stage)
            logger.exception("skew monitor %s: %s failed; counted, not raised", self.model, stage)

    # -- export ---------------------------------------------------------------------

    def snapshot(self) -> MonitorSnapshot:
        with self._lock:
            if self._totals_at != self._checked:  # reports of unchanged totals are reused
                self._totals_report = self._build_totals()
                self._totals_at = self._checked
            totals = self._totals_report
            last = list(self._last)
            diagnosed = {name: frozenset(kinds) for name, kinds in self._diagnosed.items()}
        return self._snapshot(totals, last, diagnosed)

    def _build_totals(self) -> list[WindowReport]:
        """Running totals since start (closed windows plus the open one), no measures."""
        totals = []
        for engine, total in (
            (self.requests, self._totals[0]),
            (self.responses, self._totals[1]),
        ):
            running = Window(engine.checkers)
            running.add(total)
            running.add(engine.window)
            totals.append(
                build_report(
                    running,
                    self.baseline,
                    self.rule,
                    baseline_hash=self.baseline_hash,
                    measures=False,
                )
            )
        return totals

    def _snapshot(
        self,
        totals: list[WindowReport],
        last: list[WindowReport],
        diagnosed: dict[str, frozenset[str]],
    ) -> MonitorSnapshot:
        c = self.counts
        seen, dropped = c.exported(self.sampler)
        return MonitorSnapshot(
            model=self.model,
            baseline_hash=self.baseline_hash,
            schema_version=SCHEMA_VERSION,
            totals=totals if self.checks_responses else totals[:1],
            last_window=last,
            window_end=self._window_end_unix,
            seen=seen,
            sampled=self._queue.sampled,
            checked=c.checked,
            dropped=dropped,
            errors=dict(c.errors),
            queue_depth=len(self._queue),
            queue_capacity=self.queue_size,
            windows=self._windows,
            export_bins=self.export_bins,
            batch_buckets=list(c.batch_buckets),
            batch_sum=c.batch_sum,
            diagnosed=diagnosed,
            exemplars=self._exemplars(),
        )

    def _exemplars(self) -> dict[tuple[str, str], tuple[str, float]]:
        """(feature, reason) -> (request id, unix time) of the newest evidence with an id."""
        if self.evidence is None:
            return {}
        return {
            key: (entry.request_id, entry.time)
            for key, entry in self.evidence.exemplars().items()
            if entry.request_id is not None
        }
