"""``/v1/realtime``: a voice session over a WebSocket with OpenAI's Realtime event names.

The client streams PCM16 (``input_audio_buffer.append``; 24 kHz unless ``session.update`` says another
rate); turn-taking is the streaming agent's own: a ``LiveSession`` runs Silero VAD on the audio
(``server_vad``, the default) and, when the user stops, the shared agent answers through the server's
turn lane; speech during a reply is barge-in (the reply ends with ``response.done`` status
``cancelled``). With ``turn_detection: null`` the client decides: ``input_audio_buffer.commit`` then
``response.create``. Every client event is validated first (``realtime_events``): a bad one gets an
``error`` event naming the field, and the session goes on.

Reply audio is paced: it goes out at most ``AUDIO_LEAD_S`` ahead of the client's playback, so speech over
the playback (barge-in after the agent has finished writing) still stops what the user has not heard; the
response then ends ``cancelled`` with the words that were heard. The client may say exactly how much it
played with ``conversation.item.truncate`` (``audio_end_ms``), as OpenAI's clients do; either way the
history keeps only what the user heard.

Server events: ``session.created/updated``, ``input_audio_buffer.speech_started/speech_stopped/committed/
cleared``, ``conversation.item.input_audio_transcription.completed``, ``response.created``,
``response.output_audio.delta/done`` (24 kHz PCM16), ``response.output_audio_transcript.delta/done``
(``response.output_text.*`` in a text-only session), ``response.done``, ``error``; and emoslm's, all
named ``emoslm.*``: ``emoslm.emotion`` (each user turn's perceived emotion: tag, probabilities,
valence/arousal), ``emoslm.transcript.partial`` (heard so far), ``emoslm.queue`` (``ahead``: turns
of other sessions the model answers before this one, when it has to wait; sent again as the queue
moves), ``emoslm.think.delta/done`` (only after ``session.update`` with ``"emoslm": {"think": true}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict, deque
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
from emoslm.perception.turn import PATIENCE_S, TurnEnd
from emoslm.serve.chat import extras
from emoslm.serve.realtime_events import (
    Append,
    BadEvent,
    Clear,
    Commit,
    ResponseCancel,
    ResponseCreate,
    SessionConfig,
    SessionUpdate,
    Truncate,
    parse_event,
)
from emoslm.serve.runtime import Busy, Runtime
from emoslm.serve.security import authorized_ws, deny
from emoslm.serve.wire import APIError, b64_bytes, new_id, pcm16_b64, pcm16_to_float
from emoslm.speech.tts import CJK

router = APIRouter()
log = logging.getLogger("uvicorn.error")  # the server's own log, in uvicorn's format
CANCEL_REASONS = {"barge-in": "turn_detected", "resumed": "turn_detected", "cancelled": "client_cancelled",
                  "shutdown": "server_shutdown", "no-speech": "no_speech"}
AUDIO_LEAD_S = 1.0  # reply audio goes out at most this far ahead of the client's playback
PIECE_S = 0.5  # the longest audio delta
ITEMS_KEPT = 64  # assistant items a truncate may name


@dataclass
class Settings:
    """What ``session.update`` may change."""

    rate: int = 24_000
    server_vad: bool = True  # the server decides turns (either kind); False: the client commits them
    semantic: bool = True  # semantic_vad: Smart Turn at a 0.2 s pause (emoslm.perception.turn); else silence_ms
    eagerness: str = "auto"
    silence_ms: int = 400
    threshold: float = 0.5
    audio_out: bool = True
    think: bool = False
    lang: str | None = None

    def wire(self, session_id: str) -> dict[str, Any]:
        detection = ({"type": "server_vad", "threshold": self.threshold, "silence_duration_ms": self.silence_ms,
                      "create_response": True, "interrupt_response": True} if self.server_vad else None)
        if self.server_vad and self.semantic:
            detection = {"type": "semantic_vad", "eagerness": self.eagerness, "create_response": True,
                         "interrupt_response": True}
        return {"id": session_id, "object": "realtime.session", "type": "realtime", "model": "emoslm",
                "output_modalities": ["audio"] if self.audio_out else ["text"],
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": self.rate}, "turn_detection": detection},
                          "output": {"format": {"type": "audio/pcm", "rate": 24_000}}},
                "emoslm": {"think": self.think, "lang": self.lang}}

    def updated(self, s: SessionConfig) -> Settings:
        """These settings with a validated ``session.update`` applied (only the fields it gives)."""
        new = replace(self)
        audio_in = s.audio.input if s.audio is not None else None
        if audio_in is not None and audio_in.format is not None:
            new.rate = audio_in.format.rate
        given, detection = s.detection()
        if given and detection is None:
            new.server_vad = False
        elif given and detection.type == "semantic_vad":
            new.server_vad, new.semantic, new.eagerness = True, True, detection.eagerness
        elif given:
            new.server_vad, new.semantic = True, False
            if "silence_duration_ms" in detection.model_fields_set:
                new.silence_ms = detection.silence_duration_ms
            if "threshold" in detection.model_fields_set:
                new.threshold = detection.threshold
        modalities = s.output_modalities or s.modalities
        if modalities:
            new.audio_out = "audio" in modalities
        if s.emoslm is not None:
            new.think = new.think if s.emoslm.think is None else s.emoslm.think
            if "lang" in s.emoslm.model_fields_set:
                new.lang = None if s.emoslm.lang in (None, "auto") else s.emoslm.lang
        return new


@dataclass
class Answer:
    """One response in progress: ids, what it has said, and how much of its audio went out and was heard."""

    id: str = field(default_factory=lambda: new_id("resp"))
    item: str = field(default_factory=lambda: new_id("item"))
    heard: str = ""  # the user item it answers: the user may have started the next one meanwhile (barge-in)
    text: str = ""
    think: str = ""
    clauses: list[tuple[float, float, str]] = field(default_factory=list)  # audio sent: (start ms, end ms, text)
    sent_ms: float = 0.0
    play_end: float = 0.0  # when the audio sent so far ends playing at the client (monotonic clock)
    cut: str | None = None  # why its audio stopped going out (turn_detected, client_cancelled …); None: it did not
    heard_ms: float | None = None  # how much the client says it played (conversation.item.truncate)
    ended: bool = False  # its response.done went out: the history holds it
    in_history: str | None = None  # what the history holds for it now

    def interrupt(self, reason: str) -> None:
        self.cut = self.cut or reason

    def spoken(self) -> str:
        """The words of the audio the user heard: all sent, or up to what the client says it played."""
        return heard_text(self.clauses, self.sent_ms if self.heard_ms is None else self.heard_ms)


def pieces(audio: np.ndarray, rate: int, text: str) -> list[tuple[np.ndarray, str]]:
    """A clause's audio in deltas of at most ``PIECE_S``, each with its share of the words (CJK: characters):
    the pacer then holds back all but ``AUDIO_LEAD_S`` of even a long clause, so speech over it stops what
    the user has not heard (one delta per clause let a one-clause reply go out whole before any barge-in)."""
    count = max(1, int(np.ceil(len(audio) / (PIECE_S * rate))))
    units = list(text.strip()) if CJK.search(text) else text.split()
    glue = "" if CJK.search(text) else " "
    bounds = [round(len(audio) * i / count) for i in range(count + 1)]
    words = [round(len(units) * i / count) for i in range(count + 1)]
    return [(audio[bounds[i]:bounds[i + 1]], glue.join(units[words[i]:words[i + 1]])) for i in range(count)]


def heard_text(clauses: list[tuple[float, float, str]], ms: float) -> str:
    """The text of the first ``ms`` of a reply's audio, clause by clause; inside a clause, in proportion (each
    CJK character a unit, else each word)."""
    said = []
    for start, end, text in clauses:
        if ms >= end:
            said.append(text.strip())
        elif ms > start:
            units = list(text.strip()) if CJK.search(text) else text.split()
            keep = int(len(units) * (ms - start) / max(end - start, 1e-6))
            said.append(("" if CJK.search(text) else " ").join(units[:keep]))
    return " ".join(t for t in said if t).strip()


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
    runtime.track_closer(session.shutdown)
    try:
        await session.run()
    finally:
        runtime.track_closer(session.shutdown, keep=False)
        session.close()
        runtime.close_session(client)


class RealtimeSession:
    def __init__(self, ws: WebSocket, runtime: Runtime) -> None:
        self.ws, self.runtime = ws, runtime
        self.id = new_id("sess")
        self.settings = Settings(lang=runtime.lang)
        self.loop = asyncio.get_running_loop()
        self.outbox: asyncio.Queue[dict[str, Any] | Event | None] = asyncio.Queue()  # in arrival order
        self.paced: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()  # response events, audio at play pace
        self.sending = asyncio.Lock()
        self.conversation = Conversation(runtime.agent, runtime.lang)
        self.live = self._live()
        self.resampler = soxr.ResampleStream(self.settings.rate, SAMPLE_RATE, 1, dtype="float32")
        self.manual: list[np.ndarray] = []  # the input buffer when the client decides turns
        self.committed: np.ndarray | None = None
        self.answers: deque[Answer] = deque()  # answers the agent has not ended, oldest first
        self.items: OrderedDict[str, Answer] = OrderedDict()  # every recent answer by its assistant item id
        self.user_item = new_id("item")
        self.turns = 0
        self.closing = False
        self.tasks: list[asyncio.Task] = []

    def _live(self) -> LiveSession:
        turn_end, vad = self._turn_taking(self.settings)
        live = LiveSession(self.conversation, self.conversation.lang, vad=vad, partial_every=self.runtime.partial_every,
                           turn_end=turn_end,
                           run=lambda job: self.runtime.submit_turn(job, self._queued),
                           offer=self.runtime.job_lane.offer,
                           sink=lambda e: self.loop.call_soon_threadsafe(self._arrive, e))
        self.runtime.track_live(live)
        return live

    def _queued(self, ahead: int) -> None:
        """The user's turn waits for others (``ahead`` turns before it): the client may say so."""
        self.loop.call_soon_threadsafe(self.outbox.put_nowait, {"type": "emoslm.queue", "ahead": ahead})

    def _arrive(self, event: Event) -> None:
        """An agent event, on the event loop as soon as it is made: speech over a reply stops its audio at once
        (the audio still waiting to go out is dropped), then the event joins the others in order."""
        if isinstance(event, SpeechStarted) and self.settings.server_vad:
            for answer in self.items.values():
                if not answer.ended:
                    answer.interrupt("turn_detected")
        self.outbox.put_nowait(event)

    # --- the loops -------------------------------------------------------------------------------------
    async def run(self) -> None:
        self.tasks = [asyncio.create_task(self._translate()), asyncio.create_task(self._pace())]
        await self.send({"type": "session.created", "session": self.settings.wire(self.id)})
        try:
            while not self.closing:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    await self.fail("send events as JSON text frames, not binary", "invalid_event")
                    continue
                try:
                    await self.handle(text)
                except BadEvent as exc:
                    await self.fail(exc.message, exc.code, exc.param)
                except APIError as exc:
                    await self.fail(exc.message, exc.code or "invalid_request_error", exc.param)
                except Busy as exc:
                    await self.fail(str(exc), "rate_limit_exceeded")
                except RuntimeError:  # the workers are gone: the server is shutting down
                    await self.fail("the server is shutting down", "server_shutdown")
                    return
                except Exception as exc:  # noqa: BLE001 - a bug of ours: logged, told, and the session lives on
                    log.exception("realtime event failed")
                    await self.fail(f"internal error ({type(exc).__name__}); the server log has the details",
                                    "internal_error")
        except WebSocketDisconnect:
            return
        finally:
            self.outbox.put_nowait(None)
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _translate(self) -> None:
        """Agent events → server events, in order; a response's events go on to the pacer, the rest out now."""
        while (item := await self.outbox.get()) is not None:
            for event in [item] if isinstance(item, dict) else self.translate(item):
                if "response_id" in event or event["type"].startswith("response."):
                    self.paced.put_nowait(event)
                else:
                    await self._emit(event)
        self.paced.put_nowait(None)

    async def _pace(self) -> None:
        """A response's events in order, its audio no further than ``AUDIO_LEAD_S`` ahead of the client's
        playback, so that an interruption still stops what the user has not heard; once cut, its audio and
        words are dropped and its end says what was heard."""
        while (event := await self.paced.get()) is not None:
            answer = self._answer_of(event)
            if answer is not None and answer.cut and event["type"] in (
                    "response.output_audio.delta", "response.output_audio_transcript.delta"):
                continue
            if answer is not None and event["type"] == "response.output_audio.delta":
                if not await self._wait_to_play(answer):
                    continue
                self._played(answer, event)
            elif answer is not None and event["type"] in ("response.output_audio_transcript.done", "response.done"):
                event = self._ending(answer, event)
            await self._emit(event)

    async def _wait_to_play(self, answer: Answer) -> bool:
        while not answer.cut and not self.closing:
            ahead = answer.play_end - time.monotonic()
            if ahead <= AUDIO_LEAD_S:
                return True
            await asyncio.sleep(min(ahead - AUDIO_LEAD_S, 0.05))
        return False

    def _played(self, answer: Answer, event: dict[str, Any]) -> None:
        ms = len(event["delta"]) * 3 / 4 / 2 / 24  # base64 → bytes → 16-bit samples at 24 kHz → ms
        text = (event.get("emoslm") or {}).get("text", "")
        answer.clauses.append((answer.sent_ms, answer.sent_ms + ms, text))
        answer.sent_ms += ms
        answer.play_end = max(answer.play_end, time.monotonic()) + ms / 1000

    def _ending(self, answer: Answer, event: dict[str, Any]) -> dict[str, Any]:
        """The end of a response; a cut one says what the user heard, and the history keeps only that."""
        if event["type"] == "response.done":
            answer.ended = True
            answer.in_history = answer.text
        if not answer.cut or not self.settings.audio_out:
            if answer.heard_ms is not None and event["type"] == "response.done":
                self._cut_history(answer)
            return event
        heard = answer.spoken()
        if event["type"] == "response.output_audio_transcript.done":
            return {**event, "transcript": heard}
        response = dict(event["response"])
        response["output"] = [{**response["output"][0], "content": [{"type": "output_audio", "transcript": heard}]}]
        if response["status"] == "completed":
            response["status"] = "cancelled"
            response["status_details"] = {"type": "cancelled", "reason": answer.cut}
        self._cut_history(answer)
        return {**event, "response": response}

    def _cut_history(self, answer: Answer) -> None:
        heard = answer.spoken()
        if answer.in_history is not None and heard != answer.in_history:
            if self.conversation.cut_reply(answer.in_history, heard):
                answer.in_history = heard

    def _answer_of(self, event: dict[str, Any]) -> Answer | None:
        response = event.get("response_id") or (event.get("response") or {}).get("id")
        return next((a for a in self.items.values() if a.id == response), None) if response else None

    async def _emit(self, event: dict[str, Any]) -> None:
        async with self.sending:
            try:
                await self.ws.send_text(json.dumps({"event_id": new_id("event"), **event}, ensure_ascii=False))
            except (WebSocketDisconnect, RuntimeError):
                pass  # the client went; its turn is stopped by close()

    async def send(self, event: dict[str, Any]) -> None:
        await self.outbox.put(event)

    async def fail(self, message: str, code: str, param: str | None = None) -> None:
        await self.send({"type": "error", "error": {"type": "invalid_request_error", "code": code,
                                                    "message": message, "param": param}})

    # --- client events ---------------------------------------------------------------------------------
    async def handle(self, text: str) -> None:
        event = parse_event(text)
        handler = {
            "session.update": self.on_session_update,
            "input_audio_buffer.append": self.on_append,
            "input_audio_buffer.commit": self.on_commit,
            "input_audio_buffer.clear": self.on_clear,
            "response.create": self.on_response_create,
            "response.cancel": self.on_response_cancel,
            "conversation.item.truncate": self.on_truncate,
        }[event.type]
        await handler(event)

    def _turn_taking(self, settings: Settings) -> tuple[TurnEnd | None, StreamingVAD]:
        """semantic_vad: the VAD reports 0.2 s pauses and Smart Turn decides; server_vad: silence_ms decides."""
        turn_end = (TurnEnd(self.runtime.smart_turn(), patience_s=PATIENCE_S[settings.eagerness])
                    if settings.semantic else None)
        silence = int(turn_end.pause_s * 1000) if turn_end else settings.silence_ms
        return turn_end, StreamingVAD(threshold=settings.threshold, min_silence_ms=silence)

    async def on_session_update(self, event: SessionUpdate) -> None:
        new = self.settings.updated(event.session)
        taking = ("semantic", "eagerness", "silence_ms", "threshold")
        if any(getattr(new, k) != getattr(self.settings, k) for k in taking) and not self.live.speaking:
            self.live.turn_end, self.live.vad = self._turn_taking(new)
        if new.rate != self.settings.rate:
            self.resampler = soxr.ResampleStream(new.rate, SAMPLE_RATE, 1, dtype="float32")
        self.settings = new
        self.live.lang = self.conversation.lang = new.lang
        await self.send({"type": "session.updated", "session": new.wire(self.id)})

    async def on_append(self, event: Append) -> None:
        pcm = pcm16_to_float(b64_bytes(event.audio, "audio"), "audio")
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

    async def on_commit(self, _: Commit) -> None:
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

    async def on_clear(self, _: Clear) -> None:
        self.manual.clear()
        await self.loop.run_in_executor(self.runtime.ears, self.live.clear)
        await self.send({"type": "input_audio_buffer.cleared"})

    async def on_response_create(self, _: ResponseCreate) -> None:
        if self.committed is None:
            raise APIError(400, "nothing to respond to: commit the user's audio first (with server_vad a "
                                "response starts by itself when the user stops)", "no_input")
        audio, self.committed = self.committed, None
        await self.send(self._begin())
        self.user_item = new_id("item")  # the next input buffer is a new item
        self.live.answer(audio)

    async def on_response_cancel(self, event: ResponseCancel) -> None:
        going = [a for a in self.items.values() if not a.ended and not a.cut
                 and event.response_id in (None, a.id)]
        if not self.live.replying and not going:
            raise APIError(400, "no response is in progress", "response_cancel_not_active")
        for answer in going:
            answer.interrupt("client_cancelled")
        self.live.stop("cancelled")

    async def on_truncate(self, event: Truncate) -> None:
        answer = self.items.get(event.item_id)
        if answer is None:
            raise APIError(400, f"item_id: no assistant item {event.item_id[:60]!r} in this session",
                           "item_truncate_invalid_item_id", "item_id")
        if event.audio_end_ms > answer.sent_ms + 1:
            raise APIError(400, f"audio_end_ms: {event.audio_end_ms} ms is past the {answer.sent_ms:.0f} ms of "
                                "audio sent for this item", "invalid_value", "audio_end_ms")
        answer.interrupt("client_cancelled")
        answer.heard_ms = event.audio_end_ms
        if answer in self.answers:  # the agent is still writing it: stop it; the history is cut when it ends
            self.live.stop("cancelled")
        if answer.ended:
            self._cut_history(answer)
        await self.send({"type": "conversation.item.truncated", "item_id": answer.item, "content_index": 0,
                         "audio_end_ms": event.audio_end_ms})

    def _begin(self) -> dict[str, Any]:
        """Open a response (the agent's next events belong to it); its ``response.created`` event."""
        answer = Answer(heard=self.user_item)
        self.answers.append(answer)
        self.items[answer.item] = answer
        while len(self.items) > ITEMS_KEPT:
            self.items.popitem(last=False)
        return {"type": "response.created", "response": {
            "id": answer.id, "object": "realtime.response", "status": "in_progress", "output": []}}

    # --- agent events → server events ------------------------------------------------------------------
    def translate(self, event: Event) -> list[dict[str, Any]]:
        if self.closing:
            return []  # every open answer was ended by shutdown()
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
            return [{"type": "response.output_audio.delta", **ids, "delta": pcm16_b64(audio, event.sample_rate),
                     "emoslm": {"t": round(event.t, 4), "text": text}}
                    for audio, text in pieces(event.audio, event.sample_rate, event.text)]
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

    async def shutdown(self) -> None:
        """The server is stopping: every open answer ends now with ``response.done`` (cancelled,
        server_shutdown), what is queued goes out without waiting for playback, then the socket closes."""
        if self.closing:
            return
        self.live.stop("shutdown")
        ends = [self._response_done(a, "cancelled", {}, {"type": "cancelled", "reason": "server_shutdown"})
                for a in self.answers]
        self.closing = True
        for answer in self.items.values():
            answer.interrupt("server_shutdown")
        for event in ends:
            self.paced.put_nowait(event)
        self.answers.clear()
        self.outbox.put_nowait(None)
        await asyncio.wait(self.tasks, timeout=1.5)
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.ws.close(code=1001, reason="the server is shutting down")

    def close(self) -> None:
        self.live.stop("cancelled")
        self.runtime.track_live(self.live, keep=False)

