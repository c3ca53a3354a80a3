"""The datagram tap: serving processes ship sampled bodies to one sidecar process.

With `SkewMiddleware(app, sink="unix:///run/skew/tap.sock")` a sampled exchange is not
checked in the serving process: it becomes one datagram (a small header, then the
request and response bodies, sent with scatter-gather I/O so nothing is joined on the
event loop) on a non-blocking socket. When the sidecar is slow (the socket buffer is
full) or gone, the sample is dropped and counted; the send never blocks and never
raises into the app. Several worker processes (gunicorn or uvicorn `--workers N`) share
one sidecar: one checker, one set of metrics.

Each serving process also sends its own counts (requests seen, samples sent, drops by
reason) about once a second, cumulative, under a random incarnation id; the sidecar adds
the increments to the model's counters and counts samples that were sent but never
arrived (UDP may lose datagrams) as `lost_in_transit`.

Wire format (version 1, big-endian):

    sample:  b"SKT1" b"S" incarnation(8) status(H) len(model)(B) len(req enc)(B)
             len(resp enc)(B) len(request)(I) model req-enc resp-enc request response
    counts:  b"SKT1" b"C" incarnation(8) len(model)(B) model JSON{seen, sent, dropped}
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from .metrics import DROP_REASONS
from .sampling import Sampler
from .worker import Sample, _bump, _Counts, content_encoding

MAGIC = b"SKT1"
_SAMPLE = struct.Struct("!4sc8sHBBBI")
_COUNTS = struct.Struct("!4sc8sB")
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

    def start(self) -> None:
        self._connect()

    def stop(self, timeout: float = 0.0) -> None:
        self.report_counts(force=True)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
            self._connected = False

    def submit(self, sample: Sample, size: int = -1) -> bool:
        """Send one sample as one datagram; False (counted) when it could not go.
        (`size` is the Monitor's signature: a datagram holds nothing once sent.)"""
        if not self._connected and not self._connect():
            _bump(self.counts.dropped, SINK_UNAVAILABLE)
            return False
        request_encoding = content_encoding(sample.headers).encode("latin-1")[:255]
        response_encoding = content_encoding(sample.response_headers).encode("latin-1")[:255]
        request = sample.request
        header = _SAMPLE.pack(
            MAGIC,
            b"S",
            self.incarnation,
            sample.status,
            len(self._model),
            len(request_encoding),
            len(response_encoding),
            sum(map(len, request)),
        )
        parts = [header, self._model, request_encoding, response_encoding, *request]
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
        self._send([head, self._model, body], count=False)

    def _send(self, parts: Sequence[bytes], count: bool = True) -> bool:
        sock = self._socket
        if sock is None:
            return False
        try:
            sock.sendmsg(parts)
            return True
        except BlockingIOError:
            reason = SINK_BUSY
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                reason = "too_large"
            else:  # ECONNREFUSED, ENOENT, ENOTCONN: the sidecar is gone or restarting
                reason = SINK_UNAVAILABLE
                self._connected = False
                self._next_connect = self.clock() + RECONNECT_SECONDS
        if count:
            _bump(self.counts.dropped, reason)
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
class TapCounts:
    incarnation: bytes
    model: str
    seen: int
    sent: int
    dropped: dict[str, int]


def decode(datagram: bytes) -> TapSample | TapCounts:
    """One datagram back into a sample or a counts report; TapFormatError otherwise."""
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
            request = datagram[at : at + size]
            response = datagram[at + size :]
            sample = Sample(
                [request],
                [response] if response else (),
                status,
                _encoding_header(request_encoding),
                _encoding_header(response_encoding),
            )
            return TapSample(incarnation, model, sample)
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

    def received(self, model: str, incarnation: bytes) -> None:
        self._get(model, incarnation).received += 1

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
