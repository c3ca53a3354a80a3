"""The datagram tap: serving processes ship sampled bodies to one sidecar process.

With `SkewMiddleware(app, sink="unix:///run/skew/tap.sock")` a sampled exchange is not
checked in the serving process: it goes in a datagram (a small header, then the
request and response bodies, sent with scatter-gather I/O so nothing is joined on the
event loop) on a non-blocking socket. When the sidecar is slow (the socket buffer is
full) or gone, the sample is dropped and counted; the send never blocks and never
raises into the app. Several worker processes (gunicorn or uvicorn `--workers N`) share
one sidecar: one checker, one set of metrics.

Each serving process also sends its own counts (requests seen, samples sent, drops by
reason) about once a second, cumulative, under a random incarnation id; the sidecar adds
the increments to the model's counters and counts samples that were sent but never
arrived (UDP may lose datagrams) as `lost_in_transit`.

On the event loop, samples are sent in batches: up to `BATCH_SAMPLES` samples or
`BATCH_BYTES` of bodies in one datagram, and at most `BATCH_SECONDS` after the first of
them. One `sendmsg` costs about 12 µs of CPU when it wakes the sidecar; 32 samples in
one cost about 3 µs each. A batch that cannot go is dropped and counted per sample.
Outside an event loop (and for a sample too large to share a datagram) each sample
goes at once, alone.

Wire format (version 1, big-endian):

    sample:  b"SKT1" b"S" incarnation(8) status(H) len(model)(B) len(req enc)(B)
             len(resp enc)(B) len(request)(I) model req-enc resp-enc request response
    batch:   b"SKT1" b"B" incarnation(8) len(model)(B) count(H) model, then per sample:
             status(H) len(req enc)(B) len(resp enc)(B) len(request)(I) len(response)(I)
             req-enc resp-enc request response
    counts:  b"SKT1" b"C" incarnation(8) len(model)(B) model JSON{seen, sent, dropped}
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from .metrics import DROP_REASONS
from .sampling import Sampler
from .worker import Sample, _bump, _Counts, content_encoding_bytes

MAGIC = b"SKT1"
_SAMPLE = struct.Struct("!4sc8sHBBBI")
_COUNTS = struct.Struct("!4sc8sB")
_BATCH = struct.Struct("!4sc8sBH")
_RECORD = struct.Struct("!HBBII")
BATCH_SAMPLES = 32  # samples in one datagram, at most
BATCH_BYTES = 48 << 10  # body bytes in one datagram, at most (UDP datagrams end at 64 KiB)
BATCH_SECONDS = 0.05  # the longest a sample waits for its batch to fill
BATCH_PARTS = 1000  # buffers in one sendmsg (Linux refuses more than 1,024)
ALONE_CHUNKS = 64  # a sample in more body chunks than this goes alone
COUNTS_SECONDS = 1.0  # how often a serving process reports its counts
RECONNECT_SECONDS = 1.0  # how often a sink retries a sidecar that was not there
SEND_BUFFER = 1 << 20  # asked for; the kernel caps it (net.core.wmem_max)
# Reasons the serving side drops a sample (skew_samples_dropped_total{reason}).
SINK_BUSY = "sink_busy"  # the socket buffer is full: the sidecar is behind
SINK_UNAVAILABLE = "sink_unavailable"  # no sidecar listening
LOST_IN_TRANSIT = "lost_in_transit"  # sent, never received (counted by the sidecar)


class TapAddressError(ValueError):
    """A sink address we cannot use; the message names the address and the fix."""


@dataclass(frozen=True)
class TapAddress:
    family: socket.AddressFamily
    address: Any  # a path, or (host, port)
    text: str

    @classmethod
    def parse(cls, text: str) -> TapAddress:
        """`unix:///run/skew/tap.sock` or `udp://127.0.0.1:9009` (`udp://[::1]:9009`)."""
        url = urlsplit(text)
        if url.scheme == "unix":
            path = url.path or url.netloc
            if not path:
                raise TapAddressError(f"tap address {text!r}: no socket path after unix://")
            return cls(socket.AF_UNIX, path, text)
        if url.scheme == "udp":
            try:
                host, port = url.hostname, url.port
            except ValueError as exc:
                raise TapAddressError(f"tap address {text!r}: {exc}") from None
            if not host or port is None:
                raise TapAddressError(f"tap address {text!r}: expected udp://HOST:PORT")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return cls(family, (host, port), text)
        raise TapAddressError(
            f"tap address {text!r}: expected unix:///path/to/tap.sock or udp://HOST:PORT"
        )


# -- the serving side ---------------------------------------------------------------------


class DatagramSink:
    """Stands where a Monitor would in the middleware: `submit` sends instead of queueing.

    Nothing here blocks or raises: a full socket buffer, a missing sidecar or a body
    too large for one datagram is a counted drop.
    """

    checks_responses = True  # the sidecar decides; the tap ships responses too
    started = True  # no thread to start: the middleware's lazy start is a no-op

    def __init__(
        self,
        address: str | TapAddress,
        *,
        model: str = "default",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address if isinstance(address, TapAddress) else TapAddress.parse(address)
        self.model = model
        self._model = model.encode()
        if len(self._model) > 255:
            raise ValueError(f"model name {model[:40]!r}...: at most 255 bytes")
        self.clock = clock
        self.counts = _Counts()
        self.sent = 0
        self.sampler: Sampler | None = None  # set by the middleware: requests seen, cap refusals
        self.incarnation = os.urandom(8)
        self._socket: socket.socket | None = None
        self._connected = False
        self._next_connect = 0.0
        self._next_counts = 0.0
        # The batch being filled on the event loop; `stop` may flush it from a thread.
        self._lock = threading.Lock()
        self._batch: list[bytes] = []
        self._batch_samples = 0
        self._batch_bytes = 0
        self._timer_loop: asyncio.AbstractEventLoop | None = None  # has the flush timer
        atexit.register(self.flush)  # a mounted sub-app never sees the lifespan's end

    def start(self) -> None:
        self._connect()

    def stop(self, timeout: float = 0.0) -> None:
        self.flush()
        self.report_counts(force=True)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
            self._connected = False

    def submit(self, sample: Sample, size: int = -1) -> bool:
        """Send one sample (in a batch, on the event loop); False (counted) when it could
        not go. (`size` is the Monitor's signature: a datagram holds nothing once sent.)"""
        if not self._connected and not self._connect():
            _bump(self.counts.dropped, SINK_UNAVAILABLE)
            return False
        # At most 255 bytes each: their lengths go in one byte on the wire.
        request_encoding = content_encoding_bytes(sample.headers)[:255]
        response_encoding = content_encoding_bytes(sample.response_headers)[:255]
        request, response = sample.request, sample.response
        # Most bodies are one chunk each way.
        request_size = len(request[0]) if len(request) == 1 else sum(map(len, request))
        body_size = request_size + (
            len(response[0]) if len(response) == 1 else sum(map(len, response))
        )
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        chunks = len(request) + len(response)
        if loop is None or body_size > BATCH_BYTES or chunks > ALONE_CHUNKS:
            return self._send_alone(sample, request_encoding, response_encoding, request_size)
        record = _RECORD.pack(
            sample.status,
            len(request_encoding),
            len(response_encoding),
            request_size,
            body_size - request_size,
        )
        with self._lock:
            if (
                self._batch_bytes + body_size > BATCH_BYTES
                or len(self._batch) + 3 + chunks > BATCH_PARTS
            ):
                self._flush_locked()
            batch = self._batch
            batch.append(record)
            batch.append(request_encoding)
            batch.append(response_encoding)
            batch.extend(request)
            batch.extend(response)
            self._batch_samples += 1
            self._batch_bytes += body_size
            if self._batch_samples >= BATCH_SAMPLES:
                self._flush_locked()
            elif self._timer_loop is not loop:
                # Once per batch; again if the loop that had the timer is gone (a test
                # client runs each request in a loop of its own).
                self._timer_loop = loop
                loop.call_later(BATCH_SECONDS, self.flush)
        return True

    def flush(self) -> None:
        """Send the samples batched so far (the timer, `stop`, interpreter exit)."""
        with self._lock:
            self._timer_loop = None
            self._flush_locked()

    def _flush_locked(self) -> None:
        n = self._batch_samples
        if not n:
            return
        head = _BATCH.pack(MAGIC, b"B", self.incarnation, len(self._model), n)
        parts = [head, self._model, *self._batch]
        self._batch.clear()
        self._batch_samples = self._batch_bytes = 0
        if self._send(parts, drops=n):
            self.sent += n
            self.counts.sampled += n
        self.report_counts()

    def _send_alone(
        self, sample: Sample, request_encoding: bytes, response_encoding: bytes, size: int
    ) -> bool:
        header = _SAMPLE.pack(
            MAGIC,
            b"S",
            self.incarnation,
            sample.status,
            len(self._model),
            len(request_encoding),
            len(response_encoding),
            size,
        )
        parts = [header, self._model, request_encoding, response_encoding, *sample.request]
        parts.extend(sample.response)
        sent = self._send(parts)
        if sent:
            self.sent += 1
            self.counts.sampled += 1
        self.report_counts()
        return sent

    def report_counts(self, force: bool = False) -> None:
        """Send this process's cumulative counts, at most once a second unless forced."""
        now = self.clock()
        if not force and now < self._next_counts:
            return
        self._next_counts = now + COUNTS_SECONDS
        if not self._connected and not self._connect():
            return
        seen, dropped = self.counts.exported(self.sampler)
        body = orjson.dumps({"seen": seen, "sent": self.sent, "dropped": dropped})
        head = _COUNTS.pack(MAGIC, b"C", self.incarnation, len(self._model))
        self._send([head, self._model, body], drops=0)

    def _send(self, parts: Sequence[bytes], drops: int = 1) -> bool:
        """One datagram; when it cannot go, `drops` samples (those it held) are counted."""
        sock = self._socket
        reason = SINK_UNAVAILABLE
        if sock is not None:
            try:
                sock.sendmsg(parts)
                return True
            except BlockingIOError:
                reason = SINK_BUSY
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    reason = "too_large"
                else:  # ECONNREFUSED, ENOENT, ENOTCONN: the sidecar is gone or restarting
                    self._connected = False
                    self._next_connect = self.clock() + RECONNECT_SECONDS
        if drops:
            _bump(self.counts.dropped, reason, drops)
        return False

    def _connect(self) -> bool:
        now = self.clock()
        if now < self._next_connect:
            return False
        self._next_connect = now + RECONNECT_SECONDS
        try:
            if self._socket is None:
                sock = socket.socket(self.address.family, socket.SOCK_DGRAM)
                sock.setblocking(False)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
                except OSError:
                    pass  # the default buffer still works, for smaller bodies
                self._socket = sock
            self._socket.connect(self.address.address)
        except OSError:
            return False
        self._connected = True
        return True

    def _error(self, stage: str) -> None:
        _bump(self.counts.errors, stage)


# -- the sidecar side ---------------------------------------------------------------------


class TapFormatError(ValueError):
    """A datagram that is not in the tap's format (counted by the receiver)."""


@dataclass(frozen=True)
class TapSample:
    incarnation: bytes
    model: str
    sample: Sample


@dataclass(frozen=True)
class TapBatch:
    incarnation: bytes
    model: str
    samples: list[Sample]


@dataclass(frozen=True)
class TapCounts:
    incarnation: bytes
    model: str
    seen: int
    sent: int
    dropped: dict[str, int]


def decode(datagram: bytes) -> TapSample | TapBatch | TapCounts:
    """One datagram back into a sample, a batch of them or a counts report;
    TapFormatError otherwise."""
    if datagram[:4] != MAGIC:
        raise TapFormatError("not a tap datagram (bad magic)")
    kind = datagram[4:5]
    try:
        if kind == b"S":
            _, _, incarnation, status, m, qe, re_, size = _SAMPLE.unpack_from(datagram)
            at = _SAMPLE.size
            model = datagram[at : at + m].decode()
            at += m
            request_encoding = datagram[at : at + qe]
            at += qe
            response_encoding = datagram[at : at + re_]
            at += re_
            if at + size > len(datagram):
                raise TapFormatError("truncated datagram: request longer than the datagram")
            request, response = datagram[at : at + size], datagram[at + size :]
            sample = _sample(status, request_encoding, response_encoding, request, response)
            return TapSample(incarnation, model, sample)
        if kind == b"B":
            return _decode_batch(datagram)
        if kind == b"C":
            _, _, incarnation, m = _COUNTS.unpack_from(datagram)
            at = _COUNTS.size
            model = datagram[at : at + m].decode()
            body = orjson.loads(datagram[at + m :])
            dropped = body["dropped"]
            if not isinstance(dropped, dict) or not all(
                type(v) is int and v >= 0 for v in dropped.values()
            ):
                raise TapFormatError("counts: dropped must map reasons to counts")
            # Only reasons we export: a hostile sender cannot grow labels or memory.
            dropped = {k: v for k, v in dropped.items() if k in DROP_REASONS}
            seen, sent = body["seen"], body["sent"]
            if type(seen) is not int or type(sent) is not int or seen < 0 or sent < 0:
                raise TapFormatError("counts: seen and sent must be non-negative integers")
            return TapCounts(incarnation, model, seen, sent, dropped)
    except (struct.error, UnicodeDecodeError, orjson.JSONDecodeError, KeyError, TypeError):
        raise TapFormatError("malformed tap datagram") from None
    raise TapFormatError(f"unknown tap datagram kind {kind!r}")


def _decode_batch(datagram: bytes) -> TapBatch:
    _, _, incarnation, m, count = _BATCH.unpack_from(datagram)
    at = _BATCH.size
    model = datagram[at : at + m].decode()
    at += m
    samples = []
    for _ in range(count):
        status, qe, re_, request_size, response_size = _RECORD.unpack_from(datagram, at)
        at += _RECORD.size
        request_encoding = datagram[at : at + qe]
        at += qe
        response_encoding = datagram[at : at + re_]
        at += re_
        end = at + request_size + response_size
        if end > len(datagram):
            raise TapFormatError("truncated batch: bodies longer than the datagram")
        request, response = datagram[at : at + request_size], datagram[at + request_size : end]
        at = end
        samples.append(_sample(status, request_encoding, response_encoding, request, response))
    if at != len(datagram):
        raise TapFormatError("malformed batch: bytes after its last sample")
    return TapBatch(incarnation, model, samples)


def _sample(
    status: int, request_encoding: bytes, response_encoding: bytes, request: bytes, response: bytes
) -> Sample:
    """A sample as the sidecar's monitor takes it, from one sample's fields on the wire."""
    return Sample(
        [request],
        [response] if response else (),
        status,
        _encoding_header(request_encoding),
        _encoding_header(response_encoding),
    )


def _encoding_header(value: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-encoding", value)] if value else []


@dataclass
class _Incarnation:
    """The last cumulative counts of one serving process, and what arrived from it."""

    seen: int = 0
    sent: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    received: int = 0
    lost: int = 0


class TapLedger:
    """Turns cumulative counts from many serving processes into increments.

    Bounded: at most `max_processes` are remembered (the least recently heard from is
    forgotten; its counts were already added). Counts never go down.
    """

    def __init__(self, max_processes: int = 4096) -> None:
        self.max_processes = max_processes
        self._processes: dict[tuple[str, bytes], _Incarnation] = {}

    def __len__(self) -> int:
        return len(self._processes)

    def received(self, model: str, incarnation: bytes, n: int = 1) -> None:
        self._get(model, incarnation).received += n

    def report(self, counts: TapCounts) -> tuple[int, dict[str, int]]:
        """Increments of (seen, dropped by reason) since the process's last report,
        with samples sent but not received as `lost_in_transit`."""
        state = self._get(counts.model, counts.incarnation)
        seen = max(0, counts.seen - state.seen)
        dropped: dict[str, int] = {}
        for reason, n in counts.dropped.items():
            delta = n - state.dropped.get(reason, 0)
            if delta > 0:
                dropped[reason] = delta
        lost = max(state.lost, counts.sent - state.received)
        if lost > state.lost:
            dropped[LOST_IN_TRANSIT] = lost - state.lost
        state.seen = max(state.seen, counts.seen)
        state.sent = max(state.sent, counts.sent)
        for reason, n in counts.dropped.items():
            state.dropped[reason] = max(n, state.dropped.get(reason, 0))
        state.lost = lost
        return seen, dropped

    def _get(self, model: str, incarnation: bytes) -> _Incarnation:
        key = (model, incarnation)
        state = self._processes.pop(key, None)
        if state is None:
            state = _Incarnation()
            while len(self._processes) >= self.max_processes:
                del self._processes[next(iter(self._processes))]
        self._processes[key] = state  # most recent last
        return state


def bind(address: TapAddress, receive_buffer: int = 8 << 20) -> socket.socket:
    """The sidecar's receiving socket. A stale Unix socket file is replaced; the new one
    is made writable by the owner's group (share a group, e.g. Kubernetes fsGroup)."""
    sock = socket.socket(address.family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    except OSError:
        pass
    if address.family == socket.AF_UNIX:
        path = address.address
        if os.path.exists(path):
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                sock.close()
                raise TapAddressError(f"tap address {address.text!r}: {path} exists, not a socket")
            os.unlink(path)
        sock.bind(path)
        os.chmod(path, 0o660)
    else:
        sock.bind(address.address)
    sock.setblocking(False)
    return sock
