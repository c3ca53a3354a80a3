"""bench/latency_ab.py: the generator picks A or B by phase, and each B phase's
latencies are compared with the A phases on either side."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.bench_modules import bench_modules


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    with bench_modules("serving_load", "serving_ab", "latency_ab") as modules:
        yield modules["latency_ab"]


def schedule(lab: Any, points: list[tuple[float, float]], end: float) -> Any:
    """A run whose requests were scheduled at `at` seconds with `latency` seconds each."""
    return lab.sl.Schedule(
        start=100.0,
        end=100.0 + end,
        scheduled=[100.0 + at for at, _ in points],
        latencies=[latency for _, latency in points],
        lag_p99_ms=0.0,
        missing=0,
        last_done=100.0 + end,
    )


def test_latencies_are_filed_by_the_phase_they_were_scheduled_in_after_the_skip(
    lab: Any,
) -> None:
    points = [(0.1, 9.0), (0.6, 1.0), (0.9, 2.0), (1.2, 9.0), (1.7, 3.0), (2.55, 4.0)]
    filed = lab.phases(schedule(lab, points, end=3.0), phase=1.0, skip=0.5)
    assert [p.app for p in filed] == [0, 1, 0]
    # Those in the first half second of a phase (0.1, 1.2) are the skipped ones.
    assert [p.latencies for p in filed] == [[1.0, 2.0], [3.0], [4.0]]


def test_each_b_phase_is_compared_with_the_mean_of_the_a_phases_around_it(lab: Any) -> None:
    def phase(app: int, slow: float) -> Any:
        # 200 latencies: p50 is the 101st (1 ms), p99 the 199th (`slow`).
        return lab.PhaseLatency(app, sorted([0.001] * 198 + [slow, slow]))

    filed = [phase(0, 0.004), phase(1, 0.006), phase(0, 0.002), phase(1, 0.003), phase(0, 0.004)]
    first, second = lab.pairs(filed, first=0, minimum=100)
    assert first.p99 == pytest.approx(0.006 / 0.003)
    assert first.p50 == pytest.approx(1.0)
    assert first.a_p99_ms == pytest.approx(3.0)
    assert second.p99 == pytest.approx(0.003 / 0.003)
    # Pooled quantiles take each A phase once (the one before).
    assert first.a is filed[0].latencies and second.a is filed[2].latencies
    assert lab.pairs(filed, first=2, minimum=100) == [second]  # the warm-up is left out
    assert lab.pairs(filed, first=0, minimum=201) == []  # too few latencies for a p99


def test_the_requests_of_a_and_b_differ_only_in_the_header_naming_the_copy(lab: Any) -> None:
    request_for = lab.request_for(8000, b'{"x": 1}', phase=2.0)
    a, b = request_for(0.5), request_for(2.5)
    assert request_for(4.1) == a and request_for(7.9) == b
    assert len(a) == len(b)
    assert a.replace(b"X-Ab: a", b"X-Ab: b") == b
    assert a.startswith(b"POST /predict HTTP/1.1\r\nX-Ab: a\r\n")
    assert a.endswith(b'Content-Length: 8\r\n\r\n{"x": 1}')


def test_the_switch_sends_a_request_to_the_copy_its_first_header_names(lab: Any) -> None:
    served: list[str] = []

    def app(name: str) -> Any:
        async def call(scope: Any, receive: Any, send: Any) -> None:
            served.append(name)

        return call

    switch = lab.HeaderSwitch((app("a"), app("b")))

    async def drive() -> list[str]:
        sent: list[str] = []
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> Any:
            return next(messages)

        async def send(message: Any) -> None:
            sent.append(message["type"])

        await switch({"type": "lifespan"}, receive, send)
        for headers in (
            [(b"x-ab", b"b"), (b"host", b"h")],
            [(b"x-ab", b"a")],
            [(b"host", b"h"), (b"x-ab", b"b")],  # not first: A
            [],
        ):
            await switch({"type": "http", "headers": headers}, receive, send)
        await switch({"type": "http"}, receive, send)  # no headers at all
        return sent

    assert asyncio.run(drive()) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert served == ["b", "a", "a", "a", "a"]


def test_the_open_loop_records_each_request_with_its_schedule_and_the_request_it_sent(
    lab: Any,
) -> None:
    """A real loopback server that answers A's requests at once and B's after 20 ms."""
    seen: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                copy = head.split(b"X-Ab: ")[1][:1]
                seen.append(copy)
                if copy == b"b":
                    await asyncio.sleep(0.02)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def run() -> Any:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        request_for = lab.request_for(port, b"{}", phase=0.25)
        try:
            return await lab.sl.on_schedule(port, request_for, 200.0, 1.0, 4, 0.0)
        finally:
            server.close()
            for writer in writers:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            await server.wait_closed()

    run = asyncio.run(run())
    assert run.missing == 0
    # One request every 5 ms for a second (the schedule's float steps may fit one more).
    assert len(run.latencies) == len(run.scheduled) == len(seen) in (200, 201)
    filed = lab.phases(run, phase=0.25, skip=0.0)
    assert [p.app for p in filed] == [0, 1, 0, 1][: len(filed)]
    assert all(49 <= len(p.latencies) <= 51 for p in filed[:4])
    # The copy each request named is the one its phase is filed under.
    assert seen.count(b"b") == sum(len(p.latencies) for p in filed if p.app == 1)
    # B's answers took 20 ms more: the latencies say so, phase by phase.
    for p in filed[:4]:
        assert (p.quantile(0.5) >= 0.02) if p.app else (p.quantile(0.5) < 0.015)
