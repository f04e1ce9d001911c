"""An agent that runs on another machine: a remote emoslm server (or any OpenAI-compatible audio chat API).

The request is OpenAI's chat completion with audio in and out: the history as text messages, the
user's clip as an ``input_audio`` part (base64 WAV), ``modalities: ["text", "audio"]`` and ``stream:
true``. The reply streams as ``chat.completion.chunk`` server-sent events. An emoslm server adds one
namespaced field per chunk, ``"emoslm": {"event": <wire event>}``, carrying every event of the
streaming contract (transcript, emotion, think, text, audio, timing, done) in the form ``to_wire``
writes; other servers send only ``delta.content`` and ``delta.audio`` (PCM16 at 24 kHz, OpenAI's
rate), which are turned into text and audio events.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np

from emoslm.agents.base import Agent
from emoslm.agents.events import AudioChunk, Done, Error, Event, Reply, TextDelta, Turn, decode_pcm16, from_wire
from emoslm.audio import to_wav_bytes
from emoslm.errors import BackendError
from emoslm.language import served

OPENAI_PCM_RATE = 24_000


class RemoteAgent(Agent):
    name = "remote"

    def __init__(self, url: str, model: str = "emoslm", api_key: str | None = None, voice: str = "auto",
                 think: bool = True, timeout: float = 300.0) -> None:
        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base, headers=headers, timeout=timeout)
        self.model, self.voice, self.think = model, voice, think

    def request(self, history: list[Turn], audio: np.ndarray, lang: str | None) -> dict[str, Any]:
        """The chat completion request body for one turn."""
        clip = base64.b64encode(to_wav_bytes(audio)).decode("ascii")
        messages: list[dict[str, Any]] = [{"role": t.role, "content": t.text} for t in history]
        messages.append({"role": "user", "content": [{"type": "input_audio",
                                                      "input_audio": {"data": clip, "format": "wav"}}]})
        return {"model": self.model, "stream": True, "modalities": ["text", "audio"], "messages": messages,
                "audio": {"voice": self.voice, "format": "pcm16"},
                "emoslm": {"events": True, "think": self.think, "lang": lang,
                           "user_emotions": [t.emotion for t in history if t.role == "user"]}}

    def _events(self, history: list[Turn], audio: np.ndarray, lang: str | None) -> Iterator[Event]:
        text, chunks, done = "", [], None
        for chunk in self._chunks(self.request(history, audio, lang)):
            for event in _chunk_events(chunk):
                if isinstance(event, TextDelta):
                    text += event.text
                elif isinstance(event, AudioChunk):
                    chunks.append(event)
                if isinstance(event, Done):
                    done = event
                    continue
                yield event
                if isinstance(event, Error):
                    return
        joined = np.concatenate([c.audio for c in chunks]) if chunks else None
        rate = chunks[0].sample_rate if chunks else 16_000
        if done is None:  # a plain OpenAI server: the reply is what streamed
            done = Done(Reply(text=text, lang=served(lang), audio=joined, sample_rate=rate))
        done.reply.audio, done.reply.sample_rate = joined, rate
        yield done

    def _chunks(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        url = f"{self.base}/chat/completions"
        try:
            with self.client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    raise BackendError(f"{url} answered {response.status_code}: {_message(response.read())}")
                for line in response.iter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    yield json.loads(line[5:])
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach the emoslm server {url} ({type(exc).__name__}); is it running?") from None
        except json.JSONDecodeError:
            raise BackendError(f"{url} sent an event that is not JSON; is it an OpenAI-compatible server?") from None

    def close(self) -> None:
        self.client.close()


def _chunk_events(chunk: dict[str, Any]) -> list[Event]:
    """The events one ``chat.completion.chunk`` carries."""
    extra = chunk.get("emoslm") or {}
    if extra.get("event"):
        wire = extra["event"]
        if wire.get("type") == "audio" and wire.get("audio") == "delta":  # the samples travel once, in the delta
            pieces = [(c.get("delta") or {}).get("audio") or {} for c in chunk.get("choices") or []]
            wire = {**wire, "audio": next((p["data"] for p in pieces if p.get("data")), "")}
        return [from_wire(wire)]
    if isinstance(chunk.get("error"), dict):
        return [Error(str(chunk["error"].get("message", "the server reported an error")))]
    events: list[Event] = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content"):
            events.append(TextDelta(delta["content"]))
        piece = delta.get("audio") or {}
        if piece.get("transcript"):
            events.append(TextDelta(piece["transcript"]))
        if piece.get("data"):
            events.append(AudioChunk(decode_pcm16(piece["data"]), OPENAI_PCM_RATE))
    return events


def _message(body: bytes) -> str:
    """The message of an OpenAI-shaped error body (or the start of whatever came back)."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]
