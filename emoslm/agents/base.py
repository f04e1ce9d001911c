"""The one contract that joins chat, serve and eval: an Agent answers the user's newest audio.

An agent gets the dialogue so far (text turns, its own earlier replies included) and the user's
newest clip, and returns a ``Reply``: the hidden think, the reply text, the emotion it perceived,
the reply audio and per-stage timings. ``stream`` yields the same as events for live use; the
default runs ``respond`` and replays it, agents that can stream override it.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emoslm.perception.estimate import EmotionEstimate


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    text: str
    emotion: str | None = None  # the user's emotion as the agent perceived it


@dataclass
class Reply:
    text: str
    think: str = ""
    transcript: str = ""  # what the agent heard
    lang: str = "en"
    emotion: EmotionEstimate | None = None
    audio: np.ndarray | None = None
    sample_rate: int = 16_000
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    problems: list[str] = field(default_factory=list)  # validation notes (empty when fine)

    def history_turns(self) -> list[Turn]:
        """The two turns this exchange adds to the dialogue history (think is never part of it)."""
        tag = self.emotion.tag if self.emotion else None
        return [Turn("user", self.transcript, tag), Turn("assistant", self.text)]


@dataclass
class Event:
    kind: str  # transcript | emotion | think | text | audio | done
    data: Any


class Agent(abc.ABC):
    name: str = "agent"

    @abc.abstractmethod
    def respond(self, history: list[Turn], audio: np.ndarray, lang: str | None = None) -> Reply:
        """Answer the newest user clip given the earlier turns."""

    def stream(self, history: list[Turn], audio: np.ndarray, lang: str | None = None) -> Iterator[Event]:
        reply = self.respond(history, audio, lang)
        yield Event("transcript", reply.transcript)
        if reply.emotion is not None:
            yield Event("emotion", reply.emotion)
        if reply.think:
            yield Event("think", reply.think)
        yield Event("text", reply.text)
        if reply.audio is not None:
            yield Event("audio", reply.audio)
        yield Event("done", reply)

    def close(self) -> None:
        """Release models and servers."""
