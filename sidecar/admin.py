"""Operator endpoints: a bearer token in front of them, and the baseline reload call.

`/metrics`, `/skew` and `POST /admin/reload` show request data or change what is checked,
so they can be kept to operators: `protected(app, token)` answers 401 unless the request
carries `Authorization: Bearer <token>` (compared in constant time). The sidecar can also
serve them on a port of their own (`--admin-port`, see serve.py); in an app, mount
`protected(metrics_app(), token)` and give `SkewMiddleware(debug_token=...)`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Mapping

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from .worker import Monitor

__all__ = ["authorized", "protected", "reload_app"]

logger = logging.getLogger("sidecar")


def authorized(scope: Scope, token: str) -> bool:
    """True when the request carries `Authorization: Bearer <token>`."""
    expected = b"bearer " + token.encode()
    for key, value in scope.get("headers") or ():
        if key.lower() == b"authorization":
            given = value.strip()
            # Constant time: the token's bytes must not leak through the answer's timing.
            return hmac.compare_digest(given[:7].lower() + given[7:], expected)
    return False


async def unauthorized(send: Send) -> None:
    body = b"a bearer token is required: Authorization: Bearer <token>"
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"www-authenticate", b'Bearer realm="skew-sidecar"'),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def protected(app: ASGIApp, token: str | None) -> ASGIApp:
    """`app` behind a bearer token (None or empty: `app` itself, unprotected)."""
    if not token:
        return app
    if not token.isprintable() or " " in token:
        raise ValueError("the bearer token must be printable ASCII without spaces")

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not authorized(scope, token):
            await unauthorized(send)
            return
        await app(scope, receive, send)

    return guarded


def reload_app(monitors: Mapping[str, Monitor]) -> ASGIApp:
    """POST: load every watched baseline file now, in a thread. 200 with what each
    model will check against from its next window; 422 if a file does not load (that
    model keeps its baseline; the reason is in the answer and the log)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _json(send, 405, {"error": "POST to reload the baselines"}, [(b"allow", b"POST")])
            return
        loop = asyncio.get_running_loop()
        results = {}
        failed = False
        for name, monitor in monitors.items():
            watched = monitor.baseline_file
            if watched is None:
                results[name] = {"status": "not_watched", "baseline_hash": monitor.baseline_hash}
                continue
            baseline, problem = await loop.run_in_executor(None, watched.load)
            if baseline is not None:
                monitor.replace_baseline(baseline)
                results[name] = {"status": "next_window", "baseline_hash": baseline.baseline_hash}
            elif problem:
                failed = True
                logger.warning(
                    "model %s: the new baseline in %s is refused, still checking against "
                    "%s: %s", name, watched.path, monitor.baseline_hash, problem,
                )  # fmt: skip
                results[name] = {
                    "status": "refused",
                    "error": problem,
                    "baseline_hash": monitor.baseline_hash,
                }
            else:
                results[name] = {"status": "unchanged", "baseline_hash": monitor.baseline_hash}
        await _json(send, 422 if failed else 200, {"models": results})

    return app


async def _json(
    send: Send, status: int, data: object, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = orjson.dumps(data)
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": out + (headers or [])})
    await send({"type": "http.response.body", "body": body})
