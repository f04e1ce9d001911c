"""Phoneme units: the symbols Kokoro reads, one style code per reply, and a hold code — the embedded default's
own-voice units, rendered by Kokoro's packaged ONNX model.

Why these units: the paper's units are CosyVoice's *supervised* semantic tokens, trained to carry what an
ASR needs and rendered by a pretrained decoder. Units learned on this CPU lost most words on resynthesis
(``reports/units-4``: WER 0.38 at best); Kokoro's symbols carry the words by construction (misaki's G2P
for both languages) and Kokoro is already trained to say them. The speech branch then only has to learn
which symbols a text says and how the reply should sound, which a CPU can teach in minutes.

The vocabulary (``PhonemeVocab``): codes ``0..S-1`` are Kokoro's S symbols in its own id order (the space
between words and the punctuation that shapes its prosody included), then one **style** code per reply
prosody (``emoslm.speech.prosody.REPLY``: how to sound to a user who feels that emotion), then **hold**:
"nothing more to say in this step". Units are not frame-aligned, so their ``rate`` is nominal (about the
symbols per second Kokoro speaks at speed 1).

``PhonemeTokenizer.encode(audio)`` is supervised by construction: ASR (Whisper) → text → symbols.
``KokoroUnitDecoder`` speaks units clause by clause: the style code chooses the prosody (rate, pitch,
energy of the rule table the teacher's TTS uses), hold codes are skipped, and the symbols are cut into
clauses by the same ``Clauses`` the TTS voices use, so the first clause is rendered as soon as it is written.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from emoslm.errors import EmoslmError
from emoslm.speech.prosody import REPLY, Prosody
from emoslm.speech.units.tokenizer import Units

STYLES = tuple(REPLY)  # neutral, happy, sad, anger, fear, surprise, disgust
SYMBOLS_PER_SECOND = 14.0  # Kokoro at speed 1 on the example replies, about: only for ``Units.seconds``
SPEC_PREFIX = "kokoro"
DEFAULT_VOICE = "jm_kumo"
CJK = re.compile(r"[\u4e00-\u9fff]")


@functools.lru_cache(maxsize=1)
def kokoro_symbols() -> tuple[str, ...]:
    """Kokoro's symbols in id order (its vocabulary file, packaged with the voices)."""
    import json

    from emoslm.store import resolve

    vocab = json.loads(resolve("kokoro-voices").require_path().with_name("vocab.json").read_text(encoding="utf-8"))
    return tuple(sorted(vocab["vocab"], key=vocab["vocab"].get))


@dataclass(frozen=True)
class PhonemeVocab:
    """Symbols, styles and hold as one code space."""

    symbols: tuple[str, ...]

    @classmethod
    def kokoro(cls) -> PhonemeVocab:
        return cls(kokoro_symbols())

    @property
    def size(self) -> int:
        return len(self.symbols) + len(STYLES) + 1

    @property
    def hold(self) -> int:
        return self.size - 1

    def style(self, tag: str) -> int:
        from emoslm.emotions import normalise_tag

        return len(self.symbols) + STYLES.index(normalise_tag(tag) if tag else "neutral")

    def style_of(self, code: int) -> str | None:
        index = int(code) - len(self.symbols)
        return STYLES[index] if 0 <= index < len(STYLES) else None

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {symbol: i for i, symbol in enumerate(self.symbols)}

    def encode(self, phonemes: str) -> list[int]:
        """Symbols → codes (symbols Kokoro does not know are dropped, as Kokoro itself drops them)."""
        return [self._index[c] for c in phonemes if c in self._index]

    def decode(self, codes: Iterable[int]) -> tuple[str | None, str]:
        """Codes → (the first style named, or None; the symbols), hold and markers past the vocabulary skipped."""
        style, out = None, []
        for code in codes:
            code = int(code)
            if code < len(self.symbols):
                out.append(self.symbols[code])
            elif style is None:
                style = self.style_of(code)
        return style, "".join(out)


def phonemize(text: str) -> str:
    from emoslm.speech.kokoro import phonemize as kokoro_phonemize

    return kokoro_phonemize(text)


def word_phonemes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, symbols) of each word of ``text`` (a run without blanks; in Mandarin, a clause up to its
    punctuation), so that a word's symbols can be tied to the tokens that wrote it.

    English is phonemized as a whole (function words keep their reduced forms, "to" → "tə") and the result
    split at its blanks when it has one group per word; otherwise word by word."""
    if CJK.search(text):
        spans = [(m.start(), m.end()) for m in re.finditer(r"[^，。！？；：、,.!?;:\s]+[，。！？；：、,.!?;:]*", text)]
        return [(a, b, phonemize(text[a:b]).strip()) for a, b in spans]
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    if not spans:
        return []
    groups = phonemize(text).split()
    if len(groups) == len(spans):
        return [(a, b, g) for (a, b), g in zip(spans, groups, strict=True)]
    return [(a, b, phonemize(text[a:b]).strip()) for a, b in spans]


def text_units(text: str, style: str | None = None, vocab: PhonemeVocab | None = None) -> Units:
    """Text → units: the style code (when given), then the symbols, words joined by the space symbol."""
    vocab = vocab or PhonemeVocab.kokoro()
    phonemes = " ".join(p for _, _, p in word_phonemes(text) if p)
    codes = ([vocab.style(style)] if style else []) + vocab.encode(phonemes)
    return Units(np.asarray(codes, np.int64), SYMBOLS_PER_SECOND)


class PhonemeTokenizer:
    """``encode(audio) → Units``: what an ASR hears, in Kokoro's symbols (supervised units by construction).

    ``transcribe(audio, lang) → text`` is the ASR, given by the caller (``emoslm.perception.asr.transcriber``):
    speech sits below perception, so it takes the recogniser rather than importing it. Without one, only
    ``encode_text`` works (all a voice needs)."""

    rate = SYMBOLS_PER_SECOND

    def __init__(self, transcribe: Callable[[np.ndarray, str | None], str] | None = None, lang: str | None = None
                 ) -> None:
        self.vocab, self._transcribe, self.lang = PhonemeVocab.kokoro(), transcribe, lang

    def transcribe(self, audio: np.ndarray) -> str:
        if self._transcribe is None:
            raise EmoslmError("these phoneme units were loaded without an ASR to hear audio; encode text instead")
        return self._transcribe(np.asarray(audio, np.float32), self.lang)

    def encode(self, audio: np.ndarray, style: str | None = None) -> Units:
        return self.encode_text(self.transcribe(audio), style)

    def encode_text(self, text: str, style: str | None = None) -> Units:
        return text_units(text, style, self.vocab)


def parse_spec(spec: str) -> str | None:
    """The Kokoro voice a ``kokoro`` / ``kokoro:VOICE`` decoder spec names, or None for anything else."""
    name, _, voice = str(spec).partition(":")
    if name != SPEC_PREFIX:
        return None
    from emoslm.speech.kokoro import KOKORO_VOICES

    voice = voice or DEFAULT_VOICE
    if voice not in KOKORO_VOICES:
        raise EmoslmError(f"unknown Kokoro voice '{voice}' for phoneme units; use one of {', '.join(KOKORO_VOICES)}")
    return voice


class KokoroUnitDecoder:
    """Phoneme units → 16 kHz speech with a Kokoro style voice; ``streamer`` renders clause by clause."""

    sample_rate = 16_000

    def __init__(self, voice: str = DEFAULT_VOICE, threads: int | None = None) -> None:
        from emoslm.speech.voice import engine_threads

        self.voice, self.threads = voice, threads or engine_threads("kokoro")
        self.vocab = PhonemeVocab.kokoro()
        self.name = f"{SPEC_PREFIX}:{voice}"

    @functools.cached_property
    def model(self) -> Any:
        from emoslm.speech.kokoro import kokoro_model

        return kokoro_model(self.threads)

    def prosody(self, style: str | None, fallback: Prosody | str | None = None) -> Prosody:
        """The style code's prosody (the teacher's reply table); without one, the caller's (or neutral)."""
        from emoslm.speech.prosody import reply

        if style:
            return reply(style)
        if isinstance(fallback, str):
            return reply(fallback)
        return fallback or reply("neutral")

    def render(self, phonemes: str, prosody: Prosody) -> np.ndarray:
        from emoslm.audio import resample
        from emoslm.speech.kokoro import KOKORO_RATE, render

        if not phonemes.strip():
            return np.zeros(0, np.float32)
        return resample(render(self.model, phonemes, prosody, self.voice), KOKORO_RATE, self.sample_rate)

    def decode(self, units: Any, speaker: Any = None, style: Prosody | str | None = None) -> np.ndarray:
        """Units (``Units`` or ints) → audio; ``speaker`` is ignored (the voice is the decoder's)."""
        tag, phonemes = self.vocab.decode(np.asarray(getattr(units, "codes", units), np.int64).reshape(-1))
        return self.render(phonemes, self.prosody(tag, style))

    def decode_stream(self, chunks: Iterable[Any], speaker: Any = None, style: Prosody | str | None = None
                      ) -> Iterator[np.ndarray]:
        streamer = self.streamer(speaker, style)
        for chunk in chunks:
            yield from streamer.feed(getattr(chunk, "codes", chunk))
        yield from streamer.flush()

    def streamer(self, speaker: Any = None, style: Prosody | str | None = None) -> PhonemeStreamer:
        return PhonemeStreamer(self, style)


class PhonemeStreamer:
    """Units pushed as the model writes them → one audio chunk per finished clause.

    The style is fixed by the first style code (before any symbol: the branch writes it first); a clause is
    cut by ``Clauses`` — at a sentence end, or at a comma once long enough (the first clause half as long)."""

    def __init__(self, decoder: KokoroUnitDecoder, fallback: Prosody | str | None = None) -> None:
        from emoslm.speech.voice import Clauses

        self.decoder, self.fallback, self.style = decoder, fallback, None
        self.clauses = Clauses()
        self._prosody: Prosody | None = None

    def feed(self, codes: Any) -> list[np.ndarray]:
        style, phonemes = self.decoder.vocab.decode(np.asarray(codes, np.int64).reshape(-1))
        if self.style is None and self._prosody is None and style:
            self.style = style
        return [a for clause in self.clauses.feed(phonemes) if (a := self._render(clause)).size]

    def flush(self) -> list[np.ndarray]:
        return [a for clause in self.clauses.flush() if (a := self._render(clause)).size]

    def _render(self, clause: str) -> np.ndarray:
        if self._prosody is None:
            self._prosody = self.decoder.prosody(self.style, self.fallback)
        return self.decoder.render(clause, self._prosody)
