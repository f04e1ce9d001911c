"""The one app factory: ``create_app(runtime)`` serves the agent in OpenAI's shapes and the web page.

Routes: ``POST /v1/chat/completions`` (audio in and out, SSE), ``POST /v1/audio/speech``,
``POST /v1/audio/transcriptions``, ``GET /v1/models``, ``WS /v1/realtime``, ``GET /`` (the web page:
talk to the agent, watch the emotion trajectory) and ``GET /health``. Every error a client can cause is
answered in OpenAI's error shape with one line saying what is wrong; nothing is answered with a
traceback. ``serve(…)`` runs it under uvicorn and shuts down cleanly (turns cancelled, models freed).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from emoslm.errors import AudioTooLong, EmoslmError
from emoslm.serve.runtime import LOOPBACK, Busy, Runtime
from emoslm.serve.security import Allowed, BodyTooLarge, Guard
from emoslm.serve.wire import APIError, error_body

WEB = Path(__file__).parent / "web"
log = logging.getLogger("uvicorn.error")  # the server's own log, in uvicorn's format


def create_app(runtime: Runtime) -> FastAPI:
    from emoslm.serve import chat, realtime, speech

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # noqa: ANN202
        yield
        runtime.close()

    app = FastAPI(title="emoslm", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.runtime = runtime
    app.add_middleware(Guard, api_key=runtime.api_key, max_body=int(runtime.limits.max_body_mb * 1e6),
                       allowed=Allowed(runtime.host, runtime.allow_origins))
    if runtime.allow_origins:  # outermost: answers the preflight of the pages allowed to call the API
        app.add_middleware(CORSMiddleware, allow_origins=list(runtime.allow_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    for router in (chat.router, speech.router, realtime.router):
        app.include_router(router)
    _handle_errors(app)
    app.mount("/static", StaticFiles(directory=WEB), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "closing" if runtime.closing else "ok", "agent": runtime.agent_spec,
                "sessions": sum(runtime.sessions.values()), "turns_waiting": runtime.turns.held}

    return app


def _handle_errors(app: FastAPI) -> None:
    def answer(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
        return JSONResponse(error_body(status, message, code, param), status_code=status)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return answer(exc.status, exc.message, exc.code, exc.param)

    @app.exception_handler(EmoslmError)
    async def user_error(_: Request, exc: EmoslmError) -> JSONResponse:
        if isinstance(exc, Busy):
            return answer(429, str(exc), "rate_limit_exceeded")
        return answer(413 if isinstance(exc, AudioTooLong) else 400, str(exc), "invalid_request")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return answer(400, "the request body is not valid JSON", "invalid_json")
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
        return answer(400, f"{where}: {first.get('msg', 'invalid value')}", "invalid_request", where)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, BodyTooLarge):
            return answer(413, f"the request body is over the {exc.__cause__.limit / 1e6:.0f} MB limit",
                          "request_too_large")
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            return answer(400, "the request body could not be read; send JSON or multipart form data",
                          "invalid_body")
        return answer(exc.status_code, str(exc.detail), None)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return answer(500, f"internal error ({type(exc).__name__}); the server log has the details", "internal_error")


def check_binding(host: str, api_key: str | None) -> None:
    """Bound beyond this machine, the server must have an API key; and a key given is never blank."""
    if api_key is not None and not api_key.strip():
        raise EmoslmError("the API key is blank: pass a real secret with --api-key KEY (or EMOSLM_API_KEY), "
                          "or leave it out on 127.0.0.1")
    if host not in LOOPBACK and not api_key:
        raise EmoslmError(f"refusing to serve on {host} without an API key: pass --api-key KEY (or set "
                          "EMOSLM_API_KEY), or bind 127.0.0.1")


def server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> Any:
    """A uvicorn server for ``app`` that ends every open stream *before* it waits for connections to close.

    Why: uvicorn waits for open responses first and only then runs the app's shutdown, so a streamed turn
    in progress held Ctrl-C for 15–38 s and was then cut without ``[DONE]``. Here the turns are cancelled
    and their streams ended first; the graceful wait is a short backstop."""
    import uvicorn

    runtime: Runtime = app.state.runtime

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            await runtime.end_streams()
            await super().shutdown(sockets)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=3,
                            ws_max_size=4 * 1024 * 1024)
    return Server(config)


def serve(runtime: Runtime, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app under uvicorn until interrupted; a second Ctrl-C stops at once."""
    check_binding(host, runtime.api_key)
    # uvicorn logs a refused WebSocket (401/429 sent as an HTTP answer) as an error; it is not one
    logging.getLogger("uvicorn.error").addFilter(lambda r: "without completing handshake" not in r.getMessage())
    try:
        server(create_app(runtime), host, port).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on; stopping is the normal end
        pass
