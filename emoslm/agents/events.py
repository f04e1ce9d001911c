"""The events an agent streams while it answers one user turn, and their JSON wire form.

Every event carries ``t``: seconds since the end of the user's speech (the moment a live listener
decided the user stopped, or the moment a whole clip was handed over), so latency reads straight off
the stream. ``to_wire`` gives one JSON object (``type`` names the event; audio travels as base64
PCM16 with its sample rate) and ``from_wire`` reads it back: the server, ``chat --events`` and the
remote agent all speak this form.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from emoslm.perception.estimate import EmotionEstimate


@dataclass
class Turn:
    """One turn of the dialogue history; user turns keep the emotion the agent perceived in them."""

    role: str  # "user" | "assistant"
    text: str
    emotion: str | None = None


@dataclass
class Reply:
    """Everything one answered turn produced; ``respond`` returns it, ``Done`` carries it."""

    text: str
    think: str = ""
    transcript: str = ""  # what the agent heard
    lang: str = "en"
    emotion: EmotionEstimate | None = None  # what a recogniser perceived in the voice and words
    think_emotion: str | None = None  # the tag the think named (the unified model's own reading)
    audio: np.ndarray | None = None
    sample_rate: int = 16_000
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, and first text/audio
    problems: list[str] = field(default_factory=list)  # validation notes (empty when fine)
    cancelled: bool = False  # cut short by barge-in; text and audio hold what was produced

    @property
    def perceived(self) -> str | None:
        """The user's emotion as this agent understood it: the recogniser's, else the think's."""
        return self.emotion.tag if self.emotion else self.think_emotion

    def history_turns(self) -> list[Turn]:
        """The two turns this exchange adds to the dialogue history (the think never is one)."""
        return [Turn("user", self.transcript, self.perceived), Turn("assistant", self.text)]

    def to_wire(self) -> dict[str, Any]:
        wire = {k: v for k, v in asdict(self).items() if k not in ("audio", "emotion")}
        wire["emotion"] = self.emotion.to_json() if self.emotion else None
        wire["audio_seconds"] = 0.0 if self.audio is None else round(len(self.audio) / self.sample_rate, 3)
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any], audio: np.ndarray | None = None) -> Reply:
        known = {f.name for f in fields(cls)} - {"audio", "emotion"}
        emotion = EmotionEstimate.from_json(wire["emotion"]) if wire.get("emotion") else None
        return cls(**{k: v for k, v in wire.items() if k in known}, emotion=emotion, audio=audio)


@dataclass
class Event:
    type: ClassVar[str] = "event"
    t: float = field(default=0.0, kw_only=True)  # seconds since the end of the user's speech

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "t": round(self.t, 4), **self._payload()}

    def _payload(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "t"}


@dataclass
class SpeechStarted(Event):
    """Live input: the voice-activity detector heard the user start (a reply in progress is cut)."""

    type: ClassVar[str] = "speech_started"
    at: float = 0.0  # seconds into the input stream


@dataclass
class SpeechStopped(Event):
    """Live input: the user stopped; the turn begins now (``t`` = 0)."""

    type: ClassVar[str] = "speech_stopped"
    at: float = 0.0
    seconds: float = 0.0  # length of the user's speech


@dataclass
class Transcript(Event):
    type: ClassVar[str] = "transcript"
    text: str
    lang: str = "en"
    partial: bool = False  # live input: heard so far, while the user is still talking


@dataclass
class Emotion(Event):
    type: ClassVar[str] = "emotion"
    estimate: EmotionEstimate

    def _payload(self) -> dict[str, Any]:
        return {"estimate": self.estimate.to_json()}


@dataclass
class ThinkDelta(Event):
    type: ClassVar[str] = "think"
    text: str


@dataclass
class TextDelta(Event):
    type: ClassVar[str] = "text"
    text: str


@dataclass
class AudioChunk(Event):
    """A spoken clause of the reply: float32 mono in memory, base64 PCM16 on the wire."""

    type: ClassVar[str] = "audio"
    audio: np.ndarray
    sample_rate: int = 16_000
    text: str = ""  # the clause it says

    def _payload(self) -> dict[str, Any]:
        return {"audio": encode_pcm16(self.audio), "sample_rate": self.sample_rate, "format": "pcm16",
                "text": self.text}


@dataclass
class Timing(Event):
    type: ClassVar[str] = "timing"
    stage: str
    seconds: float


@dataclass
class Cancelled(Event):
    """The reply was cut short (barge-in, or the caller stopped listening)."""

    type: ClassVar[str] = "cancelled"
    reason: str = "barge-in"


@dataclass
class Error(Event):
    type: ClassVar[str] = "error"
    message: str


@dataclass
class Done(Event):
    type: ClassVar[str] = "done"
    reply: Reply

    def _payload(self) -> dict[str, Any]:
        return {"reply": self.reply.to_wire()}


EVENT_TYPES: dict[str, type[Event]] = {cls.type: cls for cls in (
    SpeechStarted, SpeechStopped, Transcript, Emotion, ThinkDelta, TextDelta, AudioChunk, Timing, Cancelled,
    Error, Done)}


def from_wire(wire: dict[str, Any]) -> Event:
    """The event a wire object describes (the inverse of ``to_wire``)."""
    kind = wire.get("type")
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r}")
    body = {k: v for k, v in wire.items() if k not in ("type", "t")}
    if kind == "emotion":
        body["estimate"] = EmotionEstimate.from_json(body["estimate"])
    elif kind == "audio":
        body.pop("format", None)
        body["audio"] = decode_pcm16(body["audio"])
    elif kind == "done":
        body["reply"] = Reply.from_wire(body["reply"])
    return EVENT_TYPES[kind](**body, t=float(wire.get("t", 0.0)))


def encode_pcm16(audio: np.ndarray) -> str:
    """float32 in [-1, 1] → little-endian 16-bit PCM → base64 (what OpenAI's audio APIs carry)."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    return base64.b64encode(pcm.tobytes()).decode("ascii")


def decode_pcm16(data: str) -> np.ndarray:
    pcm = np.frombuffer(base64.b64decode(data), dtype="<i2")
    return (pcm.astype(np.float32) / 32767.0).astype(np.float32)
