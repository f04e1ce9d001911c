"""Live input: audio fed chunk by chunk as a microphone delivers it, turns found by voice activity.

``LiveSession.feed`` takes 16 kHz float32 chunks of any size. Silero VAD (``silero_vad.VADIterator``,
512-sample frames) runs on them as they arrive; while the user talks the agent's ``listen`` hook gets
the speech so far (the teacher transcribes it: partial transcripts), and when the VAD has heard
``min_silence_ms`` of silence the turn begins: the clip goes to the Conversation in a worker thread
and its events come out of ``events()``, stamped from that moment. New speech while a reply is still
streaming is barge-in: the reply is cancelled (a ``Cancelled`` event says so), the Conversation keeps
what was said, and the new speech becomes the next turn.

The latency clock starts when the VAD decides the user has stopped, which is ``min_silence_ms`` after
the last voiced frame; ``SpeechStopped`` reports both moments so that wait stays visible. With a
``TurnEnd`` (``emoslm.perception.turn``) the VAD only reports pauses (``pause_s``, 0.2 s): Smart Turn hears
whether the utterance sounds finished and the turn ends at once if so; if not, the user may go on (the
same turn) until the silence reaches ``patience_s``.

An end of turn can be wrong: between two finished sentences a speaker may pause 0.5 s and go on, and
neither a silence rule nor Smart Turn can tell (both end such turns early: ``benchmarks/results/turns.md``).
So when the user speaks again within ``REJOIN_S`` of the end and the reply has not yet sent any audio,
nothing was heard from the agent: the reply is dropped (``Cancelled("resumed")``), the history forgets
the turn, and the new speech continues it — one turn, answered once.

A server shares one agent between many sessions: it passes ``run`` (how a reply job is started: its
bounded turn queue) and ``offer`` (how a partial-transcript job is started when a worker is idle, or
skipped); alone, a session starts a thread per reply and transcribes partials in ``feed``'s thread.

A session without a fixed language answers in the language its partial transcript heard (once at least
``LANG_FROM_PARTIAL`` seconds of speech were heard): the final transcript then skips Whisper's language
detection, one encoder pass sooner after the user stops. A partial whose utterance has ended before
its job started is not transcribed at all.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future

import numpy as np

from emoslm.agents.base import stoppable
from emoslm.agents.conversation import Conversation
from emoslm.agents.events import AudioChunk, Cancelled, Error, Event, SpeechStarted, SpeechStopped, Transcript
from emoslm.audio import SAMPLE_RATE
from emoslm.errors import EmoslmError, MissingPackageError
from emoslm.perception.turn import TurnEnd

FRAME = 512  # Silero's window at 16 kHz (32 ms)


class StreamingVAD:
    """Silero VAD over a stream: ``push`` a 512-sample frame, get "start"/"end" (sample index) or None."""

    def __init__(self, threshold: float = 0.5, min_silence_ms: int = 400, speech_pad_ms: int = 30) -> None:
        try:
            import torch
            from silero_vad import VADIterator, load_silero_vad
        except ImportError:
            raise MissingPackageError("silero-vad", "live end-of-speech detection", "emoslm[torch]") from None
        self._torch = torch
        self.iterator = VADIterator(load_silero_vad(onnx=True), threshold=threshold, sampling_rate=SAMPLE_RATE,
                                    min_silence_duration_ms=min_silence_ms, speech_pad_ms=speech_pad_ms)
        self.min_silence_s = min_silence_ms / 1000

    def push(self, frame: np.ndarray) -> tuple[str, int] | None:
        found = self.iterator(self._torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32)))
        if not found:
            return None
        kind = "start" if "start" in found else "end"
        return kind, int(found[kind])

    def reset(self) -> None:
        self.iterator.reset_states()


REJOIN_S = 1.5  # speech this soon after an end of turn, before the reply spoke, continues that turn
LANG_FROM_PARTIAL = 1.5  # seconds of speech under which a partial's detected language is not trusted


class LiveSession:
    """One live conversation: push microphone audio in, read the agent's events out."""

    def __init__(self, conversation: Conversation, lang: str | None = None, vad: StreamingVAD | None = None,
                 partial_every: float | None = 1.0, pre_roll: float = 0.3,
                 run: Callable[[Callable[[], None]], Future] | None = None,
                 offer: Callable[[Callable[[], None]], Future | None] | None = None,
                 sink: Callable[[Event], None] | None = None, turn_end: TurnEnd | None = None) -> None:
        self.conversation, self.lang = conversation, lang
        self.turn_end = turn_end
        self.vad = vad or StreamingVAD(min_silence_ms=int(turn_end.pause_s * 1000) if turn_end else 400)
        self.partial_every, self.pre_roll = partial_every, int(pre_roll * SAMPLE_RATE)
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._emit = sink or self._queue.put  # a server passes its own (events go straight to its loop)
        self._pending = np.zeros(0, np.float32)  # less than a frame, waiting for the rest
        self._recent = np.zeros(0, np.float32)  # the last moments before speech (the VAD starts late)
        self._speech: list[np.ndarray] | None = None  # frames of the current utterance, None when silent
        self._samples = 0
        self._since_partial = 0
        self._reply: Future | None = None
        self._cancel = Stop()
        self._run = run or _in_thread
        self._offer = offer
        self._listening: Future | None = None  # a partial transcript being made (with ``offer``)
        self._utterance = 0  # counts utterances, so a late partial of an ended one is dropped
        self._heard_lang: str | None = None  # the language a partial of this utterance was heard in
        self._paused: tuple[int, int] | None = None  # (VAD end sample, frames kept since) of an unfinished pause
        self._ended: tuple[np.ndarray, int] | None = None  # the last turn's audio and end sample, while rejoinable
        self._spoke = threading.Event()  # the reply in progress has sent audio

    # --- input --------------------------------------------------------------------------------------
    def feed(self, chunk: np.ndarray) -> None:
        """Push the next chunk of 16 kHz mono float32 audio."""
        audio = np.concatenate([self._pending, np.asarray(chunk, dtype=np.float32).reshape(-1)])
        whole = len(audio) - len(audio) % FRAME
        self._pending = audio[whole:]
        for start in range(0, whole, FRAME):
            self._frame(audio[start:start + FRAME])

    def finish(self) -> None:
        """The input has ended: a turn still open ends now."""
        if self._speech is not None:
            self._end_of_speech(self._samples)
        self.vad.reset()

    def _frame(self, frame: np.ndarray) -> None:
        self._samples += FRAME
        if self._speech is None:
            self._recent = np.concatenate([self._recent, frame])[-self.pre_roll - FRAME:]
        else:
            self._speech.append(frame)
            self._since_partial += FRAME
        found = self.vad.push(frame)
        if found and found[0] == "start" and self._speech is None:
            self._start_of_speech(found[1])
        elif found and found[0] == "start":
            self._paused = None  # the user went on after a pause that did not sound finished: the same turn
        elif found and found[0] == "end" and self._speech is not None:
            self._pause(found[1])
        elif self._paused is not None:
            self._wait_after_pause()
        elif (self._speech is not None and self.partial_every is not None
              and self._since_partial >= self.partial_every * SAMPLE_RATE):
            self._since_partial = 0
            self._partial(np.concatenate(self._speech))

    def _partial(self, speech: np.ndarray) -> None:
        utterance = self._utterance

        def listen() -> None:
            if utterance != self._utterance:  # the user stopped before this job could start
                return
            for event in self.conversation.agent.listen(speech, self.lang):
                if utterance == self._utterance:  # still talking: the partial is news
                    if isinstance(event, Transcript) and len(speech) >= LANG_FROM_PARTIAL * SAMPLE_RATE:
                        self._heard_lang = event.lang
                    self._emit(event)

        if self._offer is None:
            listen()
        elif self._listening is None or self._listening.done():
            self._listening = self._offer(listen)

    def clear(self) -> None:
        """Forget the speech heard so far in the current utterance (the input buffer is cleared)."""
        self._pending = np.zeros(0, np.float32)
        if self._speech is not None:
            self._speech, self._utterance = None, self._utterance + 1
        self._paused = None
        self._recent = np.zeros(0, np.float32)
        self.vad.reset()

    def _start_of_speech(self, sample: int) -> None:
        earlier = self._rejoinable(sample)
        if self.replying:
            self.stop("resumed" if earlier is not None else "barge-in")  # it stops at its next event, saying so
        self._speech, self._since_partial, self._heard_lang = [*earlier, self._recent] if earlier is not None else [
            self._recent], 0, None
        self._emit(SpeechStarted(at=round(sample / SAMPLE_RATE, 3)))

    def _rejoinable(self, sample: int) -> list[np.ndarray] | None:
        """The last turn's audio when this speech continues it (soon after, before the reply spoke)."""
        ended, self._ended = self._ended, None
        if ended is None or self._spoke.is_set() or sample - ended[1] > REJOIN_S * SAMPLE_RATE:
            return None
        return [ended[0]] if self.replying else None

    def _pause(self, sample: int) -> None:
        """The VAD heard silence: the turn ends here unless a ``TurnEnd`` hears an unfinished utterance."""
        if self.turn_end is None or self.turn_end.finished(np.concatenate(self._speech)):
            self._end_of_speech(sample)
        else:
            self._paused = (sample, 0)

    def _wait_after_pause(self) -> None:
        sample, kept = self._paused
        self._paused = (sample, kept + 1)
        if (kept + 1) * FRAME >= (self.turn_end.patience_s - self.turn_end.pause_s) * SAMPLE_RATE:
            self._end_of_speech(sample, drop=kept + 1)  # silence long enough: the turn ends where it paused

    def _end_of_speech(self, sample: int, drop: int = 0) -> None:
        heard_at = time.perf_counter()
        self._paused = None
        speech = self._speech[: len(self._speech) - drop] if drop else self._speech
        audio, self._speech, self._recent = np.concatenate(speech), None, np.zeros(0, np.float32)
        self._utterance += 1
        self._emit(SpeechStopped(at=round(sample / SAMPLE_RATE, 3), seconds=round(len(audio) / SAMPLE_RATE, 3)))
        self.answer(audio, heard_at, self._heard_lang)
        self._ended = (audio, sample)

    def answer(self, audio: np.ndarray, heard_at: float | None = None, lang: str | None = None) -> None:
        """Start the reply to ``audio`` (a turn the caller ended itself, e.g. a committed input buffer);
        ``lang`` where the session has none of its own and the language was heard already."""
        heard_at = time.perf_counter() if heard_at is None else heard_at
        previous, cancel = self._reply, Stop()
        self._cancel, self._ended = cancel, None
        self._spoke = threading.Event()
        lang = self.lang or lang
        try:
            self._reply = self._run(lambda: self._answer(audio, heard_at, previous, cancel, lang))
        except EmoslmError as exc:  # a server's queue is full: this turn gets no reply, and says so
            self._emit(Error(str(exc), t=time.perf_counter() - heard_at))

    # --- output -------------------------------------------------------------------------------------
    def _answer(self, audio: np.ndarray, heard_at: float, previous: Future | None, cancel: Stop,
                lang: str | None) -> None:
        if previous is not None:
            with contextlib.suppress(CancelledError):  # a server dropped it unstarted at shutdown
                previous.exception()  # the earlier reply (cancelled by barge-in) has ended: the history is whole
        if cancel.is_set():  # cancelled while it waited for a worker
            self._emit(Cancelled(cancel.reason, t=time.perf_counter() - heard_at))
            return
        spoke, kept = self._spoke, len(self.conversation.history)
        events = self.conversation.stream(audio, lang, heard_at=heard_at)
        try:
            with stoppable(cancel):  # a wait for the voice ends at once on barge-in
                for event in events:
                    if cancel.is_set():
                        events.close()
                        if cancel.reason == "resumed":  # the turn goes on: it is answered once, when it ends
                            del self.conversation.history[kept:]
                        self._emit(Cancelled(cancel.reason, t=time.perf_counter() - heard_at))
                        return
                    if isinstance(event, AudioChunk):
                        spoke.set()
                    self._emit(event)
        except Exception as exc:  # noqa: BLE001 - a live session reports, it does not die
            self._emit(Error(f"{type(exc).__name__}: {exc}", t=time.perf_counter() - heard_at))

    @property
    def speaking(self) -> bool:
        """The user is talking now (the VAD heard speech start and not yet its end)."""
        return self._speech is not None

    @property
    def speech_seconds(self) -> float:
        """How long the current utterance has lasted so far (0 when nobody is talking)."""
        return sum(len(f) for f in self._speech) / SAMPLE_RATE if self._speech is not None else 0.0

    @property
    def replying(self) -> bool:
        return self._reply is not None and not self._reply.done()

    def events(self, timeout: float = 0.0) -> Iterator[Event]:
        """Events produced so far; with ``timeout``, wait up to that long for each next one."""
        while True:
            try:
                event = self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
            except queue.Empty:
                return
            if event is not None:
                yield event

    def wait(self) -> None:
        """Block until the reply in progress (if any) has finished or been cancelled."""
        if self._reply is not None:
            with contextlib.suppress(CancelledError):
                self._reply.exception()

    def stop(self, reason: str = "cancelled") -> None:
        """Ask the reply in progress (or still waiting for a worker) to stop, without waiting."""
        if self.replying:
            self._cancel.reason = reason
            self._cancel.set()

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop the reply in progress and wait for it to end."""
        self.stop(reason)
        self.wait()

    close = cancel


class Stop(threading.Event):
    """A reply's cancellation with its reason (each reply its own: a later stop must not rename an earlier one)."""

    reason = "barge-in"


def _in_thread(job: Callable[[], None]) -> Future:
    """Run ``job`` in a thread of its own; the future ends with it."""
    done: Future = Future()

    def work() -> None:
        try:
            job()
            done.set_result(None)
        except BaseException as exc:  # noqa: BLE001 - kept on the future
            done.set_exception(exc)

    threading.Thread(target=work, daemon=True, name="emoslm-live-reply").start()
    return done
