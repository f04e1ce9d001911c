"""llama.cpp's own OpenAI-compatible server (llama-cpp-python[server]) for a registry model.

Used by ``emoslm serve llm`` and to exercise the HTTP LLM backend against a real server.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

from emoslm.config import settings
from emoslm.errors import BackendError
from emoslm.store import resolve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model: str, host: str, port: int, n_ctx: int = 2048, alias: str | None = None) -> list[str]:
    path = resolve(model).require_path()
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", alias or model,
            "--host", host, "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(settings().threads)]


@contextlib.contextmanager
def llama_cpp_server(model: str = "smollm2-135m-instruct", n_ctx: int = 2048, timeout: float = 60.0) -> Iterator[str]:
    """Start the server on a free loopback port, wait until it answers, yield its ``/v1`` URL, stop it."""
    port = free_port()
    proc = subprocess.Popen(server_command(model, "127.0.0.1", port, n_ctx),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise BackendError(f"llama.cpp server for {model} exited with status {proc.returncode}")
            try:
                if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BackendError(f"llama.cpp server for {model} did not answer within {timeout:.0f} s")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
