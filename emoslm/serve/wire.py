"""OpenAI's shapes on the server side: the error body, audio in (base64) and out (pcm16/wav/flac/mp3/opus), ids.

OpenAI's audio APIs speak 24 kHz mono 16-bit PCM; emoslm's voices produce 16 kHz. Everything leaving
the server is resampled here, once, so no route does its own conversion.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
import uuid
from typing import Any

import numpy as np
import soundfile as sf

from emoslm.agents.events import encode_pcm16
from emoslm.audio import SAMPLE_RATE, load_audio, resample
from emoslm.errors import AudioError, AudioTooLong, EmoslmError

OPENAI_RATE = 24_000
# response formats → (soundfile format, subtype); "pcm16" (chat) and "pcm" (speech) are raw 24 kHz PCM
ENCODINGS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"),
             "opus": ("OGG", "OPUS")}
RAW = ("pcm16", "pcm")


class APIError(EmoslmError):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.code, self.param)


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
            429: "rate_limit_error", 503: "server_error"}.get(status, "invalid_request_error" if status < 500
                                                               else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def b64_bytes(data: Any, param: str) -> bytes:
    """Base64 text → bytes (a ``data:…;base64,`` prefix is tolerated); 400 naming ``param`` otherwise."""
    if not isinstance(data, str) or not data:
        raise APIError(400, f"{param} must be a non-empty base64 string", "invalid_base64", param)
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{param} is not valid base64", "invalid_base64", param) from None


def decode_clip(data: bytes, param: str, max_seconds: float) -> np.ndarray:
    """A user's clip (WAV, MP3, FLAC, OGG bytes) → 16 kHz float32; 413 when too long, 400 when unusable."""
    try:
        return load_audio(data, max_seconds=max_seconds)
    except AudioError as exc:
        message = str(exc).removeprefix("audio:")  # load_audio names raw bytes "audio"; name the field instead
        status, code = (413, "audio_too_long") if isinstance(exc, AudioTooLong) else (400, "invalid_audio")
        raise APIError(status, f"{param}:{message}", code, param) from None


def pcm16_to_float(data: bytes, param: str) -> np.ndarray:
    if len(data) % 2:
        raise APIError(400, f"{param}: PCM16 audio needs an even number of bytes", "invalid_audio", param)
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0


def to_openai_rate(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    return resample(audio, sample_rate, OPENAI_RATE)


def pcm16_b64(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    """Audio as OpenAI streams it: base64 16-bit little-endian PCM at 24 kHz."""
    return encode_pcm16(to_openai_rate(audio, sample_rate))


def encode_audio(audio: np.ndarray | None, fmt: str, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A whole reply in a response format, at 24 kHz (OpenAI's rate; Opus in Ogg too)."""
    audio = to_openai_rate(np.zeros(0, np.float32) if audio is None else audio, sample_rate)
    pcm = np.clip(audio, -1.0, 1.0)
    if fmt in RAW:
        return (pcm * 32767.0).round().astype("<i2").tobytes()
    if fmt not in ENCODINGS:
        raise APIError(400, f"unsupported audio format '{fmt}'; use {', '.join([*ENCODINGS, *RAW])}",
                       "unsupported_format", "format")
    container, subtype = ENCODINGS[fmt]
    buf = io.BytesIO()
    sf.write(buf, pcm if len(pcm) else np.zeros(OPENAI_RATE // 100, np.float32), OPENAI_RATE,
             format=container, subtype=subtype)
    return buf.getvalue()


MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg",
               "pcm": "audio/pcm", "pcm16": "audio/pcm"}
