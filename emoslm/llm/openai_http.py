"""OpenAI-compatible HTTP backend: vLLM, llama.cpp's server, Ollama, or any hosted endpoint.

Chat goes to ``/chat/completions``; raw continuation (needed to continue an open ``<think>``)
goes to ``/completions``; both stream as server-sent events (``stream: true``). The prompt for
raw continuation is rendered locally from the same model's chat template (``template=``: a
registry name, a local model directory or a hub id), so the text the server continues is exactly
what the template would make.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from typing import Any

import httpx

from emoslm.errors import BackendError
from emoslm.llm.base import LLM, ChatTemplate, Message, Sampling, StreamEnd, TextStream


class OpenAIHTTPLLM(LLM):
    backend = "http"

    def __init__(self, base_url: str, model: str = "default", api_key: str | None = None,
                 template: str | ChatTemplate | None = None, timeout: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self._template_source = template
        self._template: ChatTemplate | None = template if isinstance(template, ChatTemplate) else None

    @property
    def template(self) -> ChatTemplate:
        if self._template is None:
            if not self._template_source:
                raise BackendError(
                    f"{self.base_url}: raw continuation needs the model's chat template; "
                    "pass template=<model name, directory or hub id>"
                )
            self._template = load_template(str(self._template_source))
        return self._template

    def native_think(self) -> bool:
        """Judged from the chat template (Qwen3's handles ``<think>``); False when none was given."""
        return bool(self._template_source) and "<think>" in self.template.source

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        return self.template.render(messages, add_generation_prompt=add_generation_prompt)

    def _events(self, route: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST with ``stream: true`` and yield each server-sent event's JSON until ``[DONE]``."""
        url = f"{self.base_url}{route}"
        try:
            with self.client.stream("POST", route, json={**body, "stream": True,
                                                         "stream_options": {"include_usage": True}}) as response:
                if response.status_code >= 400:
                    raise BackendError(f"LLM endpoint {url} answered {response.status_code}: "
                                       f"{response.read().decode(errors='replace')[:200]}")
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        yield json.loads(data)
                    except json.JSONDecodeError:
                        raise BackendError(f"LLM endpoint {url} sent an event that is not JSON: {data[:80]}") from None
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach the LLM endpoint {url} ({type(exc).__name__}); "
                               "is the server running?") from None

    def _deltas(self, route: str, body: dict[str, Any], field: str) -> Generator[str, None, StreamEnd]:
        usage: dict[str, Any] = {}
        finish, pieces = "stop", 0
        for event in self._events(route, body):
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                finish = choice.get("finish_reason") or finish
                text = choice.get("text") if field == "text" else (choice.get("delta") or {}).get("content")
                if text:
                    pieces += 1
                    yield text
        return StreamEnd(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", pieces)), finish)

    def _body(self, s: Sampling) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.name,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,  # not in OpenAI's spec; vLLM, llama.cpp and Ollama accept it
            "repeat_penalty": s.repeat_penalty,
            "repetition_penalty": s.repeat_penalty,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = list(s.stop)
        return body

    def _stream(self, prompt: str, s: Sampling) -> Generator[str, None, StreamEnd]:
        return self._deltas("/completions", {"prompt": prompt, **self._body(s)}, "text")

    def chat_stream(self, messages: list[Message], sampling: Sampling | None = None) -> TextStream:
        s = sampling or Sampling()
        body = {"messages": messages, **self._body(s)}
        if s.json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "reply", "schema": s.json_schema}}
        return TextStream(self._deltas("/chat/completions", body, "delta"))

    def close(self) -> None:
        self.client.close()


def load_template(model: str) -> ChatTemplate:
    """The chat template of a registry model / local path (GGUF or HF directory) / hub id."""
    from emoslm.store import resolve

    resolved = resolve(model)
    if resolved.path is not None and resolved.path.suffix == ".gguf":
        from emoslm.llm.llama_cpp import gguf_template

        return gguf_template(resolved.path)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise BackendError(f"{model}: reading its chat template needs `pip install transformers`") from None
    tok = AutoTokenizer.from_pretrained(str(resolved.path or resolved.hub_id))
    return ChatTemplate(tok.chat_template, bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")
