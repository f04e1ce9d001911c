"""Text-to-speech backends behind one interface, each taking a ``Prosody``.

- ``PiperTTS``: neural VITS voice (GPL-3 engine, optional extra); rate/energy/variability natively,
  pitch by varispeed (rendered longer or shorter, then resampled).
- ``EspeakTTS``: espeak-ng through SSML; many languages including Mandarin (``cmn``).
- ``FliteTTS``: CMU Flite's English voices (more distinct speakers for generated data).
- ``KokoroTTS`` / ``HibariTTS`` (``emoslm.speech.kokoro``): packaged neural voices, Mandarin and English.
- ``OpenAISpeechTTS``: any OpenAI-compatible ``/v1/audio/speech`` server (a CosyVoice-class model
  on a GPU, or ``emoslm serve tts``).
"""

from __future__ import annotations

import abc
import functools
import importlib.util
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit
from xml.sax.saxutils import escape

import httpx
import numpy as np

from emoslm.audio import SAMPLE_RATE, load_audio, resample
from emoslm.errors import BackendError, EmoslmError, MissingPackageError
from emoslm.speech.dsp import apply_gain, engine_rate, varispeed
from emoslm.speech.prosody import Prosody

NONVERBAL = re.compile(r"\[[^\]]{1,40}\]|\([^)]{0,20}(laugh|sigh|cough|sob)[^)]{0,20}\)", re.IGNORECASE)


CJK = re.compile(r"[\u4e00-\u9fff]")
GLOSS = re.compile(r"(?<=[\u4e00-\u9fff])\s*[（(]\s*[A-Za-z][A-Za-z '-]{0,30}[）)]")
_CJK_PUNCT = str.maketrans({"。": ". ", "，": ", ", "！": "! ", "？": "? ", "；": "; ", "：": ": ", "、": ", "})


# Held while a Mandarin front end (pypinyin, misaki, jieba) is imported. Why: pypinyin's modules import each
# other in a circle, and two threads importing it at once — corpus clips rendered in a thread pool while
# Kokoro's background g2p preload ran — stopped `emoslm perception train` with a _DeadlockError.
MANDARIN_IMPORT = threading.RLock()


def to_pinyin(text: str) -> str:
    """Hanzi to tone-numbered pinyin (``wo3 jin1 tian1``), which espeak-ng's pinyin voice reads well."""
    try:
        with MANDARIN_IMPORT:
            from pypinyin import Style, lazy_pinyin
    except ImportError:
        raise MissingPackageError("pypinyin", "Mandarin speech with espeak-ng") from None
    syllables = lazy_pinyin(text.translate(_CJK_PUNCT), style=Style.TONE3, neutral_tone_with_five=True)
    return re.sub(r"\s+", " ", " ".join(syllables)).replace(" .", ".").replace(" ,", ",").strip()


def speakable(text: str) -> str:
    """Drop non-verbal tags such as ``[sigh]`` (a TTS would read them out), Latin glosses in brackets after
    Chinese ("愤怒（anger）": a Mandarin voice would spell the letters out) and tidy spaces."""
    return re.sub(r"\s+", " ", NONVERBAL.sub(" ", GLOSS.sub("", text))).strip()


@dataclass
class Speech:
    audio: np.ndarray  # float32 mono
    sample_rate: int
    seconds: float  # time taken to synthesise

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def rtf(self) -> float:
        return self.seconds / self.duration if self.duration else 0.0

    def at(self, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        return resample(self.audio, self.sample_rate, sample_rate)


class TTS(abc.ABC):
    name: str = "tts"
    languages: tuple[str, ...] = ("en",)
    # Same text and prosody give the same samples. Piper's VITS noise is not seedable, so data builds
    # that must reproduce exactly ask it for zero noise (``reproducible``).
    deterministic: bool = True

    def reproducible(self, prosody: Prosody) -> Prosody:
        """The nearest prosody this engine renders identically every time."""
        return prosody if self.deterministic else replace(prosody, variability=0.0)

    def synthesize(self, text: str, prosody: Prosody | None = None, voice: str | None = None) -> Speech:
        """Speak ``text``; non-verbal tags are dropped, empty text is an error."""
        clean = speakable(text)
        if not clean:
            raise EmoslmError("nothing to speak: the text is empty after removing non-verbal tags")
        start = time.perf_counter()
        audio, rate = self._synthesize(clean, prosody or Prosody(), voice)
        return Speech(np.asarray(audio, dtype=np.float32), rate, time.perf_counter() - start)

    @abc.abstractmethod
    def _synthesize(self, text: str, prosody: Prosody, voice: str | None) -> tuple[np.ndarray, int]:
        ...


class PiperTTS(TTS):
    """Piper VITS voice, by default the packaged en_US-joe-medium."""

    languages = ("en",)
    deterministic = False

    def __init__(self, model: str = "piper-en-joe", threads: int = 1) -> None:
        try:
            import onnxruntime
            from piper import PiperConfig, PiperVoice
        except ImportError:
            raise MissingPackageError("piper-tts", "the Piper TTS backend (GPL-3.0)", "emoslm[piper]") from None
        from emoslm.store import resolve

        path = resolve(model).require_path()
        config = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
        # One thread that does not spin: a live agent speaks while its LLM writes the next clause, and on
        # 2 cores two spinning thread pools starve each other (see LlamaCppLLM.share_cpu). The session is
        # built here (``PiperVoice.load`` would build one with default options, so the model loaded twice).
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.voice = PiperVoice(config=PiperConfig.from_dict(config), session=session)
        self.name = f"piper:{model}"

    def _synthesize(self, text: str, prosody: Prosody, voice: str | None) -> tuple[np.ndarray, int]:
        from piper import SynthesisConfig

        config = SynthesisConfig(
            length_scale=1.0 / max(engine_rate(prosody.rate, prosody.pitch), 0.2),
            noise_scale=0.667 * prosody.variability,
            noise_w_scale=0.8 * prosody.variability,
            normalize_audio=True,
            volume=1.0,
        )
        chunks = list(self.voice.synthesize(text, syn_config=config))
        rate = chunks[0].sample_rate if chunks else self.voice.config.sample_rate
        audio = np.concatenate([c.audio_float_array for c in chunks]) if chunks else np.zeros(0, np.float32)
        audio = varispeed(audio, rate, prosody.pitch)
        return apply_gain(audio, 0.7 * prosody.energy), rate


class EspeakTTS(TTS):
    """espeak-ng driven by SSML ``<prosody>``; ``voice`` is an espeak voice such as ``en-us+f3`` or ``cmn``."""

    languages = ("en", "zh")
    LANG_VOICES = {"en": "en-us", "zh": "cmn"}
    PINYIN_VOICE = "cmn-latn-pinyin"

    def __init__(self, voice: str = "en-us", binary: str = "espeak-ng") -> None:
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise EmoslmError(f"'{binary}' is not installed: run `apt-get install espeak-ng`")
        self.voice = self.LANG_VOICES.get(voice, voice)
        base, _, variant = self.voice.partition("+")
        voices, variants = _espeak_voices(self.binary)
        if base.lower() not in voices or variant and variant.lower() not in variants:
            raise EmoslmError(f"unknown espeak voice '{voice}'; see `espeak-ng --voices` (a language such as en-us "
                              "or cmn, optionally +VARIANT from `espeak-ng --voices=variant`, e.g. en-us+f3)")
        self.name = f"espeak:{self.voice}"

    def _synthesize(self, text: str, prosody: Prosody, voice: str | None) -> tuple[np.ndarray, int]:
        voice = self.LANG_VOICES.get(voice or "", voice or self.voice)
        if voice.startswith(("cmn", "zh")) and CJK.search(text):
            # Debian's small cmn dictionary lacks most characters (it spells them out); pinyin reads well.
            variant = voice[voice.index("+"):] if "+" in voice else ""  # keep the speaker variant (+m1, +f3)
            text, voice = to_pinyin(text), self.PINYIN_VOICE + variant
        pitch_pct = (2.0 ** (prosody.pitch / 12.0) - 1.0) * 100.0
        ssml = (
            f'<speak><prosody rate="{prosody.rate * 100:.0f}%" pitch="{pitch_pct:+.0f}%" '
            f'range="{prosody.variability * 100:.0f}%" volume="{min(prosody.energy, 2.0) * 100:.0f}%">'
            f"{escape(text)}</prosody></speak>"
        )
        result = subprocess.run(
            [self.binary, "-m", "-v", voice, "--stdout", ssml], capture_output=True, timeout=120
        )
        if result.returncode != 0 or not result.stdout:
            raise BackendError(f"espeak-ng failed for voice '{voice}': {result.stderr.decode()[:200].strip()}")
        return load_audio(result.stdout, sample_rate=22_050, allow_silent=True), 22_050


@functools.lru_cache(maxsize=4)
def _espeak_voices(binary: str) -> tuple[frozenset[str], frozenset[str]]:
    """espeak-ng's voices (languages, names, files) and its variants, lower-cased, as it lists them."""
    def listed(which: str) -> list[list[str]]:
        out = subprocess.run([binary, f"--voices{which}"], capture_output=True, text=True, timeout=30).stdout
        return [line.split() for line in out.splitlines()[1:] if len(line.split()) >= 5]

    voices = {name.lower() for row in listed("") for name in (row[1], row[3], row[4], row[4].split("/")[-1])}
    variants = {row[4].split("/")[-1].lower() for row in listed("=variant")}
    return frozenset(voices), frozenset(variants)


@functools.lru_cache(maxsize=4)
def _flite_voices(binary: str) -> tuple[str, ...]:
    out = subprocess.run([binary, "-lv"], capture_output=True, text=True, timeout=30).stdout
    return tuple(out.split(":", 1)[-1].split())


class FliteTTS(TTS):
    """CMU Flite (BSD-like): a handful of distinct English voices (kal, kal16, awb, rms, slt).

    Flite takes rate (``duration_stretch``) and F0 target mean/spread; energy is a gain after.
    """

    languages = ("en",)
    BASE_F0 = {"slt": 170.0, "kal": 105.0, "kal16": 105.0, "awb": 120.0, "rms": 110.0}

    def __init__(self, voice: str = "slt", binary: str = "flite") -> None:
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise EmoslmError(f"'{binary}' is not installed: run `apt-get install flite`")
        known = _flite_voices(self.binary)
        if voice not in known:  # flite itself falls back to its default voice without a word
            raise EmoslmError(f"unknown flite voice '{voice}'; use one of {', '.join(known)}")
        self.voice = voice
        self.name = f"flite:{voice}"

    def _synthesize(self, text: str, prosody: Prosody, voice: str | None) -> tuple[np.ndarray, int]:
        voice = voice or self.voice
        f0 = self.BASE_F0.get(voice, 120.0) * 2.0 ** (prosody.pitch / 12.0)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.wav"
            result = subprocess.run(
                [self.binary, "-voice", voice, "-t", text, "-o", str(out),
                 "--setf", f"duration_stretch={1.0 / max(prosody.rate, 0.2):.3f}",
                 "--setf", f"int_f0_target_mean={f0:.1f}",
                 "--setf", f"int_f0_target_stddev={20.0 * prosody.variability:.1f}"],
                capture_output=True, timeout=120,
            )
            if result.returncode != 0 or not out.exists():
                raise BackendError(f"flite failed for voice '{voice}': {result.stderr.decode()[:200].strip()}")
            audio = load_audio(out, sample_rate=16_000, allow_silent=True)
        return apply_gain(audio, prosody.energy), 16_000


class OpenAISpeechTTS(TTS):
    """An OpenAI-compatible ``/audio/speech`` endpoint; prosody travels as speed and an instruction."""

    def __init__(self, base_url: str, model: str = "tts-1", voice: str = "alloy", api_key: str | None = None,
                 timeout: float = 120.0, languages: tuple[str, ...] = ("en", "zh")) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.model, self.voice, self.languages = model, voice, languages
        self.name = f"http:{base_url}"

    def _synthesize(self, text: str, prosody: Prosody, voice: str | None) -> tuple[np.ndarray, int]:
        body = {
            "model": self.model,
            "input": text,
            "voice": voice or self.voice,
            "response_format": "wav",
            "speed": round(prosody.rate, 3),
            "instructions": prosody.describe(),
        }
        try:
            response = self.client.post("/audio/speech", json=body)
        except httpx.HTTPError as exc:
            raise BackendError(
                f"cannot reach the TTS endpoint {self.client.base_url} ({type(exc).__name__}); is the server running?"
            ) from None
        if response.status_code >= 400:
            raise BackendError(f"TTS endpoint answered {response.status_code}: {response.text[:200]}")
        audio = load_audio(response.content, sample_rate=SAMPLE_RATE, allow_silent=True)
        return apply_gain(audio, prosody.energy), SAMPLE_RATE


DEFAULT_ARGS = {"piper": "piper-en-joe", "espeak": "en-us", "flite": "slt", "kokoro": "jm_kumo", "hibari": "heart"}


def canonical_spec(spec: str | None, lang: str = "en") -> str:
    """One spelling per engine (``auto`` → the language's default, ``piper`` → ``piper:piper-en-joe``),
    so a pool keyed by it loads each engine once."""
    if not spec or spec == "auto":
        spec = default_spec(lang)
    if spec.startswith(("http://", "https://")):
        return spec
    backend, _, arg = spec.partition(":")
    arg = arg or DEFAULT_ARGS.get(backend, "")
    if backend == "espeak":
        arg = EspeakTTS.LANG_VOICES.get(arg, arg)
    return f"{backend}:{arg}"


def default_spec(lang: str) -> str:
    """The best installed voice for a language, as measured in ``benchmarks/results/voices.md``.

    English: hibari (Whisper tiny.en WER 2.6 % on the example turns, Piper 4.0 %; 5x faster than Piper;
    Apache-2.0, while Piper's engine is GPL), else Piper, else espeak-ng. Mandarin: Kokoro's jm_kumo
    (Whisper base CER 13 %, espeak-ng 68 %), else espeak-ng.
    """
    if lang == "en":
        if _installed("hibari"):
            return "hibari:heart"
        return "piper:piper-en-joe" if importlib.util.find_spec("piper") is not None else "espeak:en-us"
    if lang == "zh" and _installed("kokoro-82m", "kokoro-voices") and importlib.util.find_spec("misaki"):
        return "kokoro:jm_kumo"
    return f"espeak:{EspeakTTS.LANG_VOICES.get(lang, lang)}"


def _installed(*models: str) -> bool:
    from emoslm.store import REGISTRY

    return all(REGISTRY[m].installed() for m in models)


def load_tts(spec: str, threads: int = 1) -> TTS:
    """``piper[:MODEL]``, ``espeak[:VOICE]``, ``flite[:VOICE]``, ``kokoro[:VOICE]``, ``hibari`` or
    ``http(s)://host/v1?model=M&voice=V``. ``threads``: onnxruntime threads of the neural voices (one
    where a voice speaks beside an LLM; all of a worker's where nothing else runs, as in the IEAT build)."""
    if spec.startswith(("http://", "https://")):
        parts = urlsplit(spec)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return OpenAISpeechTTS(base, model=query.get("model", "tts-1"), voice=query.get("voice", "alloy"),
                               api_key=query.get("api_key"))
    backend, _, arg = spec.partition(":")
    if backend == "piper":
        return PiperTTS(arg or "piper-en-joe", threads=threads)
    if backend == "espeak":
        return EspeakTTS(arg or "en-us")
    if backend == "flite":
        return FliteTTS(arg or "slt")
    if backend in ("kokoro", "hibari"):
        from emoslm.speech.kokoro import HibariTTS, KokoroTTS

        if backend == "hibari":
            if arg not in ("", "heart"):
                raise EmoslmError(f"hibari has one packaged voice, 'heart', not '{arg}'")
            return HibariTTS(threads=threads)
        return KokoroTTS(arg or "jm_kumo", threads=threads)
    raise EmoslmError(
        f"unknown TTS spec '{spec}'; use piper[:MODEL], espeak[:VOICE], flite[:VOICE], kokoro[:VOICE], hibari "
        "or an http(s):// URL"
    )
