"""A reverse proxy to an upstream model server, as an ASGI app.

`skew-sidecar serve --upstream http://model:8080` puts the sidecar in front of a model
server that cannot be tapped in-process (TF Serving, Triton, TorchServe): every request
is forwarded as it arrives and the response streamed back as it comes (status, headers
and body unchanged, content encoding included). The sidecar taps a sampled exchange
with the middleware's own tap around `forward`. Needs httpx (the `[proxy]` extra).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Receive, Scope, Send

# Connection-level headers a proxy must not forward (RFC 9110 7.6.1), plus Host, which
# names the upstream now, and Content-Length, which httpx sets from what it sends.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length"}
INSTALL_HINT = "--upstream needs httpx: pip install 'skew-sidecar[proxy]'"


class UpstreamError(Exception):
    """The upstream could not be reached or failed mid-response."""


class Proxy:
    """Forwards one ASGI HTTP exchange to `upstream`; see the module docstring."""

    def __init__(self, upstream: str, *, timeout: float = 60.0) -> None:
        try:
            import httpx
        except ImportError:
            raise ValueError(INSTALL_HINT) from None
        self.upstream = upstream.rstrip("/")
        self._httpx = httpx
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,  # the client decides, as without the proxy
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward the exchange; UpstreamError when nothing could be sent to the client
        yet (the caller answers 502), re-raised mid-response (the server aborts it)."""
        httpx = self._httpx
        url = self.upstream + scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k not in _NOT_FORWARDED]
        client = scope.get("client")
        if client:
            headers.append((b"x-forwarded-for", client[0].encode("latin-1")))

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client left: upstream sees a short body
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        request = self.client.build_request(scope["method"], url, headers=headers, content=body())
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {self.upstream}: {type(exc).__name__}: {exc}") from exc
        try:
            out_headers = [
                (k.lower(), v)
                for k, v in response.headers.raw
                if k.lower() not in HOP_BY_HOP and k.lower() != b"content-length"
            ]
            length = response.headers.get("content-length")
            if length is not None:
                out_headers.append((b"content-length", length.encode("latin-1")))
            await send(
                {"type": "http.response.start", "status": response.status_code,
                 "headers": out_headers}
            )  # fmt: skip
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


def reply_502(problem: str) -> list[dict[str, Any]]:
    body = f"bad gateway: {problem}".encode()
    return [
        {
            "type": "http.response.start",
            "status": 502,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        },
        {"type": "http.response.body", "body": body},
    ]
