"""``POST /v1/audio/speech``, ``POST /v1/audio/transcriptions`` and ``GET /v1/models`` in OpenAI's shapes.

Speech is spoken by the process-wide voice pool (the agent's voices, loaded once) clause by clause, so
``stream_format: "sse"`` (``speech.audio.delta`` / ``speech.audio.done``) and raw PCM streaming send
the first clause while the rest is synthesised. emoslm extension: ``emotion`` picks the prosody of a
reply to a user who feels that way. Transcription is the agent's Whisper (or the default ASR).

A ``voice`` is one of OpenAI's names (spoken by the server's default voice) or an emoslm voice spec
from a fixed set (``piper``, ``hibari``, ``kokoro:VOICE``, ``espeak:VOICE``, ``flite:VOICE``, a packaged
Piper model by name): nothing
a request sends becomes a file path or a URL the server would fetch.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Literal, Optional

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from emoslm.emotions import TAGS
from emoslm.language import of_text
from emoslm.serve.runtime import Runtime
from emoslm.serve.wire import MEDIA_TYPES, APIError, decode_clip, encode_audio, pcm16_b64
from emoslm.speech.prosody import Prosody, reply
from emoslm.speech.voice import Voice, VoiceChunk, voice_pool
from emoslm.store import REGISTRY

router = APIRouter()

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
                 "marin", "cedar")
SAFE_ARG = re.compile(r"^[a-z0-9][a-z0-9_+-]{0,40}$")


class SpeechRequest(BaseModel):
    """OpenAI's speech request body, plus ``emotion``."""

    input: str = Field(min_length=1)
    model: str = "emoslm"
    voice: str = "auto"
    instructions: Optional[str] = None
    response_format: Literal["wav", "pcm", "flac", "mp3", "opus"] = "wav"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    emotion: Optional[str] = None  # emoslm extension: the user's emotion → the prosody of a reply


def voice_spec(voice: str, default: str) -> str:
    """The voice spec a request's ``voice`` names, from the fixed set only."""
    if voice in ("", "auto", *OPENAI_VOICES):
        return default
    backend, _, arg = voice.partition(":")
    if backend in ("piper", "espeak", "flite", "kokoro", "hibari") and (not arg or SAFE_ARG.match(arg)):
        if backend != "piper" or not arg or REGISTRY.get(arg) is not None and arg.startswith("piper-"):
            return voice
    raise APIError(400, f"unknown voice {voice!r}; use one of OpenAI's names, auto, piper, hibari, kokoro[:VOICE], "
                        "espeak[:VOICE] or flite[:VOICE]", "invalid_voice", "voice")


def _lang_of(text: str) -> str:
    return of_text(text)


@router.post("/v1/audio/speech")
async def speech(body: SpeechRequest, request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    if len(body.input) > runtime.limits.max_speech_chars:
        raise APIError(413, f"input is {len(body.input)} characters, over the {runtime.limits.max_speech_chars} "
                            "limit; split it", "input_too_long", "input")
    if body.emotion is not None and body.emotion not in TAGS:
        raise APIError(400, f"unknown emotion {body.emotion!r}; use one of {', '.join(TAGS)}", "invalid_emotion",
                       "emotion")
    runtime.check_model(body.model, runtime.speech_models)
    lang = _lang_of(body.input)
    spec = voice_spec(body.voice, runtime.voice)
    client = request.client.host if request.client else "unknown"
    with runtime.session(client):  # per-client limits: a page cannot queue speech without end
        voice = await runtime.run(lambda: voice_pool().voice(spec, lang))
        base = reply(body.emotion) if body.emotion else Prosody()
        prosody = Prosody(rate=base.rate * body.speed, pitch=base.pitch, energy=base.energy,
                          variability=base.variability, style=base.style)
        if body.stream_format != "sse" and body.response_format != "pcm":
            audio = await runtime.run(lambda: voice.speak(body.input, prosody))
            return Response(encode_audio(audio, body.response_format, voice.sample_rate),
                            media_type=MEDIA_TYPES[body.response_format])
    runtime.open_session(client)  # streamed: the slot is held until the last chunk
    if body.stream_format == "sse":
        chunks, media = _sse(runtime, voice, body.input, prosody), "text/event-stream"
    else:
        chunks, media = _pcm(runtime, voice, body.input, prosody), MEDIA_TYPES["pcm"]
    return StreamingResponse(runtime.held(chunks, client), media_type=media)


async def _clauses(runtime: Runtime, voice: Voice, text: str, prosody: Prosody) -> AsyncIterator[VoiceChunk]:
    """The voice's clauses, each synthesised on the job lane."""
    stream: Iterator[VoiceChunk] = voice.stream(text, prosody)
    while (chunk := await runtime.run(lambda: next(stream, None))) is not None:
        yield chunk


async def _sse(runtime: Runtime, voice: Voice, text: str, prosody: Prosody) -> AsyncIterator[str]:
    async for chunk in _clauses(runtime, voice, text, prosody):
        delta = {"type": "speech.audio.delta", "audio": pcm16_b64(chunk.audio, chunk.sample_rate)}
        yield f"data: {json.dumps(delta)}\n\n"
    usage = {"input_tokens": len(text.split()), "output_tokens": 0, "total_tokens": len(text.split())}
    yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n"


async def _pcm(runtime: Runtime, voice: Voice, text: str, prosody: Prosody) -> AsyncIterator[bytes]:
    async for chunk in _clauses(runtime, voice, text, prosody):
        yield encode_audio(chunk.audio, "pcm", chunk.sample_rate)


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request, file: UploadFile = File(...), model: str = Form("whisper-1"),  # noqa: B008
                         language: Optional[str] = Form(None), prompt: Optional[str] = Form(None),
                         response_format: str = Form("json"), temperature: float = Form(0.0),
                         stream: bool = Form(False)) -> Response:
    runtime: Runtime = request.app.state.runtime
    runtime.check_model(model, runtime.transcription_models)
    if language not in (None, "", "en", "zh"):
        raise APIError(400, f"language {language!r} is not served; use en or zh (or omit it to detect)",
                       "unsupported_language", "language")
    if response_format not in ("json", "text", "srt", "verbose_json", "vtt"):
        raise APIError(400, f"response_format {response_format!r}: use json, text, srt, verbose_json or vtt",
                       "unsupported_format", "response_format")
    clip = decode_clip(await file.read(), "file", runtime.limits.max_audio_seconds)
    asr = runtime.asr()
    lang = language or None
    with runtime.session(request.client.host if request.client else "unknown"):  # per-client limits
        timestamps = response_format in ("srt", "verbose_json", "vtt")  # one segment per phrase
        heard = await runtime.run(lambda: asr.transcribe(clip, lang, timestamps=timestamps))
    if stream:
        events = [{"type": "transcript.text.delta", "delta": heard.text},
                  {"type": "transcript.text.done", "text": heard.text}]
        return StreamingResponse(iter(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events),
                                 media_type="text/event-stream")
    if response_format == "text":
        return PlainTextResponse(heard.text + "\n")
    if response_format in ("srt", "vtt"):
        return PlainTextResponse(_subtitles(heard, response_format))
    if response_format == "verbose_json":
        segments = [{"id": i, "start": round(s.start, 2), "end": round(s.end, 2), "text": t}
                    for i, (s, t) in enumerate(zip(heard.segments, heard.pieces, strict=False))]
        return JSONResponse({"task": "transcribe", "language": heard.language, "duration": round(heard.duration, 2),
                             "text": heard.text, "segments": segments})
    return JSONResponse({"text": heard.text})


def _subtitles(heard, fmt: str) -> str:  # noqa: ANN001 - an asr.Transcript
    def stamp(seconds: float) -> str:
        ms = int(round(seconds * 1000))
        h, m, s = ms // 3_600_000, ms // 60_000 % 60, ms // 1000 % 60
        return f"{h:02d}:{m:02d}:{s:02d}{',' if fmt == 'srt' else '.'}{ms % 1000:03d}"

    cues = [f"{stamp(s.start)} --> {stamp(s.end)}\n{t}\n"
            for s, t in zip(heard.segments, heard.pieces, strict=False)]
    if fmt == "srt":
        return "\n".join(f"{i}\n{cue}" for i, cue in enumerate(cues, 1))
    return "WEBVTT\n\n" + "\n".join(cues)


@router.get("/v1/models")
async def models(request: Request) -> dict:
    runtime: Runtime = request.app.state.runtime
    created = 1767225600  # 2026-01-01: the paper's year; the ids do not change between runs
    ids = ([runtime.model_id] if runtime.agent is not None else []) + ["whisper-1", "tts-1"]
    return {"object": "list", "data": [{"id": i, "object": "model", "created": created, "owned_by": "emoslm"}
                                       for i in ids]}

