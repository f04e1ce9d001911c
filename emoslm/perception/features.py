"""Acoustic features for speech emotion: how something is said, not what.

Three feature sets, combinable:

- ``prosody``: pitch, loudness, voicing, rhythm and spectral-shape functionals computed with numpy
  only (no GPL or non-commercial package), in the spirit of eGeMAPS;
- ``egemaps``: the real eGeMAPS v02 (88 functionals) via openSMILE, when that optional,
  non-commercial package is installed;
- ``whisper``: mean and spread of the Whisper encoder's frames (CTranslate2, same weights as ASR),
  which carry voice quality and timbre cues the hand-made set misses.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from emoslm.audio import SAMPLE_RATE
from emoslm.config import settings
from emoslm.errors import EmoslmError, MissingPackageError
from emoslm.perception.asr import even_frames
from emoslm.speech.vocoder import mel_filterbank

FRAME, HOP = 400, 160  # 25 ms windows every 10 ms
F0_MIN, F0_MAX = 60.0, 500.0
N_MFCC = 13


def _frames(audio: np.ndarray) -> np.ndarray:
    if len(audio) < FRAME:
        audio = np.pad(audio, (0, FRAME - len(audio)))
    count = 1 + (len(audio) - FRAME) // HOP
    idx = np.arange(FRAME)[None, :] + HOP * np.arange(count)[:, None]
    return audio[idx]


def _pitch(audio: np.ndarray, n_frames: int, threshold: float = 0.15) -> np.ndarray:
    """F0 per 10 ms frame (Hz, 0 where unvoiced) with YIN's cumulative-mean-normalised difference.

    Autocorrelation peaks jump octaves on real speech; YIN takes the *first* lag whose normalised
    difference dips below the threshold, which is the period rather than a multiple of it.
    """
    w = int(SAMPLE_RATE / F0_MIN)  # integration window = longest period
    padded = np.pad(audio, (0, 2 * w + HOP * n_frames))
    idx = np.arange(2 * w)[None, :] + HOP * np.arange(n_frames)[:, None]
    x = padded[idx].astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    spec_a = np.fft.rfft(x[:, :w], n=4 * w, axis=1)
    spec_b = np.fft.rfft(x, n=4 * w, axis=1)
    cross = np.fft.irfft(np.conj(spec_a) * spec_b, axis=1)[:, :w]  # sum_j x_j x_{j+tau}
    squares = np.cumsum(np.pad(x**2, ((0, 0), (1, 0))), axis=1)
    energy_head = squares[:, w][:, None]
    energy_lag = squares[:, np.arange(w) + w] - squares[:, np.arange(w)]
    diff = np.maximum(energy_head + energy_lag - 2 * cross, 0.0)
    cumulative = np.cumsum(diff[:, 1:], axis=1) / np.arange(1, w)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] / np.maximum(cumulative, 1e-12)
    lo = int(SAMPLE_RATE / F0_MAX)
    region = cmnd[:, lo:]
    below = region < threshold
    first = np.where(below.any(axis=1), below.argmax(axis=1), np.argmin(region, axis=1))
    f0 = np.zeros(n_frames)
    for i, start in enumerate(first):  # settle into the dip: its minimum within half a period
        span = region[i, start:start + max(2, (start + lo) // 2)]
        tau = start + int(np.argmin(span))
        if region[i, tau] < 0.35:
            f0[i] = SAMPLE_RATE / (tau + lo)
    return f0


def _runs(mask: np.ndarray) -> list[int]:
    """Lengths of consecutive True runs."""
    runs, count = [], 0
    for value in mask:
        if value:
            count += 1
        elif count:
            runs.append(count)
            count = 0
    if count:
        runs.append(count)
    return runs


def _stats(x: np.ndarray) -> list[float]:
    if x.size == 0:
        return [0.0] * 6
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return [float(x.mean()), float(x.std()), float(p10), float(p50), float(p90), float(p90 - p10)]


def prosodic_features(audio: np.ndarray) -> np.ndarray:
    """A fixed-length vector of pitch, loudness, voicing, rhythm and spectral functionals."""
    frames = _frames(audio.astype(np.float32))
    rms = np.sqrt(np.mean(frames**2, axis=1) + 1e-10)
    loud = 20 * np.log10(rms + 1e-10)
    speechy = loud > (np.max(loud) - 35.0)
    f0 = np.where(speechy, _pitch(audio.astype(np.float32), len(frames)), 0.0)
    voiced = f0 > 0
    semitones = 12 * np.log2(np.maximum(f0[voiced], 1.0) / 27.5)

    spec = np.abs(np.fft.rfft(frames * np.hanning(FRAME), n=512, axis=1)) + 1e-10
    freqs = np.linspace(0, SAMPLE_RATE / 2, spec.shape[1])
    power = spec**2
    active = spec[speechy] if speechy.any() else spec
    centroid = (active * freqs).sum(1) / active.sum(1)
    cumulative = np.cumsum(active, axis=1)
    rolloff = freqs[np.argmax(cumulative >= 0.85 * cumulative[:, -1:], axis=1)]
    flatness = np.exp(np.mean(np.log(active), axis=1)) / np.mean(active, axis=1)
    log_spec = np.log(active)
    slope = np.polyfit(freqs / 1000.0, log_spec.T, 1)[0]
    split = np.searchsorted(freqs, 1000.0)
    alpha = np.log(power[speechy][:, split:].sum(1) + 1e-10) - np.log(power[speechy][:, :split].sum(1) + 1e-10) \
        if speechy.any() else np.zeros(1)
    zcr = np.mean(np.abs(np.diff(np.sign(frames), axis=1)) > 0, axis=1)

    mel = np.log(mel_filterbank(SAMPLE_RATE, 512, 40) @ power[speechy].T + 1e-10) if speechy.any() \
        else np.zeros((40, 1))
    dct = np.cos(np.pi / 40 * (np.arange(40)[None, :] + 0.5) * np.arange(N_MFCC)[:, None])
    mfcc = dct @ mel

    seconds = len(audio) / SAMPLE_RATE
    voiced_runs, pauses = _runs(voiced), _runs(~speechy)
    if semitones.size > 2:
        periods = 1.0 / f0[voiced]
        jitter = float(np.mean(np.abs(np.diff(periods))) / np.mean(periods))
        f0_slope = float(np.polyfit(np.arange(semitones.size) / 100.0, semitones, 1)[0])
        f0_delta = float(np.mean(np.abs(np.diff(semitones))))
    else:
        jitter = f0_slope = f0_delta = 0.0
    shimmer = float(np.mean(np.abs(np.diff(loud[voiced])))) if voiced.sum() > 2 else 0.0
    envelope = np.convolve(rms, np.ones(5) / 5, mode="same")
    peaks = np.sum((envelope[1:-1] > envelope[:-2]) & (envelope[1:-1] >= envelope[2:]) & speechy[1:-1])
    speech_seconds = max(speechy.sum() * HOP / SAMPLE_RATE, 1e-3)

    vector = [
        *_stats(semitones), f0_slope, f0_delta, jitter,
        *_stats(loud[speechy] if speechy.any() else loud), float(np.mean(np.abs(np.diff(loud)))), shimmer,
        20 * np.log10(np.max(np.abs(audio)) + 1e-10),
        float(voiced.mean()), float(speechy.mean()), len(voiced_runs) / seconds, peaks / speech_seconds,
        float(np.mean(voiced_runs)) / 100 if voiced_runs else 0.0, float(np.mean(pauses)) / 100 if pauses else 0.0,
        float(centroid.mean()) / 1000, float(centroid.std()) / 1000, float(rolloff.mean()) / 1000,
        float(flatness.mean()), float(slope.mean()), float(np.mean(alpha)), float(zcr.mean()),
        *mfcc.mean(axis=1).tolist(), *mfcc.std(axis=1).tolist(),
    ]
    return np.nan_to_num(np.asarray(vector, dtype=np.float32))


PROSODIC_NAMES = (
    [f"f0_{s}" for s in ("mean", "std", "p10", "p50", "p90", "range")] + ["f0_slope", "f0_delta", "jitter"]
    + [f"loud_{s}" for s in ("mean", "std", "p10", "p50", "p90", "range")] + ["loud_delta", "shimmer", "peak_dbfs"]
    + ["voiced_ratio", "speech_ratio", "voiced_segments_per_s", "syllable_rate", "voiced_run_s", "pause_s"]
    + ["centroid_khz", "centroid_std", "rolloff_khz", "flatness", "spectral_slope", "alpha_ratio", "zcr"]
    + [f"mfcc{i}_mean" for i in range(N_MFCC)] + [f"mfcc{i}_std" for i in range(N_MFCC)]
)


class WhisperEmbedder:
    """Utterance embedding from the Whisper encoder (CTranslate2): mean and std over its frames.

    CTranslate2 accepts mel inputs shorter than Whisper's 30 s window, so a 5 s clip costs about
    a sixth of a padded one; clips over 30 s are embedded per window and averaged. ``parallel`` > 1 lets
    that many Python threads encode at once, one core each (``embed`` is then thread-safe): a short clip
    uses two intra-op threads poorly, so a corpus is featurised faster clip-parallel (same numbers).
    """

    def __init__(self, model: str = "whisper-tiny.en", threads: int | None = None, parallel: int = 1) -> None:
        try:
            import ctranslate2
            from faster_whisper.feature_extractor import FeatureExtractor
        except ImportError:
            raise MissingPackageError("faster-whisper", "the Whisper-encoder emotion features", "emoslm[asr]") from None
        from emoslm.store import resolve

        path = resolve(model).require_path()
        self._ct2 = ctranslate2
        self.encoder = ctranslate2.models.Whisper(str(path), device="cpu", compute_type="int8",
                                                  intra_threads=1 if parallel > 1 else threads or settings().threads,
                                                  inter_threads=max(1, parallel))
        self.mels = FeatureExtractor(feature_size=self.encoder.n_mels if hasattr(self.encoder, "n_mels") else 80)

    @cached_property
    def dim(self) -> int:
        return int(self.embed(np.random.default_rng(0).normal(0, 0.1, SAMPLE_RATE).astype(np.float32)).size)

    def embed(self, audio: np.ndarray) -> np.ndarray:
        windows = [audio[i:i + 30 * SAMPLE_RATE] for i in range(0, max(len(audio), 1), 30 * SAMPLE_RATE)]
        pooled = []
        for window in windows:
            mel = even_frames(self.mels(window))
            view = self._ct2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
            hidden = np.asarray(self.encoder.encode(view, to_cpu=True))[0]
            pooled.append(np.concatenate([hidden.mean(axis=0), hidden.std(axis=0)]))
        return np.mean(pooled, axis=0).astype(np.float32)


class EgemapsExtractor:
    """eGeMAPS v02 functionals through openSMILE (free for research only; optional extra)."""

    def __init__(self) -> None:
        try:
            import opensmile
        except ImportError:
            raise MissingPackageError("opensmile", "eGeMAPS features (non-commercial licence)",
                                      "emoslm[opensmile]") from None
        self.smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                     feature_level=opensmile.FeatureLevel.Functionals)

    def extract(self, audio: np.ndarray) -> np.ndarray:
        return self.smile.process_signal(audio, SAMPLE_RATE).iloc[0].to_numpy(dtype=np.float32)


EGEMAPS_DIM = 88  # eGeMAPS v02 functionals


def whisper_offset(kinds: tuple[str, ...]) -> int | None:
    """The first column of the Whisper embedding in ``AcousticFeaturizer(kinds)``'s vectors (it comes last)."""
    if "whisper" not in kinds:
        return None
    return len(PROSODIC_NAMES) * ("prosody" in kinds) + EGEMAPS_DIM * ("egemaps" in kinds)


@dataclass
class AcousticFeaturizer:
    """Concatenates the chosen feature sets into one vector per clip."""

    kinds: tuple[str, ...] = ("prosody", "whisper")
    parallel: int = 1  # callers that featurise many clips at once (``WhisperEmbedder``'s ``parallel``)

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - {"prosody", "egemaps", "whisper"}
        if unknown or not self.kinds:
            raise EmoslmError(f"unknown acoustic feature set(s) {sorted(unknown)}; use prosody, egemaps, whisper")
        self._whisper = WhisperEmbedder(parallel=self.parallel) if "whisper" in self.kinds else None
        self._egemaps = EgemapsExtractor() if "egemaps" in self.kinds else None

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        parts = []
        if "prosody" in self.kinds:
            parts.append(prosodic_features(audio))
        if self._egemaps is not None:
            parts.append(self._egemaps.extract(audio))
        if self._whisper is not None:
            parts.append(self._whisper.embed(audio))
        return np.concatenate(parts)
