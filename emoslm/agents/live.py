"""Live input: audio fed chunk by chunk as a microphone delivers it, turns found by voice activity.

``LiveSession.feed`` takes 16 kHz float32 chunks of any size. Silero VAD (``silero_vad.VADIterator``,
512-sample frames) runs on them as they arrive; while the user talks the agent's ``listen`` hook gets
the speech so far (the teacher transcribes it: partial transcripts), and when the VAD has heard
``min_silence_ms`` of silence the turn begins: the clip goes to the Conversation in a worker thread
and its events come out of ``events()``, stamped from that moment. New speech while a reply is still
streaming is barge-in: the reply is cancelled (a ``Cancelled`` event says so), the Conversation keeps
what was said, and the new speech becomes the next turn.

The latency clock starts when the VAD decides the user has stopped, which is ``min_silence_ms`` after
the last voiced frame; ``SpeechStopped`` reports both moments so that wait stays visible.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import numpy as np

from emoslm.agents.conversation import Conversation
from emoslm.agents.events import Cancelled, Error, Event, SpeechStarted, SpeechStopped
from emoslm.audio import SAMPLE_RATE
from emoslm.errors import MissingPackageError

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


class LiveSession:
    """One live conversation: push microphone audio in, read the agent's events out."""

    def __init__(self, conversation: Conversation, lang: str | None = None, vad: StreamingVAD | None = None,
                 partial_every: float = 1.0, pre_roll: float = 0.3) -> None:
        self.conversation, self.lang = conversation, lang
        self.vad = vad or StreamingVAD()
        self.partial_every, self.pre_roll = partial_every, int(pre_roll * SAMPLE_RATE)
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._pending = np.zeros(0, np.float32)  # less than a frame, waiting for the rest
        self._recent = np.zeros(0, np.float32)  # the last moments before speech (the VAD starts late)
        self._speech: list[np.ndarray] | None = None  # frames of the current utterance, None when silent
        self._samples = 0
        self._since_partial = 0
        self._reply: threading.Thread | None = None
        self._cancel = threading.Event()

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
        elif found and found[0] == "end" and self._speech is not None:
            self._end_of_speech(found[1])
        elif self._speech is not None and self._since_partial >= self.partial_every * SAMPLE_RATE:
            self._since_partial = 0
            for event in self.conversation.agent.listen(np.concatenate(self._speech), self.lang):
                self._queue.put(event)

    def _start_of_speech(self, sample: int) -> None:
        if self.replying:
            self._cancel.set()  # barge-in: the reply thread stops at its next event and says so
        self._speech, self._since_partial = [self._recent], 0
        self._queue.put(SpeechStarted(at=round(sample / SAMPLE_RATE, 3)))

    def _end_of_speech(self, sample: int) -> None:
        heard_at = time.perf_counter()
        audio, self._speech, self._recent = np.concatenate(self._speech), None, np.zeros(0, np.float32)
        self._queue.put(SpeechStopped(at=round(sample / SAMPLE_RATE, 3), seconds=round(len(audio) / SAMPLE_RATE, 3)))
        if self._reply is not None:
            self._reply.join()
        self._cancel.clear()
        self._reply = threading.Thread(target=self._answer, args=(audio, heard_at), daemon=True,
                                       name="emoslm-live-reply")
        self._reply.start()

    # --- output -------------------------------------------------------------------------------------
    def _answer(self, audio: np.ndarray, heard_at: float) -> None:
        events = self.conversation.stream(audio, self.lang, heard_at=heard_at)
        try:
            for event in events:
                if self._cancel.is_set():
                    events.close()
                    self._queue.put(Cancelled("barge-in", t=time.perf_counter() - heard_at))
                    return
                self._queue.put(event)
        except Exception as exc:  # noqa: BLE001 - a live session reports, it does not die
            self._queue.put(Error(f"{type(exc).__name__}: {exc}", t=time.perf_counter() - heard_at))

    @property
    def replying(self) -> bool:
        return self._reply is not None and self._reply.is_alive()

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
            self._reply.join()

    def cancel(self) -> None:
        """Stop the reply in progress (as barge-in would) and wait for it to end."""
        if self.replying:
            self._cancel.set()
        self.wait()

    close = cancel
