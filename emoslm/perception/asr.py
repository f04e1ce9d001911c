"""Speech recognition behind a small interface; faster-whisper (CTranslate2) is the backend here."""

from __future__ import annotations

import abc
import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emoslm.audio import SAMPLE_RATE, Segment, check_signal
from emoslm.config import settings
from emoslm.errors import EmoslmError, MissingPackageError
from emoslm.store import resolve

DEFAULT_ASR = "whisper-tiny.en"
MULTILINGUAL_ASR = "whisper-base"

# Whisper falls into repetition loops on unclear Mandarin; a light repetition penalty stops them.
# (A simplified-Chinese initial prompt helped the error rate a little but was echoed back as the
# transcript of short, unclear turns, so it is not used.)
DECODE_HINTS: dict[str, dict[str, object]] = {
    "zh": {"repetition_penalty": 1.1, "no_repeat_ngram_size": 4},
}


@dataclass
class Transcript:
    text: str
    language: str
    language_probability: float
    segments: list[Segment] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)  # the text of each segment (subtitles)
    seconds: float = 0.0  # processing time
    duration: float = 0.0  # audio length

    @property
    def rtf(self) -> float:
        return self.seconds / self.duration if self.duration else 0.0


class ASR(abc.ABC):
    name: str = "asr"
    multilingual: bool = False

    @abc.abstractmethod
    def transcribe(self, audio: np.ndarray, language: str | None = None, timestamps: bool = False) -> Transcript:
        """Transcribe 16 kHz mono audio; ``language=None`` detects it (multilingual models only);
        ``timestamps`` asks for one segment per phrase (subtitles) instead of the turn's speech span."""


DETECT_FLOOR = 3  # seconds: language detection pads shorter clips with silence to this
# A turn is decoded in a window fitted to it: the clip padded with silence to at least FIT_FLOOR seconds
# instead of Whisper's 30. Measured on the 42 zh / 38 en example turns (benchmarks/bench_asr.py): whisper-base
# zh CER 0.181 vs 0.187 for the 30 s window at 0.39 vs 0.79 s p50; tiny.en WER 0.030 vs 0.048 at 0.20 vs 0.42 s.
# Shorter windows cost words: at 10 s tiny.en's WER was 0.067, unpadded it loops (3.3) and base's CER is 0.313.
FIT_FLOOR = 15
FIT_CEILING = 28  # longer clips go through faster-whisper's 30 s windows, with timestamps
TOKENS_PER_SECOND = 15  # a decode budget far above speech (zh ~10, en ~4 tokens/s): a runaway loop stops


class FasterWhisperASR(ASR):
    """Whisper through faster-whisper, int8 on CPU; the model is a registry name, directory or hub id."""

    def __init__(self, model: str = DEFAULT_ASR, compute_type: str = "int8", threads: int | None = None,
                 beam_size: int = 1, vad_filter: bool = True, languages: tuple[str, ...] | None = None,
                 deterministic: bool = False, fit_floor: float = FIT_FLOOR) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise MissingPackageError("faster-whisper", "speech recognition", "emoslm[asr]") from None
        resolved = resolve(model)
        location = str(resolved.path) if resolved.path else str(resolved.hub_id)
        self.model = WhisperModel(location, device="cpu", compute_type=compute_type,
                                  cpu_threads=threads or settings().threads)
        self.name = resolved.name
        self.multilingual = bool(self.model.model.is_multilingual)
        self.beam_size, self.vad_filter, self.fit_floor = beam_size, vad_filter, fit_floor
        self.languages = languages  # detection picks among these (HumDial: en, zh); None = any
        # Long recordings (subtitles) keep Whisper's temperature fallback, which samples; data builds that must
        # reproduce exactly decode greedily only. Turn-sized clips never fall back (``_fitted``).
        self.temperatures = (0.0,) if deterministic else (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

    def detect(self, audio: np.ndarray) -> tuple[str, float]:
        """The most likely language, restricted to ``languages`` when given.

        The encoder sees the clip's own frames (at least 3 s, at most 30 s), not a window padded to 30 s
        as in faster-whisper's ``detect_language``: 8 times faster on 2 AVX2 cores, and as right on en/zh
        clips of the project's voices. Below ~1.5 s of speech, unpadded frames mislead it ("fi" for 1 s
        of English), so short clips are padded with silence to 3 s, as Whisper pads to 30.
        """
        extractor = self.model.feature_extractor
        audio = np.pad(audio[: extractor.n_samples], (0, max(0, DETECT_FLOOR * SAMPLE_RATE - len(audio))))
        mel = even_frames(extractor(audio))
        found = self.model.model.detect_language(self.model.encode(mel))[0]
        ranked = [(token[2:-2], float(p)) for token, p in found]  # "<|en|>" → "en"
        language, probability = ranked[0]
        if self.languages:
            allowed = [(lang, p) for lang, p in ranked if lang in self.languages]
            if allowed:
                language, probability = max(allowed, key=lambda item: item[1])
        return language, float(probability)

    def transcribe(self, audio: np.ndarray, language: str | None = None, timestamps: bool = False) -> Transcript:
        """Greedy decoding, temperature 0 without fallback (the fallback re-decoded unclear Mandarin up to six
        times: 6.9 s for one 5 s turn), no conditioning on earlier text; a turn-sized clip without
        ``timestamps`` is decoded in a window fitted to it (``FIT_FLOOR``), anything else in 30 s windows."""
        check_signal(audio, SAMPLE_RATE, "audio")
        if not self.multilingual:
            if language not in (None, "en"):
                raise EmoslmError(
                    f"{self.name} only knows English; use --asr {MULTILINGUAL_ASR} for language '{language}'"
                )
            language = "en"
        start = time.perf_counter()
        probability = 1.0
        if language is None:
            language, probability = self.detect(audio)
        if timestamps or len(audio) > FIT_CEILING * SAMPLE_RATE:
            text, segments, pieces = self._windowed(audio, language)
        else:
            text, segments, pieces = self._fitted(audio, language)
        return Transcript(text=text, language=language, language_probability=probability, segments=segments,
                          pieces=pieces, seconds=time.perf_counter() - start, duration=len(audio) / SAMPLE_RATE)

    def _fitted(self, audio: np.ndarray, language: str) -> tuple[str, list[Segment], list[str]]:
        """One greedy decode over the clip padded to ``FIT_FLOOR`` seconds; Silero VAD only gates it (no
        speech, no words: Whisper would invent some), as cropping to the speech cost CER (0.192 vs 0.181)."""
        span = self._speech_span(audio)
        if span is None:
            return "", [], []
        padded = np.pad(audio, (0, max(0, int(self.fit_floor * SAMPLE_RATE) - len(audio))))
        encoded = self.model.encode(even_frames(self.model.feature_extractor(padded)))
        tokenizer = self._tokenizer(language)
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        budget = min(self.model.max_length, len(prompt) + int(TOKENS_PER_SECOND * len(audio) / SAMPLE_RATE) + 16)
        result = self.model.model.generate(encoded, [prompt], beam_size=1, max_length=budget, suppress_blank=True,
                                           suppress_tokens=[-1], **DECODE_HINTS.get(language, {}))[0]
        text = tokenizer.decode(result.sequences_ids[0]).strip()
        return (text, [span], [text]) if text else ("", [], [])

    @functools.cache  # noqa: B019 - one per model and language, as long as the model lives
    def _tokenizer(self, language: str) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        return Tokenizer(self.model.hf_tokenizer, self.multilingual, task="transcribe",
                         language=language if self.multilingual else None)

    def _speech_span(self, audio: np.ndarray) -> Segment | None:
        if not self.vad_filter:
            return Segment(0.0, len(audio) / SAMPLE_RATE)
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        found = get_speech_timestamps(audio, VadOptions())
        return Segment(found[0]["start"] / SAMPLE_RATE, found[-1]["end"] / SAMPLE_RATE) if found else None

    def _windowed(self, audio: np.ndarray, language: str) -> tuple[str, list[Segment], list[str]]:
        segments, info = self.model.transcribe(
            audio, language=language, beam_size=self.beam_size, vad_filter=self.vad_filter,
            condition_on_previous_text=False, temperature=list(self.temperatures),
            **DECODE_HINTS.get(language, {}),
        )
        segments = list(segments)
        return (_join([s.text for s in segments], language), [Segment(s.start, s.end) for s in segments],
                [s.text.strip() for s in segments])


def transcriber(model: str = "whisper-base") -> Any:
    """``(audio, lang) → text`` with one Whisper, loaded on first use: the ASR that phoneme units hear with
    (``emoslm.speech.units.phonemes.PhonemeTokenizer``), handed down to the speech package."""
    asr: list[FasterWhisperASR] = []

    def transcribe(audio: np.ndarray, lang: str | None = None) -> str:
        if not asr:
            asr.append(FasterWhisperASR(model))
        return asr[0].transcribe(audio, lang).text

    return transcribe


def even_frames(mel: np.ndarray) -> np.ndarray:
    """A mel spectrogram (n_mels, frames) cut or padded to an even number of frames, at least 2: the
    Whisper encoder's stride-2 convolution takes any such length in CTranslate2, so a short clip costs
    a fraction of a 30 s window."""
    frames = max(2, mel.shape[1] - mel.shape[1] % 2)
    return np.pad(mel, ((0, 0), (0, max(0, frames - mel.shape[1]))))[:, :frames]


def _join(pieces: list[str], language: str) -> str:
    glue = "" if language in ("zh", "ja") else " "
    return glue.join(p.strip() for p in pieces if p.strip())


def asr_for_language(language: str | None) -> str:
    """English goes to the small English model; anything else (or unknown) to the multilingual one."""
    return DEFAULT_ASR if language == "en" else MULTILINGUAL_ASR


class ASRPool:
    """One ASR model per language, loaded on first use (tiny.en for English, base otherwise)."""

    def __init__(self, override: str | None = None, deterministic: bool = False) -> None:
        self.override, self.loaded, self.deterministic = override, {}, deterministic
        self._lock = threading.Lock()  # a server's workers ask from several threads

    def for_lang(self, lang: str | None) -> ASR:
        """The model for ``lang`` (None: the multilingual one, which detects the language)."""
        name = self.override or asr_for_language(lang)
        with self._lock:
            if name not in self.loaded:
                self.loaded[name] = FasterWhisperASR(name, languages=("en", "zh"), deterministic=self.deterministic)
            return self.loaded[name]

    def transcribe(self, audio: np.ndarray, language: str | None = None, timestamps: bool = False) -> Transcript:
        """Transcribe with the model for ``language``; unknown, the language is detected first.

        Detection is one pass of the multilingual encoder over the clip's own frames (0.24 s on 2 AVX2
        cores); English then goes to tiny.en instead of the multilingual model decoding it (0.38 against
        0.88 s on 2 AVX-512 cores, measured).
        """
        if language is None and self.override is None:
            language, _ = self.for_lang(None).detect(audio)
        return self.for_lang(language).transcribe(audio, language=language, timestamps=timestamps)
