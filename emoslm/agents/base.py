"""The one contract that joins chat, serve, eval and the demo: an Agent answers the user's newest audio.

An agent gets the dialogue so far (``Turn``s: the user's words with the emotion perceived in them,
its own earlier replies) and the user's newest clip, and *streams* its answer as typed events
(``emoslm.agents.events``): what it heard, the emotion, think deltas, reply deltas, audio chunks of
the spoken reply clause by clause, stage timings, and finally ``Done`` with the whole ``Reply``.
Streaming is the primitive: ``respond`` only drains ``stream``, so both give the same reply.

Agents implement ``_events``; ``stream`` stamps every event with the seconds since the end of the
user's speech, records first-text/first-audio latency in the reply's timings, and turns a user-facing
error into an ``Error`` event. Agents are context managers (``with load_agent(...) as agent``).
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import queue
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np

from emoslm.agents.events import (
    AudioChunk,
    Cancelled,
    Done,
    Error,
    Event,
    Reply,
    TextDelta,
    ThinkDelta,
    Timing,
    Transcript,
    Turn,
)
from emoslm.audio import SAMPLE_RATE
from emoslm.errors import EmoslmError
from emoslm.perception.asr import ASRPool
from emoslm.speech.prosody import Prosody
from emoslm.speech.voice import Clauses, Voice, VoiceChunk
from emoslm.textnorm import tokens

__all__ = ["NO_SPEECH", "Agent", "Cancelled", "Reply", "Spoken", "Turn", "reply_of", "speak_along"]
NO_SPEECH = "no-speech"  # the reason of a turn cancelled because its transcript holds no words


class Agent(abc.ABC):
    parallel: int = 1  # turns it can answer at the same moment (a batched LLM context: ``slots``)
    name: str = "agent"
    asr: ASRPool | None = None  # agents that hear with Whisper transcribe live speech as it grows

    @abc.abstractmethod
    def _events(self, history: list[Turn], audio: np.ndarray, lang: str | None) -> Iterator[Event]:
        """Answer the newest user clip given the earlier turns; the last event is ``Done``."""

    def stream(self, history: list[Turn], audio: np.ndarray, lang: str | None = None,
               heard_at: float | None = None) -> Iterator[Event]:
        """The answer as events, each stamped with seconds since ``heard_at`` (the end of the user's
        speech, a ``time.perf_counter()`` value; default: now)."""
        start = time.perf_counter() if heard_at is None else heard_at
        timings: dict[str, float] = {}
        events = self._events(history, audio, lang)
        try:
            for event in events:
                event.t = time.perf_counter() - start
                if isinstance(event, Timing):
                    timings[event.stage] = event.seconds
                elif isinstance(event, (TextDelta, AudioChunk)):
                    timings.setdefault("first_text" if isinstance(event, TextDelta) else "first_audio",
                                       round(event.t, 4))
                elif isinstance(event, Done):
                    event.reply.timings.update({**timings, "total": round(event.t, 4)})
                yield event
                if isinstance(event, Transcript) and not event.partial and not tokens(event.text):
                    # noise the VAD took for speech: no words, so nothing to answer (and no reply to a cough)
                    yield Cancelled(NO_SPEECH, t=time.perf_counter() - start)
                    return
        except EmoslmError as exc:
            yield Error(str(exc), t=time.perf_counter() - start)
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()

    def listen(self, speech_so_far: np.ndarray, lang: str | None = None) -> Iterator[Event]:
        """Work done while the user is still talking (live input): a partial transcript of the speech so far."""
        if self.asr is None or len(speech_so_far) < SAMPLE_RATE // 2:
            return
        heard = self.asr.transcribe(speech_so_far, lang)
        if heard.text:
            yield Transcript(heard.text, lang or heard.language, partial=True)

    def settle(self, seconds: float) -> None:
        """A recorded clip is replayed: the user would have been talking for ``seconds``, time in which work
        the agent started for the next turn (a prompt prefill) gets done in a live dialogue. Waiting for it
        here, at most that long, keeps a replayed turn's latency what a live user would see. Agents without
        such work return at once."""

    def respond(self, history: list[Turn], audio: np.ndarray, lang: str | None = None) -> Reply:
        """The whole reply: ``stream``, drained."""
        return reply_of(self.stream(history, audio, lang))

    def close(self) -> None:
        """Release models and servers."""

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reply_of(events: Iterator[Event]) -> Reply:
    """Drain a turn's events into its reply; an ``Error`` event is raised as the error it reports."""
    for event in events:
        if isinstance(event, Error):
            raise EmoslmError(event.message)
        if isinstance(event, Cancelled) and event.reason == NO_SPEECH:
            raise EmoslmError("no words were heard in the audio, so there is nothing to answer; check the recording")
        if isinstance(event, Done):
            return event.reply
    raise EmoslmError("the agent ended its stream without a reply")


class Spoken:
    """What ``speak_along`` gathered: the reply text, the think, the audio and the synthesis time."""

    def __init__(self) -> None:
        self.think, self.text, self.chunks, self.tts_seconds = "", "", [], 0.0
        self.result: Any = None  # the pieces generator's own return value
        self.marks: dict[str, float] = {}  # seconds thinking, then writing

    @property
    def audio(self) -> np.ndarray | None:
        return np.concatenate([c.audio for c in self.chunks]) if self.chunks else None


_STOP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("emoslm_stop", default=None)
POLL = 0.05  # seconds between looks at the stop signal while waiting for the voice


@contextlib.contextmanager
def stoppable(stop: threading.Event) -> Iterator[None]:
    """Streams consumed inside this block stop waiting for their voice as soon as ``stop`` is set.

    A consumer acts on barge-in between events, but a speaking agent can go seconds without one: it
    waits for the first clause's audio (the writer pauses meanwhile) and, after the text, for the last
    clauses. Those waits watch ``stop``, so the next event, and with it the cancellation, comes at once.
    Generators run in the context of whoever calls ``next``, so the consumer's thread sets it here.
    """
    token = _STOP.set(stop)
    try:
        yield
    finally:
        _STOP.reset(token)


class Speaker:
    """A voice in a worker thread: clauses go in as they are written, spoken chunks come out in order.

    The LLM keeps the caller's thread and is never handed across threads token by token (measured on
    2 cores: a queue hand-off per token cost llama.cpp a third of its speed); the worker only wakes
    once per clause.
    """

    def __init__(self, voice: Voice, prosody: Prosody | Any, spoken: Spoken) -> None:
        self.voice, self.prosody, self.spoken = voice, prosody, spoken
        self.clauses: queue.Queue[str | None] = queue.Queue()
        self.done: queue.Queue[VoiceChunk | None | BaseException] = queue.Queue()
        self.stopped = threading.Event()
        self.first_done = threading.Event()  # the first clause was spoken, found unspeakable or failed
        self.worker = threading.Thread(target=self._work, name="emoslm-speaker", daemon=True)
        self.worker.start()

    def say(self, clause: str) -> None:
        if callable(self.prosody):
            self.prosody = self.prosody()  # asked once, when the first clause is ready
        self.clauses.put(clause)

    def _work(self) -> None:
        while (clause := self.clauses.get()) is not None and not self.stopped.is_set():
            clock = time.perf_counter()
            try:
                chunk = self.voice.clause(clause, self.prosody)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                self.done.put(exc)
                self.first_done.set()
                return
            self.spoken.tts_seconds += time.perf_counter() - clock
            if chunk is not None:
                self.done.put(chunk)
            self.first_done.set()
        self.done.put(None)
        self.first_done.set()

    def ready(self, wait: bool = False, first: bool = False) -> Iterator[Event]:
        """Spoken chunks finished so far (``wait``: all of them, after the last clause was given; ``first``:
        block until the first clause is spoken). A wait ends early once the consumer's ``stoppable`` signal
        is set."""
        if wait:
            self.clauses.put(None)
        stop = _STOP.get()
        if first:
            while not self.first_done.wait(POLL if stop else None):
                if stop is not None and stop.is_set():
                    return
        while True:
            try:
                item = self._next(wait, stop)
            except queue.Empty:
                return
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            self.spoken.chunks.append(item)
            yield AudioChunk(item.audio, item.sample_rate, item.text)

    def _next(self, block: bool, stop: threading.Event | None) -> VoiceChunk | None | BaseException:
        """The next finished item; ``queue.Empty`` when there is none yet (or, blocking, once ``stop`` is set)."""
        if not block:
            return self.done.get_nowait()
        while True:
            try:
                return self.done.get(timeout=POLL if stop else None)
            except queue.Empty:
                if stop is not None and stop.is_set():
                    raise

    def stop(self) -> None:
        self.stopped.set()
        self.clauses.put(None)


def written(pieces: Generator[Any, None, Any], spoken: Spoken) -> Iterator[tuple[Any, Event | None]]:
    """Each piece of a think-then-reply stream with the delta event it makes (None for an empty piece or one
    that is not text, such as the speech branch's units); the think and reply gather in ``spoken``, the
    stream's return value in ``spoken.result``, the seconds spent thinking and then writing in
    ``spoken.marks``. The caller closes ``pieces`` when it stops early."""
    started = time.perf_counter()
    for piece in _with_result(pieces, spoken):
        event: Event | None = None
        if piece.text and piece.part == "think":
            spoken.think += piece.text
            event = ThinkDelta(piece.text)
        elif piece.text and piece.part == "reply":
            spoken.marks.setdefault("think", time.perf_counter() - started)
            spoken.text += piece.text
            event = TextDelta(piece.text)
        yield piece, event
    spoken.marks.setdefault("think", time.perf_counter() - started)
    spoken.marks["write"] = time.perf_counter() - started - spoken.marks["think"]


def _with_result(pieces: Generator[Any, None, Any], spoken: Spoken) -> Iterator[Any]:
    while True:
        try:
            yield next(pieces)
        except StopIteration as end:
            spoken.result = end.value
            return


def speak_along(pieces: Generator[Any, None, Any], voice: Voice | None, prosody: Prosody | Any,
                spoken: Spoken, by_clause: bool = True) -> Iterator[Event]:
    """Think and reply deltas as events, the reply spoken clause by clause as soon as each clause is written.

    ``pieces`` yields objects with ``part`` ("think" or "reply") and ``text``; each finished clause goes
    to a ``Speaker`` thread, so the LLM writes the next clause while the voice speaks this one, and the
    spoken chunks are passed on as soon as they are ready. ``prosody`` may be a callable, asked when the
    first clause is spoken (the unified model's prosody follows its own think). ``by_clause=False`` is
    the blocking pipeline, kept for comparison: the whole reply is spoken in one synthesis call after
    the LLM has finished.

    The writer waits while the first clause is synthesised: first audio is what the listener waits for,
    and the next clauses can be written while it plays. On 2 AVX2 cores the writer beside Kokoro made a
    zh first clause 8.2 s instead of 6.8 s in one turn, and no measurable difference in two others.
    """
    clauses = Clauses()
    speaker = Speaker(voice, prosody, spoken) if voice is not None else None
    try:
        for piece, event in written(pieces, spoken):
            if speaker is not None:
                yield from speaker.ready()
            if event is None:
                continue
            yield event
            if isinstance(event, TextDelta) and by_clause and speaker is not None:
                for clause in clauses.feed(piece.text):
                    speaker.say(clause)
                    if clauses.given == 1:
                        yield from speaker.ready(first=True)
        if speaker is not None:
            rest = clauses.flush() if by_clause else [t for t in [spoken.text.strip()] if t]  # blocking: at once
            for clause in rest:
                speaker.say(clause)
            yield from speaker.ready(wait=True)
    finally:
        pieces.close()
        if speaker is not None:
            speaker.stop()
    for stage, seconds in spoken.marks.items():
        yield Timing(stage, round(seconds, 4))
    if spoken.chunks:
        yield Timing("tts", round(spoken.tts_seconds, 4))
