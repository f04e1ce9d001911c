"""Safe by default: who may talk to the server (``Host`` and ``Origin``), the API key (Bearer, compared in
constant time) and the request-body limit.

All are plain ASGI middleware, so they apply before FastAPI reads a body: an oversized upload is
refused from its ``Content-Length`` (or, sent chunked, as soon as it passes the limit) without being
held in memory. The web page and its static files are public; everything under ``/v1`` needs the key
when one is set. Browsers cannot set headers on a WebSocket, so ``/v1/realtime`` also takes the key as
the subprotocol ``openai-insecure-api-key.KEY``, as OpenAI's own browser clients send it.

``Host`` and ``Origin`` are checked on every HTTP request and WebSocket, key or not: a server on
127.0.0.1 without a key is otherwise open to any web page the user visits (a cross-site WebSocket, or DNS
rebinding: ``rebind.evil.example`` resolving to 127.0.0.1). ``Host`` must name the bound address or
localhost (any name when bound to all interfaces, where a key is required); an ``Origin``, when a browser
sends one, must be the page's own server, a localhost page, or one given with ``--allow-origin``.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import WebSocket
from fastapi.responses import JSONResponse

from emoslm.serve.wire import error_body

KEY_PROTOCOL = "openai-insecure-api-key."
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
ANY_INTERFACE = frozenset({"0.0.0.0", "::", ""})


def host_of(netloc: str) -> str:
    """``"[::1]:8000"`` → ``"::1"``, ``"Example.com:80"`` → ``"example.com"``."""
    try:
        return (urlsplit("//" + netloc.strip()).hostname or "").lower()
    except ValueError:
        return "\x00"  # unparseable: matches nothing


@dataclass(frozen=True)
class Allowed:
    """Who may talk to the server: the names it is reached by, and the web pages that may call it."""

    bound: str = "127.0.0.1"
    origins: tuple[str, ...] = ()  # full origins (``https://app.example``) or ``*``

    @staticmethod
    def check_origin(origin: str) -> str:
        """An ``--allow-origin`` value, normalised; ``ValueError`` with one line when it is not an origin."""
        if origin == "*":
            return origin
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ValueError(f"--allow-origin {origin!r} is not an origin; give scheme://host[:port], "
                             "e.g. https://app.example.com, or *")
        return f"{parts.scheme}://{parts.netloc.lower()}"

    def host_ok(self, host: str | None) -> bool:
        if host is None or self.bound in ANY_INTERFACE:
            return True
        name = host_of(host)
        return name in LOCAL_NAMES or name == host_of(self.bound) or any(
            host_of(urlsplit(o).netloc) == name for o in self.origins if o != "*")

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True  # not a browser page (curl, SDKs): the key, when set, is what guards
        origin = origin.strip().lower()
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False  # "null" (a sandboxed or file: page) and anything odd
        if "*" in self.origins or origin in self.origins or parts.hostname in LOCAL_NAMES:
            return True
        return host is not None and parts.netloc == host.strip().lower()  # the page this server served

    def refusal(self, headers: dict[bytes, bytes]) -> str | None:
        """Why a request with these headers is refused, or None."""
        host = _header(headers, b"host")
        if not self.host_ok(host):
            return (f"the Host {host[:80]!r} is not this server's (a DNS-rebinding guard); reach it as localhost "
                    "or its bound address, or start it with --allow-origin for a proxy's name")
        origin = _header(headers, b"origin")
        if not self.origin_ok(origin, host) and not urlsplit(origin.strip()).hostname:
            return ("pages without an http(s) origin (file: or sandboxed pages send 'null') may not use this "
                    "server; serve the page over http(s) and allow it with --allow-origin")
        if not self.origin_ok(origin, host):
            return (f"web pages from {origin[:80]!r} may not use this server; start it with --allow-origin "
                    f"{origin[:80]} to allow them")
        return None


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


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
    """ASGI middleware: Host and Origin on every request and WebSocket, the API key on ``/v1`` HTTP routes,
    and the body-size limit on every request."""

    def __init__(self, app: Any, api_key: str | None, max_body: int, allowed: Allowed | None = None) -> None:
        self.app, self.api_key, self.max_body = app, api_key, max_body
        self.allowed = allowed or Allowed()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        refused = self.allowed.refusal(headers)
        if refused and scope["type"] == "websocket":
            return await _deny_ws(scope, send, refused)
        if refused:
            return await _answer(send, 403, refused, "forbidden_origin")
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
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


async def _deny_ws(scope: dict[str, Any], send: Any, message: str) -> None:
    """Refuse a WebSocket handshake with 403 (as an HTTP answer where the server can send one)."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = json.dumps(error_body(403, message, "forbidden_origin")).encode()
        await send({"type": "websocket.http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})


async def _answer(send: Any, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(status, message, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
