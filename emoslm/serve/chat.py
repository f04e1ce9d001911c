"""``POST /v1/chat/completions``: OpenAI's chat completion with audio in and out, answered by the agent.

The newest user message carries the turn as an ``input_audio`` part; earlier messages are the history
(text, earlier clips — transcribed — or an earlier reply named by ``{"role": "assistant", "audio":
{"id": …}}``). With ``modalities: ["text", "audio"]`` the reply is ``message.audio`` (``content`` is
null, as OpenAI's); with ``stream: true`` it is ``chat.completion.chunk`` events whose ``delta.audio``
carries the id, transcript pieces and 24 kHz PCM16 pieces, then ``[DONE]``.

emoslm's extras travel in one field, ``emoslm``, never inside ``content``: the perceived emotion with
its probabilities, the transcript, the stage timings, and the think only when the request asks
(``"emoslm": {"think": true}``). ``"emoslm": {"events": true}`` adds every event of the streaming
contract to the chunks (``emoslm.agents.remote`` reads them).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from emoslm.agents.base import NO_SPEECH
from emoslm.agents.events import AudioChunk, Cancelled, Done, Emotion, Error, Event, Reply, TextDelta, ThinkDelta, Turn
from emoslm.agents.events import Transcript as Heard
from emoslm.serve.runtime import Runtime
from emoslm.serve.wire import (
    ENCODINGS,
    OPENAI_RATE,
    RAW,
    APIError,
    b64_bytes,
    decode_clip,
    encode_audio,
    new_id,
    now,
    pcm16_b64,
)

router = APIRouter()


class AudioOut(BaseModel):
    voice: str = "auto"  # OpenAI's voice names are accepted; the agent speaks with the voice it was loaded with
    format: str = "wav"


class Extras(BaseModel):
    """The ``emoslm`` request field."""

    events: bool = False  # every streaming-contract event in the chunks
    think: bool = False  # the think (never in content)
    lang: Optional[Literal["en", "zh"]] = None
    user_emotions: list[Optional[str]] = []  # the perceived emotion of each earlier user turn, in order


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, max_tokens … are accepted and left to the agent

    model: str = "emoslm"
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    modalities: list[Literal["text", "audio"]] = ["text"]
    audio: Optional[AudioOut] = None
    emoslm: Extras = Extras()

    @property
    def speaks(self) -> bool:
        return "audio" in self.modalities


@dataclass
class Parsed:
    """The request's messages as the agent takes them."""

    history: list[Turn] = field(default_factory=list)
    clip: bytes = b""
    clip_param: str = ""
    spoken: list[tuple[int, bytes, str]] = field(default_factory=list)  # earlier user clips: (turn, bytes, param)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):  # noqa: ANN201 - a JSON or an SSE response
    runtime: Runtime = request.app.state.runtime
    if runtime.agent is None:
        raise APIError(404, "this server has no agent (started with --agent none); it serves speech and "
                            "transcription only", "no_agent")
    runtime.check_model(body.model, (runtime.model_id,))
    check_request(body)
    parsed = parse_messages(body.messages, runtime, body.emoslm.user_emotions)
    clip = decode_clip(parsed.clip, parsed.clip_param, runtime.limits.max_audio_seconds)
    await transcribe_earlier(parsed, runtime, body.emoslm.lang or runtime.lang)
    client = request.client.host if request.client else "unknown"
    runtime.open_session(client)
    heard_at = time.perf_counter()
    agent, history, lang = runtime.agent, parsed.history, body.emoslm.lang or runtime.lang
    try:
        events = runtime.turn(lambda: agent.stream(history, clip, lang, heard_at))
    except BaseException:
        runtime.close_session(client)
        raise
    if body.stream:
        return StreamingResponse(runtime.held(sse(body, events, runtime), client),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        reply = await _drain(events)
    finally:
        runtime.close_session(client)
    return JSONResponse(completion(body, reply, runtime))


def check_request(body: ChatRequest) -> None:
    if not body.speaks:
        return
    if body.audio is None:
        raise APIError(400, "'audio' ({voice, format}) is required when modalities include 'audio'",
                       "missing_audio", "audio")
    if body.audio.format not in (*ENCODINGS, *RAW):
        raise APIError(400, f"audio.format '{body.audio.format}' is not supported; use "
                            f"{', '.join([*ENCODINGS, 'pcm16'])}", "unsupported_format", "audio.format")
    if body.stream and body.audio.format != "pcm16":
        raise APIError(400, "streamed audio is pcm16 only; set audio.format to 'pcm16'", "unsupported_format",
                       "audio.format")


def parse_messages(messages: list[dict[str, Any]], runtime: Runtime, emotions: list[str | None]) -> Parsed:
    """History turns and the newest clip; 400 naming the field for anything malformed."""
    parsed, users = Parsed(), 0
    for i, message in enumerate(messages):
        role, where = message.get("role"), f"messages[{i}]"
        last = i == len(messages) - 1
        if role in ("system", "developer"):
            continue  # the agent has its own instructions (the IEAT empathy prompt)
        if role == "assistant":
            parsed.history.append(Turn("assistant", _assistant_text(message, where, runtime)))
        elif role == "user":
            text, clips = _user_parts(message.get("content"), where)
            emotion = emotions[users] if users < len(emotions) else None
            users += 1
            if last:
                if not clips:
                    raise APIError(400, f"{where}: the newest user message needs an input_audio part "
                                        "(emoslm answers speech)", "missing_audio", f"{where}.content")
                if text:
                    parsed.history.append(Turn("user", text, emotion))
                (parsed.clip_param, parsed.clip), = clips[-1:]
            elif clips:
                parsed.history.append(Turn("user", text, emotion))
                parsed.spoken.append((len(parsed.history) - 1, clips[-1][1], clips[-1][0]))
            else:
                parsed.history.append(Turn("user", text, emotion))
        else:
            raise APIError(400, f"{where}.role must be user, assistant or system, not {role!r}", "invalid_role",
                           f"{where}.role")
    if not parsed.clip:
        raise APIError(400, "the last message must be the user's, with an input_audio part", "missing_audio",
                       "messages")
    return parsed


def _user_parts(content: Any, where: str) -> tuple[str, list[tuple[str, bytes]]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise APIError(400, f"{where}.content must be a string or a list of parts", "invalid_content",
                       f"{where}.content")
    texts, clips = [], []
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict):
                raise APIError(400, f"{param}.input_audio must be an object with data and format", "invalid_content",
                               f"{param}.input_audio")
            clips.append((f"{param}.input_audio.data", b64_bytes(audio.get("data"), f"{param}.input_audio.data")))
        else:
            raise APIError(400, f"{param}.type must be 'text' or 'input_audio', not {kind!r}", "invalid_content",
                           f"{param}.type")
    return " ".join(t for t in texts if t), clips


def _assistant_text(message: dict[str, Any], where: str, runtime: Runtime) -> str:
    audio = message.get("audio")
    if isinstance(audio, dict) and audio.get("id"):
        stored = runtime.audio.get(str(audio["id"]))
        if stored is None:
            raise APIError(400, f"{where}.audio.id: unknown or expired audio id {audio['id']!r}", "invalid_audio_id",
                           f"{where}.audio.id")
        return stored.transcript
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


async def transcribe_earlier(parsed: Parsed, runtime: Runtime, lang: str | None) -> None:
    """Earlier user turns given as audio enter the history as their transcripts."""
    asr = getattr(runtime.agent, "asr", None)
    for turn, data, param in parsed.spoken:
        clip = decode_clip(data, param, runtime.limits.max_audio_seconds)
        if asr is None:
            raise APIError(400, f"{param}: this agent cannot transcribe earlier turns; send them as text",
                           "unsupported", param)
        heard = await runtime.run(lambda clip=clip: asr.transcribe(clip, lang))
        before = parsed.history[turn].text
        parsed.history[turn].text = f"{before} {heard.text}".strip()


async def _drain(events: AsyncIterator[Event]) -> Reply:
    async for event in events:
        if isinstance(event, Error):
            internal = event.message.startswith("internal error")
            raise APIError(500 if internal else 400, event.message, "agent_error")
        if isinstance(event, Cancelled) and event.reason == NO_SPEECH:
            raise APIError(400, "no words were heard in the audio, so there is nothing to answer", "no_speech",
                           "messages")
        if isinstance(event, Cancelled):
            raise APIError(503, "the turn was cancelled (the server is shutting down)", "cancelled")
        if isinstance(event, Done):
            return event.reply
    raise APIError(500, "the agent ended without a reply", "agent_error")


def extras(reply: Reply, think: bool) -> dict[str, Any]:
    """The ``emoslm`` response field."""
    out: dict[str, Any] = {"emotion": reply.emotion.to_json() if reply.emotion else None,
                           "think_emotion": reply.think_emotion, "transcript": reply.transcript,
                           "lang": reply.lang, "timings": reply.timings}
    if think:
        out["think"] = reply.think
    return out


def completion(body: ChatRequest, reply: Reply, runtime: Runtime) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
    if body.speaks:
        audio_id, expires_at = runtime.audio.put(reply.text, reply.audio)
        data = encode_audio(reply.audio, body.audio.format, reply.sample_rate)
        message["content"] = None
        message["audio"] = {"id": audio_id, "data": _b64(data), "transcript": reply.text, "expires_at": expires_at}
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": body.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
            "usage": None, "emoslm": extras(reply, body.emoslm.think)}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def sse(body: ChatRequest, events: AsyncIterator[Event], runtime: Runtime) -> AsyncIterator[str]:
    """The turn as ``chat.completion.chunk`` server-sent events."""
    stream = ChunkWriter(body)
    yield stream.chunk({"role": "assistant", "content": None if body.speaks else ""})
    async for event in events:
        for chunk in stream.on(event, runtime):
            yield chunk
        if isinstance(event, (Done, Error, Cancelled)):
            break
    yield "data: [DONE]\n\n"


class ChunkWriter:
    """Turns one event into the chunks a client reads (the standard delta, the ``emoslm`` field, or both)."""

    def __init__(self, body: ChatRequest) -> None:
        self.body, self.id, self.created = body, new_id("chatcmpl"), now()
        self.audio_id: str | None = None

    def chunk(self, delta: dict[str, Any], extra: dict[str, Any] | None = None, finish: str | None = None) -> str:
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.body.model,
                                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if extra:
            body["emoslm"] = extra
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def on(self, event: Event, runtime: Runtime) -> Iterator[str]:
        opts, wire = self.body.emoslm, None
        if opts.events and (opts.think or not isinstance(event, ThinkDelta)):
            wire = event.to_wire()
        if isinstance(event, TextDelta):
            delta = {"audio": self._audio(transcript=event.text)} if self.body.speaks else {"content": event.text}
            yield self.chunk(delta, {"event": wire} if wire else None)
        elif isinstance(event, AudioChunk):
            if self.body.speaks:
                data = pcm16_b64(event.audio, event.sample_rate)
                if wire:  # the audio travels once, in the delta
                    wire.update(audio="delta", sample_rate=OPENAI_RATE)
                yield self.chunk({"audio": self._audio(data=data)}, {"event": wire} if wire else None)
        elif isinstance(event, Done):
            reply = event.reply
            delta: dict[str, Any] = {}
            if self.body.speaks:
                audio_id, expires_at = runtime.audio.put(reply.text, reply.audio, self._audio()["id"])
                delta = {"audio": {"id": audio_id, "expires_at": expires_at}}
            extra = {"event": wire} if wire else {}
            yield self.chunk(delta, {**extras(reply, opts.think), **extra}, finish="stop")
        elif isinstance(event, Error):
            yield "data: " + json.dumps({"error": {"message": event.message, "type": "server_error",
                                                   "param": None, "code": "agent_error"},
                                         **({"emoslm": {"event": wire}} if wire else {})}) + "\n\n"
        elif isinstance(event, Cancelled):
            yield self.chunk({}, {"event": wire} if wire else {"cancelled": event.reason}, finish="stop")
        elif wire:
            yield self.chunk({}, {"event": wire})
        elif isinstance(event, Emotion):
            yield self.chunk({}, {"emotion": event.estimate.to_json()})
        elif isinstance(event, ThinkDelta) and opts.think:
            yield self.chunk({}, {"think": event.text})
        elif isinstance(event, Heard) and not event.partial:
            yield self.chunk({}, {"transcript": event.text})

    def _audio(self, **piece: Any) -> dict[str, Any]:
        if self.audio_id is None:
            self.audio_id = f"audio_{new_id('chat')[5:]}"
            return {"id": self.audio_id, **piece}
        return piece if piece else {"id": self.audio_id}
