"""Safe by default: the API key (Bearer, compared in constant time) and the request-body limit.

Both are plain ASGI middleware, so they apply before FastAPI reads a body: an oversized upload is
refused from its ``Content-Length`` (or, sent chunked, as soon as it passes the limit) without being
held in memory. The web page and its static files are public; everything under ``/v1`` needs the key
when one is set. Browsers cannot set headers on a WebSocket, so ``/v1/realtime`` also takes the key as
the subprotocol ``openai-insecure-api-key.KEY``, as OpenAI's own browser clients send it.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import WebSocket
from fastapi.responses import JSONResponse

from emoslm.serve.wire import error_body

KEY_PROTOCOL = "openai-insecure-api-key."


def key_matches(presented: str | None, key: str | None) -> bool:
    if key is None:
        return True
    return presented is not None and hmac.compare_digest(presented.encode(), key.encode())


def bearer(headers: dict[bytes, bytes] | Any, name: bytes = b"authorization") -> str | None:
    value = headers.get(name) if isinstance(headers, dict) else headers.get(name.decode())
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value and value.lower().startswith("bearer "):
        return value[7:].strip()
    return None


def authorized_ws(ws: WebSocket, key: str | None) -> bool:
    if key is None:
        return True
    offered = ws.scope.get("subprotocols") or []
    from_protocol = next((p[len(KEY_PROTOCOL):] for p in offered if p.startswith(KEY_PROTOCOL)), None)
    return key_matches(bearer(ws.headers) or from_protocol, key)


async def deny(ws: WebSocket, status: int, message: str, code: str) -> None:
    """Refuse a WebSocket before accepting it: an HTTP answer where the server allows one, else a close."""
    if "websocket.http.response" in (ws.scope.get("extensions") or {}):
        await ws.send_denial_response(JSONResponse(error_body(status, message, code), status_code=status))
    else:
        await ws.close(code=1008 if status in (401, 403) else 1013, reason=message[:120])


class Guard:
    """ASGI middleware: API key on ``/v1`` HTTP routes, and the body-size limit on every request."""

    def __init__(self, app: Any, api_key: str | None, max_body: int) -> None:
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if scope["path"].startswith("/v1") and not key_matches(bearer(headers), self.api_key):
            return await _answer(send, 401, "missing or wrong API key: send Authorization: Bearer KEY",
                                 "invalid_api_key")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _answer(send, 413, f"the request body is {int(length) / 1e6:.1f} MB, over the "
                                            f"{self.max_body / 1e6:.0f} MB limit", "request_too_large")
        seen, started = 0, False

        async def counted_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:
            if not started:
                await _answer(send, 413, f"the request body is over the {exc.limit / 1e6:.0f} MB limit",
                              "request_too_large")


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


async def _answer(send: Any, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(status, message, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
