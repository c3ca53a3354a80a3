"""Drive ASGI apps in-process, message by message, with no HTTP client library."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message


@dataclass
class Exchange:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    messages: list[Message] = field(default_factory=list)


async def request(
    app: ASGIApp,
    method: str = "POST",
    path: str = "/predict",
    chunks: Sequence[bytes] = (b"",),
    headers: Sequence[tuple[bytes, bytes]] = ((b"content-type", b"application/json"),),
    disconnect_after: int | None = None,
) -> Exchange:
    """One HTTP exchange; the body arrives in `chunks` (more_body on all but the last).

    With `disconnect_after=k`, the client sends k chunks then disconnects.
    """
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    incoming: list[Message] = []
    limit = len(chunks) if disconnect_after is None else disconnect_after
    for i, chunk in enumerate(chunks[:limit]):
        incoming.append({"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1})
    if disconnect_after is not None:
        incoming.append({"type": "http.disconnect"})
    done = asyncio.Event()

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    out = Exchange()

    async def send(message: Message) -> None:
        out.messages.append(message)
        if message["type"] == "http.response.start":
            out.status = message["status"]
            out.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            out.body += message.get("body", b"")
            if not message.get("more_body", False):
                done.set()

    await app(scope, receive, send)
    done.set()
    return out


class Lifespan:
    """Runs an app's lifespan protocol: `await startup()`, then `await shutdown()`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> Message:
        async def receive() -> Message:
            return await self.inbox.get()

        async def send(message: Message) -> None:
            await self.outbox.put(message)

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self.task = asyncio.create_task(self.app(scope, receive, send))
        await self.inbox.put({"type": "lifespan.startup"})
        return await self.outbox.get()

    async def shutdown(self) -> Message:
        await self.inbox.put({"type": "lifespan.shutdown"})
        message = await self.outbox.get()
        if self.task is not None:
            await self.task
        return message
