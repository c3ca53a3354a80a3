"""The datagram tap: serving processes ship samples to one sidecar, which checks them.

Wire format and ledger as pure functions; the sink against real sockets; the whole path
through uvicorn (one worker in a thread; `uvicorn --workers 2` and gunicorn with two
uvicorn workers in a subprocess)."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sidecar import Baseline, SkewMiddleware
from sidecar.profile import ProfileOptions
from sidecar.serve import Sidecar
from sidecar.tap import (
    ALONE_CHUNKS,
    BATCH_BYTES,
    BATCH_PARTS,
    BATCH_SAMPLES,
    BATCH_SECONDS,
    LOST_IN_TRANSIT,
    SINK_BUSY,
    SINK_UNAVAILABLE,
    DatagramSink,
    TapAddress,
    TapAddressError,
    TapBatch,
    TapCounts,
    TapFormatError,
    TapLedger,
    TapSample,
    bind,
    decode,
)
from sidecar.worker import Sample
from tests.clock import Clock
from tests.servers import Workers, eventually, gunicorn_workers, serve, uvicorn_workers


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    rows = [{"x": float(i % 100), "score": (i % 100) / 100} for i in range(2000)]
    return Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"})))


@pytest.fixture
def socket_path() -> Iterator[str]:
    # AF_UNIX paths are limited to ~107 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="skewtap-") as folder:
        yield os.path.join(folder, "tap.sock")


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Sockets and sinks a test opens, closed at its end."""
    opened: list[Any] = []
    yield opened
    for item in opened:
        item.stop() if isinstance(item, DatagramSink) else item.close()


def receiver(path: str, closing: list[Any], **options: Any) -> socket.socket:
    sock = bind(TapAddress.parse(f"unix://{path}"), **options)
    closing.append(sock)
    return sock


def sink_to(address: str, closing: list[Any], **options: Any) -> DatagramSink:
    sink = DatagramSink(address, **options)
    closing.append(sink)
    return sink


def receive_all(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(1 << 20))
        except BlockingIOError:
            return out


# -- addresses and the wire format --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "family", "address"),
    [
        ("unix:///run/skew/tap.sock", socket.AF_UNIX, "/run/skew/tap.sock"),
        ("udp://127.0.0.1:9009", socket.AF_INET, ("127.0.0.1", 9009)),
        ("udp://[::1]:9009", socket.AF_INET6, ("::1", 9009)),
    ],
)
def test_tap_addresses_are_parsed(text: str, family: int, address: Any) -> None:
    parsed = TapAddress.parse(text)
    assert (parsed.family, parsed.address) == (family, address)


@pytest.mark.parametrize(
    "text", ["tcp://127.0.0.1:9", "unix://", "udp://127.0.0.1", "udp://host:99999", "/x.sock"]
)
def test_bad_tap_addresses_are_refused_naming_the_address(text: str) -> None:
    with pytest.raises(TapAddressError, match="tap address"):
        TapAddress.parse(text)


def test_a_sample_crosses_the_wire_unchanged(socket_path: str, closing: list[Any]) -> None:
    sock = receiver(socket_path, closing)
    sink = sink_to(f"unix://{socket_path}", closing, model="churn")
    request = [b'{"x": ', b"1.5}"]
    response = [b'{"predictions": [0.1]}']
    sample = Sample(request, response, 201, [(b"content-encoding", b"gzip")], [])
    assert sink.submit(sample)
    [datagram] = [d for d in receive_all(sock) if d[4:5] == b"S"]
    item = decode(datagram)
    assert isinstance(item, TapSample)
    assert item.model == "churn"
    assert item.incarnation == sink.incarnation
    assert list(item.sample.request) == [b'{"x": 1.5}']
    assert list(item.sample.response) == response
    assert item.sample.status == 201
    assert list(item.sample.headers) == [(b"content-encoding", b"gzip")]
    assert list(item.sample.response_headers) == []


def batches_in(datagrams: list[bytes]) -> list[TapBatch]:
    return [item for d in datagrams if isinstance(item := decode(d), TapBatch)]


def batch_of(sock: socket.socket) -> list[TapBatch]:
    return batches_in(receive_all(sock))


def test_on_the_event_loop_samples_cross_the_wire_unchanged_in_one_batch(
    socket_path: str, closing: list[Any]
) -> None:
    sock = receiver(socket_path, closing)
    sink = sink_to(f"unix://{socket_path}", closing, model="churn")
    samples = [
        Sample([b'{"x": ', b"1.5}"], [b'{"predictions": [0.1]}'], 201),
        Sample([b"gzipped"], (), 200, [(b"content-encoding", b"gzip")], []),
        Sample([b"{}"], [b"[]"], 500, [], [(b"Content-Encoding", b"deflate")]),
    ]

    async def send_all() -> list[TapBatch]:
        assert all(sink.submit(sample) for sample in samples)
        assert batch_of(sock) == []  # waiting for more, at most BATCH_SECONDS
        await asyncio.sleep(BATCH_SECONDS * 2)
        return batch_of(sock)

    [batch] = asyncio.run(send_all())
    assert (batch.model, batch.incarnation, sink.sent) == ("churn", sink.incarnation, 3)
    for got, sent in zip(batch.samples, samples, strict=True):
        assert list(got.request) == [b"".join(sent.request)]
        assert list(got.response) == ([b"".join(sent.response)] if sent.response else [])
        assert got.status == sent.status
        assert [v for _, v in got.headers] == [v for _, v in sent.headers]
        assert [v for _, v in got.response_headers] == [v for _, v in sent.response_headers]


def test_a_full_batch_goes_at_once_and_a_large_sample_goes_alone(
    socket_path: str, closing: list[Any]
) -> None:
    sock = receiver(socket_path, closing)
    sink = sink_to(f"unix://{socket_path}", closing)

    async def send() -> tuple[list[int], list[bytes]]:
        for i in range(BATCH_SAMPLES):
            sink.submit(Sample([b"%d" % i]))
        full = [len(b.samples) for b in batch_of(sock)]  # no timer needed
        sink.submit(Sample([b"x" * (BATCH_BYTES + 1)]))
        return full, receive_all(sock)

    full, alone = asyncio.run(send())
    assert full == [BATCH_SAMPLES]
    assert [d[4:5] for d in alone] == [b"S"]
    assert sink.sent == BATCH_SAMPLES + 1


def test_samples_in_many_chunks_never_make_a_batch_the_kernel_refuses(
    socket_path: str, closing: list[Any]
) -> None:
    sock = receiver(socket_path, closing)
    sink = sink_to(f"unix://{socket_path}", closing)
    chunked = [b"x"] * ALONE_CHUNKS  # the most chunks a batched sample may have

    async def send() -> list[bytes]:
        for _ in range(BATCH_SAMPLES - 1):
            sink.submit(Sample(chunked))
        sink.submit(Sample([b"y"] * (ALONE_CHUNKS + 1)))  # goes alone
        sink.flush()
        return receive_all(sock)

    datagrams = asyncio.run(send())
    assert not sink.counts.dropped
    assert sink.sent == BATCH_SAMPLES
    batches = batches_in(datagrams)
    assert sum(len(b.samples) for b in batches) == BATCH_SAMPLES - 1
    assert len(batches) >= (BATCH_SAMPLES - 1) * (ALONE_CHUNKS + 3) // BATCH_PARTS + 1
    assert all(list(s.request) == [b"x" * ALONE_CHUNKS] for b in batches for s in b.samples)
    assert [d[4:5] for d in datagrams].count(b"S") == 1


def test_stopping_the_sink_sends_the_batch_it_was_filling(
    socket_path: str, closing: list[Any]
) -> None:
    sock = receiver(socket_path, closing)
    sink = sink_to(f"unix://{socket_path}", closing)

    async def submit_two() -> None:
        sink.submit(Sample([b"1"]))
        sink.submit(Sample([b"2"]))
        sink.stop()  # before the timer: as at shutdown

    asyncio.run(submit_two())
    [batch] = batch_of(sock)
    assert [list(s.request) for s in batch.samples] == [[b"1"], [b"2"]]
    assert sink.sent == 2 and not sink.counts.dropped


def test_a_batch_is_sent_on_time_when_its_first_loop_ended_before_the_timer(
    socket_path: str, closing: list[Any]
) -> None:
    sock = receiver(socket_path, closing)
    sink = sink_to(f"unix://{socket_path}", closing)

    async def submit(body: bytes, wait: float) -> None:
        sink.submit(Sample([body]))
        await asyncio.sleep(wait)

    asyncio.run(submit(b"1", 0.0))  # this loop ends with the timer pending
    asyncio.run(submit(b"2", BATCH_SECONDS * 2))
    [batch] = batch_of(sock)
    assert [list(s.request) for s in batch.samples] == [[b"1"], [b"2"]]


def test_a_batch_that_cannot_go_is_dropped_and_counted_once_per_sample(
    socket_path: str, closing: list[Any]
) -> None:
    sock = receiver(socket_path, closing)
    sink = sink_to(f"unix://{socket_path}", closing)

    async def submit_then_lose_the_sidecar() -> None:
        for i in range(5):
            sink.submit(Sample([b"%d" % i]))
        sock.close()
        os.unlink(socket_path)
        await asyncio.sleep(BATCH_SECONDS * 2)

    asyncio.run(submit_then_lose_the_sidecar())
    assert sink.sent == 0
    assert sink.counts.dropped == {SINK_UNAVAILABLE: 5}


def test_counts_cross_the_wire_with_only_known_drop_reasons(
    socket_path: str, closing: list[Any]
) -> None:
    sock = receiver(socket_path, closing)
    sink = sink_to(f"unix://{socket_path}", closing)
    sink.counts.seen = 7
    sink.counts.dropped.update({"too_large": 2, "made_up_reason": 5})
    sink.report_counts(force=True)
    [item] = [decode(d) for d in receive_all(sock)[-1:]]
    assert isinstance(item, TapCounts)
    assert (item.seen, item.sent, item.dropped) == (7, 0, {"too_large": 2})


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"hello world",
        b"SKT1X" + b"\0" * 20,
        b"SKT1S" + b"\0" * 5,  # truncated header
        b"SKT1S" + b"\0" * 8 + b"\x00\xc8\x00\x00\x00\x00\x00\x10\x00",  # request past the end
        b"SKT1B" + b"\0" * 8 + b"\x00\x00\x01",  # a batch of one sample, and no sample
        b"SKT1B" + b"\0" * 8 + b"\x00\x00\x01" + b"\x00\xc8\0\0" + b"\0\0\0\x09" + b"\0" * 4,
        b"SKT1B" + b"\0" * 8 + b"\x00\x00\x00" + b"trailing bytes",
        b"SKT1C" + b"\0" * 8 + b"\x00" + b"{not json",
        b"SKT1C" + b"\0" * 8 + b"\x00" + b'{"seen": -1, "sent": 0, "dropped": {}}',
        b"SKT1C" + b"\0" * 8 + b"\x00" + b'{"seen": 1, "sent": 0, "dropped": {"x": "y"}}',
        b"SKT1C" + b"\0" * 8 + b"\x00" + b'{"seen": 1}',
    ],
)
def test_malformed_datagrams_are_refused(datagram: bytes) -> None:
    with pytest.raises(TapFormatError):
        decode(datagram)


def test_the_ledger_turns_cumulative_reports_into_increments() -> None:
    ledger = TapLedger()
    a, b = b"a" * 8, b"b" * 8
    assert ledger.report(TapCounts(a, "m", 10, 0, {"too_large": 1})) == (10, {"too_large": 1})
    assert ledger.report(TapCounts(b, "m", 5, 0, {})) == (5, {})
    assert ledger.report(TapCounts(a, "m", 25, 0, {"too_large": 1, "sink_busy": 3})) == (
        15,
        {"sink_busy": 3},
    )
    # A report that arrives late (lower numbers) adds nothing and takes nothing back.
    assert ledger.report(TapCounts(a, "m", 20, 0, {"too_large": 1})) == (0, {})


def test_samples_sent_but_never_received_are_counted_as_lost() -> None:
    ledger = TapLedger()
    key = b"k" * 8
    for _ in range(7):
        ledger.received("m", key)
    assert ledger.report(TapCounts(key, "m", 10, 10, {})) == (10, {LOST_IN_TRANSIT: 3})
    ledger.received("m", key)
    assert ledger.report(TapCounts(key, "m", 11, 11, {})) == (1, {})  # still 3 lost in all


def test_the_ledger_forgets_the_least_recent_process_beyond_its_bound() -> None:
    ledger = TapLedger(max_processes=3)
    for i in range(10):
        ledger.report(TapCounts(bytes([i]) * 8, "m", 1, 0, {}))
    assert len(ledger) == 3


# -- the sink against real sockets -----------------------------------------------------


def test_without_a_sidecar_samples_are_dropped_and_counted_never_raised(
    socket_path: str, closing: list[Any]
) -> None:
    clock = Clock(100.0)
    sink = sink_to(f"unix://{socket_path}", closing, clock=clock)
    for _ in range(5):
        assert not sink.submit(Sample([b"{}"]))
    assert sink.counts.dropped == {SINK_UNAVAILABLE: 5}
    # The sidecar comes up: the sink reconnects at the next retry, not on every sample.
    sock = receiver(socket_path, closing)
    assert not sink.submit(Sample([b"{}"]))
    clock.now += 1.0
    assert sink.submit(Sample([b"{}"]))
    assert len([d for d in receive_all(sock) if d[4:5] == b"S"]) == 1


def test_a_sidecar_that_restarts_is_found_again(socket_path: str, closing: list[Any]) -> None:
    clock = Clock(100.0)
    sock = receiver(socket_path, closing)
    sink = sink_to(f"unix://{socket_path}", closing, clock=clock)
    assert sink.submit(Sample([b"{}"]))
    sock.close()
    os.unlink(socket_path)
    assert not sink.submit(Sample([b"{}"]))
    receiver(socket_path, closing)
    clock.now += 1.0
    assert sink.submit(Sample([b"{}"]))
    assert sink.counts.dropped == {SINK_UNAVAILABLE: 1}


def test_a_sidecar_that_does_not_read_fills_the_buffer_and_samples_are_dropped_as_busy(
    socket_path: str, closing: list[Any]
) -> None:
    receiver(socket_path, closing, receive_buffer=4096)
    sink = sink_to(f"unix://{socket_path}", closing)
    body = [b"x" * 2000]
    results = [sink.submit(Sample(body)) for _ in range(2000)]
    assert results[0]
    assert not all(results)
    assert sink.counts.dropped[SINK_BUSY] == results.count(False)


def test_a_body_too_large_for_one_udp_datagram_is_dropped_as_too_large(
    closing: list[Any],
) -> None:
    sock = bind(TapAddress.parse("udp://127.0.0.1:0"))
    closing.append(sock)
    sink = sink_to(f"udp://127.0.0.1:{sock.getsockname()[1]}", closing)
    assert not sink.submit(Sample([b"x" * 70_000]))
    assert sink.counts.dropped == {"too_large": 1}
    assert sink.submit(Sample([b"x" * 1_000]))


def test_a_sink_refuses_a_baseline_or_extractor_beside_it(baseline: Baseline) -> None:
    with pytest.raises(ValueError, match="sidecar"):
        SkewMiddleware(Starlette(), sink="unix:///tmp/x.sock", baseline=baseline)
    with pytest.raises(ValueError, match="baseline"):
        SkewMiddleware(Starlette())


# -- the whole path: app with a tap -> sidecar ------------------------------------------


async def predict(request: Request) -> Response:
    row = orjson.loads(await request.body())
    return Response(orjson.dumps({"predictions": [row["x"] / 100]}), media_type="application/json")


def value(app: Sidecar, name: str, **labels: str) -> float | None:
    return app.registry.get_sample_value(name, labels)


def test_samples_tapped_in_the_app_are_checked_and_counted_by_the_sidecar(
    baseline: Baseline, socket_path: str
) -> None:
    sidecar = Sidecar({"default": baseline}, taps=[f"unix://{socket_path}"], window_seconds=3600)
    app = SkewMiddleware(
        Starlette(routes=[Route("/predict", predict, methods=["POST"])]),
        sink=f"unix://{socket_path}",
        max_samples_per_second=1e6,
    )
    with serve(sidecar), serve(app) as url, httpx.Client(base_url=url) as client:
        for i in range(50):
            response = client.post("/predict", content=orjson.dumps({"x": float(i)}))
            assert response.json() == {"predictions": [i / 100]}
        client.post("/predict", content=b"{broken")
        assert eventually(lambda: value(sidecar, "skew_rows_checked_total", model="default") == 50)
        app.monitor.report_counts(force=True)  # type: ignore[union-attr]
        assert eventually(lambda: value(sidecar, "skew_requests_seen_total", model="default") == 51)
        labels = {"model": "default"}
        assert value(sidecar, "skew_requests_sampled_total", **labels) == 51
        assert value(sidecar, "skew_samples_dropped_total", reason="invalid_json", **labels) == 1
        assert value(sidecar, "skew_feature_values_total", feature="score", **labels) == 50
        # Sent on the event loop: in batches, fewer datagrams than samples.
        batches = value(sidecar, "skew_sidecar_tap_datagrams_total", result="batch")
        assert 1 <= batches < 51
        assert value(sidecar, "skew_sidecar_tap_datagrams_total", result="sample") == 0


@pytest.mark.parametrize(
    "workers", [uvicorn_workers, gunicorn_workers], ids=["uvicorn", "gunicorn"]
)
def test_with_two_worker_processes_the_sidecar_counts_every_request_once(
    baseline: Baseline, socket_path: str, workers: Workers
) -> None:
    sidecar = Sidecar({"default": baseline}, taps=[f"unix://{socket_path}"], window_seconds=3600)
    env = {**os.environ, "SKEW_TEST_SINK": f"unix://{socket_path}"}
    n = 200
    pids: set[str] = set()
    with serve(sidecar):
        # Leaving the block stops the workers: they report their last counts as they stop.
        with workers("tests.apps.tapped:build", env) as url:
            with httpx.Client(base_url=url) as client:
                # Both workers up before the count starts: a worker still importing
                # would leave every request to the other.
                assert eventually(lambda: _pids(client, pids) == 2, 60), (
                    f"two workers: {len(pids)} worker(s) answered"
                )
                pids.clear()
                for i in range(n):
                    # A new connection each time, so both workers get requests.
                    body = orjson.dumps({"x": float(i % 100)})
                    close = {"connection": "close"}
                    response = client.post("/predict", content=body, headers=close)
                    pids.add(response.headers["x-pid"])
            assert eventually(
                lambda: value(sidecar, "skew_rows_checked_total", model="default") == n, 10
            )
        assert eventually(lambda: value(sidecar, "skew_requests_seen_total", model="default") == n)
    assert len(pids) == 2, f"requests reached {len(pids)} worker(s)"
    assert value(sidecar, "skew_sidecar_tap_processes") == 2
    assert value(sidecar, "skew_requests_sampled_total", model="default") == n
    assert value(sidecar, "skew_feature_values_total", model="default", feature="x") == n


def _pids(client: httpx.Client, pids: set[str]) -> int:
    """Adds the pid of the worker that answers a new connection; the number seen."""
    try:
        response = client.get("/pid", headers={"connection": "close"})
    except httpx.TransportError:
        return len(pids)
    if response.status_code == 200:
        pids.add(response.text.strip())
    return len(pids)
