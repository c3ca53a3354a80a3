"""A sampled request's `receive` and `send`, as the app awaits them: everything the
server's own awaitables do reaches the app unchanged (suspending, values sent in,
cancellation, close, exceptions), with the compiled tap (sidecar/_tap.c) and the
Python one (`test_gate.py` runs this file again in pure Python)."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Generator, Iterator, Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.types import Message, Receive, Scope, Send

from sidecar import Baseline, ProfileOptions
from sidecar.compiled import pure_python_requested
from sidecar.middleware import SkewMiddleware, Tap, _Tap

BODY = b'{"x": 1}'


@pytest.fixture
def baseline() -> Baseline:
    """With a prediction column: responses are tapped too (`send` is wrapped)."""
    rows = [{"x": float(i % 10), "score": i % 3 / 3} for i in range(200)]
    return Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"})))


def test_ci_builds_the_compiled_tap() -> None:
    import os

    if not os.environ.get("CI"):
        pytest.skip("outside CI, a machine without a compiler runs the Python tap")
    assert Tap is not _Tap or pure_python_requested()


def tapped(baseline: Baseline, app: Any) -> Any:
    """`app` behind the middleware, every request sampled, samples left queued."""
    mw = SkewMiddleware(app, baseline=baseline, registry=CollectorRegistry(), sample_rate=1.0)
    mw.monitor.started = True  # no worker thread to stop
    return mw


def scope() -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/predict", "headers": []}


async def reply(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def queued(mw: Any) -> list[tuple[Any, ...]]:
    return [(tuple(s.request), s.status) for s in mw.monitor._queue]


def test_a_receive_that_suspends_hands_the_app_its_message(baseline: Baseline) -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())
        await reply(send)

    async def receive() -> Message:
        for _ in range(3):
            await asyncio.sleep(0)  # the body is not there yet
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.set_result, BODY)
        return {"type": "http.request", "body": await future}

    mw = tapped(baseline, app)
    asyncio.run(mw(scope(), receive, _ignore))
    assert seen == [{"type": "http.request", "body": BODY}]
    assert queued(mw) == [((BODY,), 200)]


async def _ignore(message: Message) -> None:
    pass


def test_a_receive_returning_a_future_is_awaited_as_await_would(baseline: Baseline) -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())
        await reply(send)

    def receive() -> asyncio.Future[Message]:
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(
            future.set_result, {"type": "http.request", "body": BODY}
        )
        return future

    mw = tapped(baseline, app)
    asyncio.run(mw(scope(), receive, _ignore))
    assert seen == [{"type": "http.request", "body": BODY}]
    assert queued(mw) == [((BODY,), 200)]


def test_cancelling_the_app_reaches_the_servers_receive(baseline: Baseline) -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    async def receive() -> Message:
        try:
            await asyncio.Event().wait()  # a body that never comes
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        raise AssertionError("not reached")

    async def main() -> None:
        task = asyncio.ensure_future(mw(scope(), receive, _ignore))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    mw = tapped(baseline, app)
    asyncio.run(main())
    assert events == ["cancelled"]
    assert queued(mw) == []
    assert mw.monitor.counts.errors == {}


def test_an_exception_thrown_in_may_be_answered_with_a_message(baseline: Baseline) -> None:
    """The server's receive catches what is thrown into it and returns: the app gets
    that message, and the tap looks at it as at any other."""
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())
        await reply(send)

    @types.coroutine
    def suspend() -> Generator[str, None, None]:
        yield "waiting"

    async def receive() -> Message:
        try:
            await suspend()
        except KeyError:
            return {"type": "http.request", "body": BODY}
        return {"type": "http.disconnect"}

    mw = tapped(baseline, app)
    coro = mw(scope(), receive, _ignore)
    assert coro.send(None) == "waiting"  # the server's yield, passed through
    with pytest.raises(StopIteration):
        coro.throw(KeyError("x"))
    assert seen == [{"type": "http.request", "body": BODY}]
    assert queued(mw) == [((BODY,), 200)]


def test_closing_the_app_closes_the_servers_receive(baseline: Baseline) -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    @types.coroutine
    def suspend() -> Generator[None, None, None]:
        yield

    async def receive() -> Message:
        try:
            await suspend()
        finally:
            events.append("closed")
        return {"type": "http.request", "body": BODY}

    mw = tapped(baseline, app)
    coro = mw(scope(), receive, _ignore)
    coro.send(None)
    coro.close()
    assert events == ["closed"]
    assert queued(mw) == []


def test_values_sent_in_reach_the_servers_receive(baseline: Baseline) -> None:
    @types.coroutine
    def ask() -> Generator[str, bytes, bytes]:
        return (yield "body?")

    async def receive() -> Message:
        return {"type": "http.request", "body": await ask()}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await reply(send)

    mw = tapped(baseline, app)
    coro = mw(scope(), receive, _ignore)
    assert coro.send(None) == "body?"
    with pytest.raises(StopIteration):
        coro.send(BODY)
    assert queued(mw) == [((BODY,), 200)]


def test_what_the_servers_receive_and_send_raise_reaches_the_app(baseline: Baseline) -> None:
    raised = [OSError("receive"), OSError("send")]
    caught: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for call in (receive, lambda: send({"type": "http.response.start", "status": 200})):
            try:
                await call()
            except OSError as exc:
                caught.append(exc)

    async def receive() -> Message:
        raise raised[0]

    async def send(message: Message) -> None:
        raise raised[1]

    mw = tapped(baseline, app)
    asyncio.run(mw(scope(), receive, send))
    assert caught == raised  # the same objects
    assert mw.monitor.counts.errors == {}


class Message_(Mapping[str, Any]):
    """A message that is a Mapping but not a dict: read through its own methods."""

    def __init__(self, **items: Any) -> None:
        self.items_ = items

    def __getitem__(self, key: str) -> Any:
        return self.items_[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.items_)

    def __len__(self) -> int:
        return len(self.items_)


def test_messages_that_are_mappings_are_read_too(baseline: Baseline) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(Message_(type="http.response.start", status=201, headers=[]))
        await send(Message_(type="http.response.body", body=b"{}"))

    async def receive() -> Any:
        return Message_(type="http.request", body=BODY)

    mw = tapped(baseline, app)
    asyncio.run(mw(scope(), receive, _ignore))
    assert queued(mw) == [((BODY,), 201)]


class Untrue:
    """A value whose truth cannot be told."""

    def __bool__(self) -> bool:
        raise ValueError("no truth")


@pytest.mark.parametrize(
    "message",
    [
        {"type": "http.request", "body": 5},  # no len()
        {"body": BODY},  # no type
        {"type": "http.request", "body": BODY, "more_body": Untrue()},
    ],
    ids=["body-without-len", "no-type", "more-body-untrue"],
)
def test_a_message_the_tap_cannot_read_is_counted_and_passed_on(
    baseline: Baseline, message: Message
) -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())

    async def receive() -> Message:
        return message

    mw = tapped(baseline, app)
    asyncio.run(mw(scope(), receive, _ignore))
    assert seen == [message]
    assert seen[0] is message
    assert mw.monitor.counts.errors == {"worker": 1}


def test_a_sampled_request_holds_no_reference_once_its_sample_is_gone(
    baseline: Baseline,
) -> None:
    """Counted by reference, with the cyclic GC off: a leak in the compiled tap (or a
    cycle through it) keeps the body, the messages and the server's callables alive."""
    import gc
    import sys

    body = b'{"x": 2}' * 3
    message = {"type": "http.request", "body": body}
    response = {"type": "http.response.body", "body": b"{}"}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send(response)

    async def receive() -> Message:
        return message

    mw = tapped(baseline, app)
    before = [sys.getrefcount(o) for o in (body, message, response, receive, _ignore)]
    gc.disable()
    try:
        for _ in range(50):
            coro = mw(scope(), receive, _ignore)
            with pytest.raises(StopIteration):
                coro.send(None)
        assert len(mw.monitor._queue) == 50
        mw.monitor._queue.clear()
        after = [sys.getrefcount(o) for o in (body, message, response, receive, _ignore)]
    finally:
        gc.enable()
    assert after == before


def direct_tap(baseline: Baseline, receive: Any, limit: Any = 1 << 20) -> Any:
    mw = tapped(baseline, None)
    target = next(iter(mw.targets.values()))
    return Tap(mw.monitor, target.queue, True, limit, scope(), receive, _ignore), mw


@pytest.mark.parametrize("kind", ["coroutine", "future"])
def test_awaiting_a_receive_twice_raises_as_a_coroutine_would(
    baseline: Baseline, kind: str
) -> None:
    async def coroutine() -> Message:
        return {"type": "http.request", "body": BODY}

    def future() -> asyncio.Future[Message]:
        done = asyncio.get_running_loop().create_future()
        done.set_result({"type": "http.request", "body": BODY})
        return done

    tap, _ = direct_tap(baseline, coroutine if kind == "coroutine" else future)

    async def twice() -> None:
        waiting = tap.receive()
        assert await waiting == {"type": "http.request", "body": BODY}
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            await waiting

    asyncio.run(twice())


def test_the_receive_awaitable_cannot_be_made_from_python(baseline: Baseline) -> None:
    async def receive() -> Message:
        return {"type": "http.request", "body": BODY}

    tap, _ = direct_tap(baseline, receive)
    waiting = tap.receive()
    with pytest.raises(TypeError):
        type(waiting)()
    waiting.close()


def test_a_receive_written_as_a_generator_coroutine_is_awaited(baseline: Baseline) -> None:
    """`@types.coroutine` generators are awaitable as they are (older servers and
    libraries still write them)."""

    @types.coroutine
    def receive() -> Generator[None, None, Message]:
        yield
        return {"type": "http.request", "body": BODY}

    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())
        await reply(send)

    mw = tapped(baseline, app)
    coro = mw(scope(), receive, _ignore)
    coro.send(None)
    with pytest.raises(StopIteration):
        coro.send(None)
    assert seen == [{"type": "http.request", "body": BODY}]
    assert queued(mw) == [((BODY,), 200)]


@pytest.mark.parametrize("limit", [float("inf"), 2**70, 1000.5, 8, 7.5, 7, -(2**70)])
def test_a_body_limit_of_any_number_compares_as_the_number(
    baseline: Baseline, limit: float
) -> None:
    async def receive() -> Message:
        return {"type": "http.request", "body": BODY}

    tap, mw = direct_tap(baseline, receive, limit)

    async def exchange() -> None:
        await tap.receive()
        await tap.send({"type": "http.response.start", "status": 200, "headers": []})
        await tap.send({"type": "http.response.body", "body": b"{}"})

    asyncio.run(exchange())
    kept = len(BODY) <= limit
    assert queued(mw) == ([((BODY,), 200)] if kept else [])
    assert mw.monitor.counts.dropped == ({} if kept else {"too_large": 1})
    assert mw.monitor.counts.errors == {}


class UnreadableHeaders(Message_):
    def get(self, key: str, default: Any = None) -> Any:
        if key == "headers":
            raise ValueError("no headers")
        return super().get(key, default)


def test_a_response_start_whose_headers_cannot_be_read_keeps_its_status(
    baseline: Baseline,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(UnreadableHeaders(type="http.response.start", status=201))
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> Message:
        return {"type": "http.request", "body": BODY}

    mw = tapped(baseline, app)
    asyncio.run(mw(scope(), receive, _ignore))
    assert queued(mw) == [((BODY,), 201)]
    assert mw.monitor.counts.errors == {"worker": 1}


def test_a_tap_that_cannot_be_built_is_counted_and_the_app_runs_untapped(
    baseline: Baseline,
) -> None:
    """A scope without headers (not ASGI, but a server's bug must not become the
    app's): counted once as a worker error, the app called once, nothing queued."""
    calls: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(await receive())
        await reply(send)

    async def receive() -> Message:
        return {"type": "http.request", "body": BODY}

    mw = tapped(baseline, app)
    bare = {"type": "http", "method": "POST", "path": "/predict"}
    asyncio.run(mw(bare, receive, _ignore))
    assert calls == [{"type": "http.request", "body": BODY}]
    assert queued(mw) == []
    assert mw.monitor.counts.errors == {"worker": 1}
