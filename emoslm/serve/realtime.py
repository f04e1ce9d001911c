"""``/v1/realtime``: a voice session over a WebSocket with OpenAI's Realtime event names.

The client streams PCM16 (``input_audio_buffer.append``; 24 kHz unless ``session.update`` says another
rate); turn-taking is the streaming agent's own: a ``LiveSession`` runs Silero VAD on the audio
(``server_vad``, the default) and, when the user stops, the shared agent answers through the server's
turn lane; speech during a reply is barge-in (the reply ends with ``response.done`` status
``cancelled``). With ``turn_detection: null`` the client decides: ``input_audio_buffer.commit`` then
``response.create``.

Server events: ``session.created/updated``, ``input_audio_buffer.speech_started/speech_stopped/committed/
cleared``, ``conversation.item.input_audio_transcription.completed``, ``response.created``,
``response.output_audio.delta/done`` (24 kHz PCM16), ``response.output_audio_transcript.delta/done``
(``response.output_text.*`` in a text-only session), ``response.done``, ``error``; and emoslm's, all
named ``emoslm.*``: ``emoslm.emotion`` (each user turn's perceived emotion: tag, probabilities,
valence/arousal), ``emoslm.transcript.partial`` (heard so far), ``emoslm.think.delta/done`` (only
after ``session.update`` with ``"emoslm": {"think": true}``).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import soxr
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from emoslm.agents.conversation import Conversation
from emoslm.agents.events import (
    AudioChunk,
    Cancelled,
    Done,
    Emotion,
    Error,
    Event,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    ThinkDelta,
    Transcript,
)
from emoslm.agents.live import LiveSession, StreamingVAD
from emoslm.audio import SAMPLE_RATE
from emoslm.serve.chat import extras
from emoslm.serve.runtime import Busy, Runtime
from emoslm.serve.security import authorized_ws, deny
from emoslm.serve.wire import APIError, b64_bytes, new_id, pcm16_b64, pcm16_to_float

router = APIRouter()
RATES = (8_000, 16_000, 24_000, 44_100, 48_000)
CANCEL_REASONS = {"barge-in": "turn_detected", "cancelled": "client_cancelled", "shutdown": "server_shutdown"}


@dataclass
class Settings:
    """What ``session.update`` may change."""

    rate: int = 24_000
    server_vad: bool = True
    silence_ms: int = 400
    threshold: float = 0.5
    audio_out: bool = True
    think: bool = False
    lang: str | None = None

    def wire(self, session_id: str) -> dict[str, Any]:
        detection = ({"type": "server_vad", "threshold": self.threshold, "silence_duration_ms": self.silence_ms,
                      "create_response": True, "interrupt_response": True} if self.server_vad else None)
        return {"id": session_id, "object": "realtime.session", "type": "realtime", "model": "emoslm",
                "output_modalities": ["audio"] if self.audio_out else ["text"],
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": self.rate}, "turn_detection": detection},
                          "output": {"format": {"type": "audio/pcm", "rate": 24_000}}},
                "emoslm": {"think": self.think, "lang": self.lang}}


@dataclass
class Answer:
    """One response in progress: ids and what it has said so far."""

    id: str = field(default_factory=lambda: new_id("resp"))
    item: str = field(default_factory=lambda: new_id("item"))
    heard: str = ""  # the user item it answers: the user may have started the next one meanwhile (barge-in)
    text: str = ""
    think: str = ""


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket) -> None:
    runtime: Runtime = ws.app.state.runtime
    if not authorized_ws(ws, runtime.api_key):
        await deny(ws, 401, "missing or wrong API key (Authorization: Bearer KEY, or the subprotocol "
                            "openai-insecure-api-key.KEY)", "invalid_api_key")
        return
    if runtime.agent is None:
        await deny(ws, 404, "this server has no agent (started with --agent none)", "no_agent")
        return
    client = ws.client.host if ws.client else "unknown"
    try:
        runtime.open_session(client)
    except Busy as exc:
        await deny(ws, 429, str(exc), "rate_limit_exceeded")
        return
    offered = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
    session = RealtimeSession(ws, runtime)
    try:
        await session.run()
    finally:
        session.close()
        runtime.close_session(client)


class RealtimeSession:
    def __init__(self, ws: WebSocket, runtime: Runtime) -> None:
        self.ws, self.runtime = ws, runtime
        self.id = new_id("sess")
        self.settings = Settings(lang=runtime.lang)
        self.loop = asyncio.get_running_loop()
        self.outbox: asyncio.Queue[dict[str, Any] | Event | None] = asyncio.Queue()
        self.conversation = Conversation(runtime.agent, runtime.lang)
        self.live = self._live()
        self.resampler = soxr.ResampleStream(self.settings.rate, SAMPLE_RATE, 1, dtype="float32")
        self.manual: list[np.ndarray] = []  # the input buffer when the client decides turns
        self.committed: np.ndarray | None = None
        self.answers: deque[Answer] = deque()
        self.user_item = new_id("item")
        self.turns = 0

    def _live(self) -> LiveSession:
        vad = StreamingVAD(threshold=self.settings.threshold, min_silence_ms=self.settings.silence_ms)
        live = LiveSession(self.conversation, self.conversation.lang, vad=vad, partial_every=self.runtime.partial_every,
                           run=self.runtime.submit_turn,
                           offer=self.runtime.job_lane.offer,
                           sink=lambda e: self.loop.call_soon_threadsafe(self.outbox.put_nowait, e))
        self.runtime.track_live(live)
        return live

    # --- the two loops ---------------------------------------------------------------------------------
    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        await self.send({"type": "session.created", "session": self.settings.wire(self.id)})
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    await self.fail("send events as JSON text frames, not binary", "invalid_event")
                    continue
                try:
                    await self.handle(text)
                except APIError as exc:
                    await self.fail(exc.message, exc.code or "invalid_request_error", exc.param)
                except Busy as exc:
                    await self.fail(str(exc), "rate_limit_exceeded")
                except RuntimeError:  # the workers are gone: the server is shutting down
                    await self.fail("the server is shutting down", "server_shutdown")
                    return
        except WebSocketDisconnect:
            return
        finally:
            self.outbox.put_nowait(None)
            await asyncio.gather(writer, return_exceptions=True)

    async def _write(self) -> None:
        while (item := await self.outbox.get()) is not None:
            for event in [item] if isinstance(item, dict) else self.translate(item):
                try:
                    await self.ws.send_text(json.dumps({"event_id": new_id("event"), **event}, ensure_ascii=False))
                except (WebSocketDisconnect, RuntimeError):
                    return  # the client went; its turn is stopped by close()

    async def send(self, event: dict[str, Any]) -> None:
        await self.outbox.put(event)

    async def fail(self, message: str, code: str, param: str | None = None) -> None:
        await self.send({"type": "error", "error": {"type": "invalid_request_error", "code": code,
                                                    "message": message, "param": param}})

    # --- client events ---------------------------------------------------------------------------------
    async def handle(self, text: str) -> None:
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            raise APIError(400, "the event is not valid JSON", "invalid_json") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise APIError(400, "an event must be a JSON object with a string 'type'", "invalid_event", "type")
        kind = event["type"]
        handler = {
            "session.update": self.on_session_update,
            "input_audio_buffer.append": self.on_append,
            "input_audio_buffer.commit": self.on_commit,
            "input_audio_buffer.clear": self.on_clear,
            "response.create": self.on_response_create,
            "response.cancel": self.on_response_cancel,
        }.get(kind)
        if handler is None:
            raise APIError(400, f"unsupported event type {kind!r}", "unknown_event", "type")
        await handler(event)

    async def on_session_update(self, event: dict[str, Any]) -> None:
        s, new = event.get("session"), replace(self.settings)
        if not isinstance(s, dict):
            raise APIError(400, "session.update needs a 'session' object", "invalid_event", "session")
        audio_in = (s.get("audio") or {}).get("input") or {}
        rate = (audio_in.get("format") or {}).get("rate", new.rate)
        if rate not in RATES:
            raise APIError(400, f"input rate {rate!r} is not supported; use one of {RATES}", "invalid_value",
                           "session.audio.input.format.rate")
        new.rate = int(rate)
        detection = audio_in["turn_detection"] if "turn_detection" in audio_in else s.get("turn_detection", "keep")
        if detection is None:
            new.server_vad = False
        elif isinstance(detection, dict):
            new.server_vad = True
            new.silence_ms = int(detection.get("silence_duration_ms", new.silence_ms))
            new.threshold = float(detection.get("threshold", new.threshold))
        modalities = s.get("output_modalities") or s.get("modalities")
        if modalities:
            new.audio_out = "audio" in modalities
        ours = s.get("emoslm") or {}
        new.think = bool(ours.get("think", new.think))
        if ours.get("lang", new.lang) not in (None, "auto", "en", "zh"):
            raise APIError(400, "emoslm.lang must be en, zh or auto", "invalid_value", "session.emoslm.lang")
        new.lang = None if ours.get("lang", new.lang) == "auto" else ours.get("lang", new.lang)
        if (new.silence_ms, new.threshold) != (self.settings.silence_ms, self.settings.threshold) and not \
                self.live.speaking:
            self.live.vad = StreamingVAD(threshold=new.threshold, min_silence_ms=new.silence_ms)
        if new.rate != self.settings.rate:
            self.resampler = soxr.ResampleStream(new.rate, SAMPLE_RATE, 1, dtype="float32")
        self.settings = new
        self.live.lang = self.conversation.lang = new.lang
        await self.send({"type": "session.updated", "session": new.wire(self.id)})

    async def on_append(self, event: dict[str, Any]) -> None:
        pcm = pcm16_to_float(b64_bytes(event.get("audio"), "audio"), "audio")
        limit = self.runtime.limits.max_audio_seconds
        if self.settings.server_vad:
            await self.loop.run_in_executor(self.runtime.ears, self._feed, pcm)
            if self.live.speech_seconds > limit:
                self.live.clear()
                raise APIError(413, f"the user has spoken for over {limit:.0f} s without a pause, the limit per "
                                    "turn; the buffer was cleared", "audio_too_long", "audio")
            return
        self.manual.append(self.resampler.resample_chunk(pcm))
        if sum(len(a) for a in self.manual) > limit * SAMPLE_RATE:
            self.manual.clear()
            raise APIError(413, f"the input buffer holds over {limit:.0f} s, the limit per turn; it was cleared",
                           "audio_too_long", "audio")

    def _feed(self, pcm: np.ndarray) -> None:
        self.live.feed(self.resampler.resample_chunk(pcm))

    async def on_commit(self, _: dict[str, Any]) -> None:
        if self.settings.server_vad:
            if not self.live.speaking:
                raise APIError(400, "nothing to commit: no speech in the buffer", "input_audio_buffer_commit_empty")
            await self.loop.run_in_executor(self.runtime.ears, self.live.finish)  # ends the turn; a reply follows
            return
        audio = np.concatenate(self.manual) if self.manual else np.zeros(0, np.float32)
        self.manual.clear()
        if len(audio) < SAMPLE_RATE // 10:
            raise APIError(400, "nothing to commit: the buffer holds under 100 ms of audio",
                           "input_audio_buffer_commit_empty")
        self.committed = audio
        await self.send({"type": "input_audio_buffer.committed", "item_id": self.user_item,
                         "previous_item_id": None})

    async def on_clear(self, _: dict[str, Any]) -> None:
        self.manual.clear()
        await self.loop.run_in_executor(self.runtime.ears, self.live.clear)
        await self.send({"type": "input_audio_buffer.cleared"})

    async def on_response_create(self, _: dict[str, Any]) -> None:
        if self.committed is None:
            raise APIError(400, "nothing to respond to: commit the user's audio first (with server_vad a "
                                "response starts by itself when the user stops)", "no_input")
        audio, self.committed = self.committed, None
        await self.send(self._begin())
        self.user_item = new_id("item")  # the next input buffer is a new item
        self.live.answer(audio)

    async def on_response_cancel(self, _: dict[str, Any]) -> None:
        if not self.live.replying:
            raise APIError(400, "no response is in progress", "response_cancel_not_active")
        self.live.stop("cancelled")

    def _begin(self) -> dict[str, Any]:
        """Open a response (the agent's next events belong to it); its ``response.created`` event."""
        answer = Answer(heard=self.user_item)
        self.answers.append(answer)
        return {"type": "response.created", "response": {
            "id": answer.id, "object": "realtime.response", "status": "in_progress", "output": []}}

    # --- agent events → server events ------------------------------------------------------------------
    def translate(self, event: Event) -> list[dict[str, Any]]:
        if isinstance(event, SpeechStarted):
            self.user_item = new_id("item")
            return [{"type": "input_audio_buffer.speech_started", "audio_start_ms": int(event.at * 1000),
                     "item_id": self.user_item}]
        if isinstance(event, SpeechStopped):
            out = [{"type": "input_audio_buffer.speech_stopped", "audio_end_ms": int(event.at * 1000),
                    "item_id": self.user_item},
                   {"type": "input_audio_buffer.committed", "item_id": self.user_item, "previous_item_id": None}]
            return [*out, self._begin()]
        if isinstance(event, Transcript) and event.partial:
            return [{"type": "emoslm.transcript.partial", "item_id": self.user_item, "text": event.text}]
        opened = [] if self.answers else [self._begin()]  # an answer the server did not announce (none expected)
        return opened + self._answer_events(event, self.answers[0])

    def _answer_events(self, event: Event, answer: Answer) -> list[dict[str, Any]]:
        ids = {"response_id": answer.id, "item_id": answer.item, "output_index": 0, "content_index": 0}
        if isinstance(event, Transcript):
            return [{"type": "conversation.item.input_audio_transcription.completed", "item_id": answer.heard,
                     "content_index": 0, "transcript": event.text}]
        if isinstance(event, Emotion):
            self.turns += 1
            return [{"type": "emoslm.emotion", "item_id": answer.heard, "response_id": answer.id,
                     "turn": self.turns, "estimate": event.estimate.to_json()}]
        if isinstance(event, ThinkDelta):
            answer.think += event.text
            return [{"type": "emoslm.think.delta", **ids, "delta": event.text}] if self.settings.think else []
        if isinstance(event, TextDelta):
            answer.text += event.text
            kind = "response.output_audio_transcript.delta" if self.settings.audio_out else "response.output_text.delta"
            return [{"type": kind, **ids, "delta": event.text}]
        if isinstance(event, AudioChunk):
            if not self.settings.audio_out:
                return []
            return [{"type": "response.output_audio.delta", **ids, "delta": pcm16_b64(event.audio, event.sample_rate),
                     "emoslm": {"t": round(event.t, 4), "text": event.text}}]
        if isinstance(event, Done):
            self.answers.popleft()
            return [*self._finished(answer, ids), self._response_done(answer, "completed", extras(
                event.reply, self.settings.think))]
        if isinstance(event, Cancelled):
            self.answers.popleft()
            reason = CANCEL_REASONS.get(event.reason, event.reason)
            return [self._response_done(answer, "cancelled", {"t": round(event.t, 4)}, {"type": "cancelled",
                                                                                           "reason": reason})]
        if isinstance(event, Error):
            self.answers.popleft()
            return [{"type": "error", "error": {"type": "server_error", "code": "agent_error", "message": event.message,
                                                "param": None}},
                    self._response_done(answer, "failed", {}, {"type": "failed", "error": {"message": event.message}})]
        return []  # timings travel in response.done

    def _finished(self, answer: Answer, ids: dict[str, Any]) -> list[dict[str, Any]]:
        if not self.settings.audio_out:
            return [{"type": "response.output_text.done", **ids, "text": answer.text}]
        out = [{"type": "response.output_audio.done", **ids},
               {"type": "response.output_audio_transcript.done", **ids, "transcript": answer.text}]
        if self.settings.think:
            out.append({"type": "emoslm.think.done", **ids, "text": answer.think})
        return out

    def _response_done(self, answer: Answer, status: str, ours: dict[str, Any],
                       details: dict[str, Any] | None = None) -> dict[str, Any]:
        content = {"type": "output_audio" if self.settings.audio_out else "output_text",
                   "transcript" if self.settings.audio_out else "text": answer.text}
        return {"type": "response.done", "response": {
            "id": answer.id, "object": "realtime.response", "status": status, "status_details": details,
            "output": [{"id": answer.item, "type": "message", "role": "assistant", "content": [content]}],
            "emoslm": ours}}

    def close(self) -> None:
        self.live.stop("cancelled")
        self.runtime.track_live(self.live, keep=False)

