"""The Voice seam: text + prosody in, audio chunks out, clause by clause; and the one pool of voices.

An agent speaks through a ``Voice`` and never through a TTS engine directly, so that a units →
vocoder voice (the unified model's own speech) can stand beside the TTS backends later. A voice
streams: ``stream`` yields one ``VoiceChunk`` per clause, so the first clause plays while the rest
is still being synthesised (or, in an agent, still being written); ``speak`` drains the stream.

``Clauses`` cuts growing text into speakable clauses, so an agent can hand each finished clause to
the voice while its LLM writes the next one.

``voice_pool()`` is the process-wide pool: every caller (agents, the demo, voicing the examples, the
IEAT builder) gets its engines there, each loaded once.
"""

from __future__ import annotations

import abc
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from emoslm.audio import SAMPLE_RATE
from emoslm.speech.prosody import Prosody
from emoslm.speech.tts import TTS, canonical_spec, load_tts, speakable


@dataclass
class VoiceChunk:
    """One spoken clause: float32 mono audio at ``sample_rate`` and the text it says."""

    audio: np.ndarray
    sample_rate: int
    text: str


class Voice(abc.ABC):
    name: str = "voice"
    sample_rate: int = SAMPLE_RATE

    @abc.abstractmethod
    def stream(self, text: str, prosody: Prosody | None = None) -> Iterator[VoiceChunk]:
        """Speak ``text`` clause by clause."""

    def speak(self, text: str, prosody: Prosody | None = None) -> np.ndarray:
        """The whole of ``text`` spoken: the stream, drained and joined."""
        chunks = [c.audio for c in self.stream(text, prosody)]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def clause(self, text: str, prosody: Prosody | None = None) -> VoiceChunk | None:
        """One clause spoken as one chunk, or None when nothing in it can be spoken."""
        chunks = list(self.stream(text, prosody))
        if not chunks:
            return None
        return VoiceChunk(np.concatenate([c.audio for c in chunks]), chunks[0].sample_rate, text)


class TTSVoice(Voice):
    """Any TTS backend as a Voice: each clause synthesised on its own, resampled to 16 kHz."""

    def __init__(self, tts: TTS) -> None:
        self.tts, self.name = tts, tts.name
        self._lock = threading.Lock()  # one engine, many sessions: synthesis calls take turns

    def stream(self, text: str, prosody: Prosody | None = None) -> Iterator[VoiceChunk]:
        cutter = Clauses()
        for clause in [*cutter.feed(text), *cutter.flush()]:
            chunk = self.clause(clause, prosody)
            if chunk is not None:
                yield chunk

    def clause(self, text: str, prosody: Prosody | None = None) -> VoiceChunk | None:
        """One clause spoken, or None when nothing in it can be spoken (only non-verbal tags)."""
        if not speakable(text):
            return None
        with self._lock:
            speech = self.tts.synthesize(text, prosody)
        return VoiceChunk(speech.at(self.sample_rate), self.sample_rate, text)


SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)|[。！？；]+")
PAUSE = re.compile(r"[,;:](?=\s)|[，、：]")


class Clauses:
    """Growing text in, finished clauses out.

    A clause ends at a sentence end (followed by a blank, so "3.5" stays whole) or, once it is long
    enough to be worth a separate synthesis call, at a comma-like pause. The first clause may be half as
    long: first audio waits for it to be written and synthesised, and a slow voice (Kokoro's Mandarin on
    an AVX2 CPU) needs seconds per second of speech. ``flush`` gives the rest.
    """

    def __init__(self, min_pause_chars: int = 24, min_pause_cjk: int = 8) -> None:
        self.buffer, self.given = "", 0
        self.min_pause_chars, self.min_pause_cjk = min_pause_chars, min_pause_cjk

    def feed(self, delta: str) -> list[str]:
        self.buffer += delta
        out = []
        while (cut := self._cut()) is not None:
            clause, self.buffer = self.buffer[:cut].strip(), self.buffer[cut:]
            if clause:
                out.append(clause)
                self.given += 1
        return out

    def flush(self) -> list[str]:
        rest, self.buffer = self.buffer.strip(), ""
        return [rest] if rest else []

    def _cut(self) -> int | None:
        end = SENTENCE_END.search(self.buffer)
        pause = next((m for m in PAUSE.finditer(self.buffer) if self._long_enough(self.buffer[: m.end()])), None)
        ends = [m.end() for m in (end, pause) if m is not None]
        return min(ends) if ends else None

    def _long_enough(self, clause: str) -> bool:
        share = 2 if self.given == 0 else 1
        cjk = len(re.findall(r"[\u4e00-\u9fff]", clause))
        return cjk * share >= self.min_pause_cjk if cjk else len(clause.strip()) * share >= self.min_pause_chars


def engine_threads(key: str) -> int:
    """onnxruntime threads for a TTS engine: all of them for Kokoro, one for the others.

    Why: Kokoro is the slow voice (RTF 3.2 on one thread of a 2-core AVX2 EPYC, 1.8x faster on two) and its
    output is the same at any thread count, so builds stay byte-identical; Piper's and hibari's output
    changes with the thread count, and they are fast on one. ``EMOSLM_TTS_THREADS`` overrides (benchmarks).
    """
    from emoslm.config import settings

    override = int(os.environ.get("EMOSLM_TTS_THREADS") or 0)
    return override or (settings().threads if key.startswith("kokoro") else 1)


class VoicePool:
    """Voices and TTS engines by spec, each loaded once and shared by every caller in the process.

    A spec is a TTS spec (``piper``, ``espeak:cmn``, ``http://…``) or ``auto`` (the best installed
    voice for the language: Piper for English, espeak-ng for Mandarin).
    """

    def __init__(self) -> None:
        self._engines: dict[tuple[str, int], TTS] = {}  # by canonical spec and thread count
        self._voices: dict[Any, Voice] = {}
        self._lock = threading.Lock()

    def tts(self, spec: str | None, lang: str = "en", threads: int | None = None) -> TTS:
        """The engine a spec names (``None``/``auto``: the language's default), with ``threads`` of its own
        (None: ``engine_threads``)."""
        key = canonical_spec(spec, lang)
        threads = threads or engine_threads(key)
        with self._lock:
            if (key, threads) not in self._engines:
                self._engines[key, threads] = load_tts(key, threads)
            return self._engines[key, threads]

    def voice(self, spec: str | None, lang: str = "en") -> Voice:
        """The Voice for a spec and language (``units:DECODER_FOLDER``: speech through a unit decoder; ``tts``:
        the language's default TTS, as ``auto`` — the unified model's way to decline its own voice)."""
        spec = "auto" if spec == "tts" else spec
        if spec and spec.startswith("units:"):
            if (spec, lang) not in self._voices:  # built outside the lock: it takes its source voice from here
                from emoslm.speech.units.voice import UnitVoice

                made = UnitVoice.from_folder(spec.partition(":")[2], lang)
                with self._lock:
                    self._voices.setdefault((spec, lang), made)
            return self._voices[spec, lang]
        engine, key = self.tts(spec, lang), canonical_spec(spec, lang)
        with self._lock:
            if key not in self._voices:
                self._voices[key] = TTSVoice(engine)
            return self._voices[key]


_POOL = VoicePool()


def voice_pool() -> VoicePool:
    """The process-wide pool."""
    return _POOL
