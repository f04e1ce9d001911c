"""Signal processing for prosody that TTS engines do not expose (none of the neural voices has a pitch control)."""

from __future__ import annotations

import numpy as np

from emoslm.audio import resample


def engine_rate(rate: float, semitones: float) -> float:
    """The speaking rate to ask a neural engine for, so that ``varispeed`` afterwards gives ``rate`` at a pitch
    ``semitones`` away: the engine speaks longer by the pitch factor, and playing it faster takes that back."""
    return rate / 2.0 ** (semitones / 12.0)


def varispeed(x: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Shift pitch by ``semitones`` the way a tape does: the samples played faster or slower (soxr), so duration
    changes by the same factor — engines render at ``engine_rate`` first to keep it.

    Why not a phase vocoder: librosa's (a 2048-point STFT) smeared the speech — Whisper tiny.en heard a fifth of
    Kokoro's emotional clips with word error > 0.2 (none now) — and moved Piper's F0 the wrong way (sad, asked
    −2.5 semitones: +0.8); a neural engine's own duration control plus a resample leaves no phase artefacts
    (``benchmarks/results/pitch.md``). Formants move with the pitch, as in any resampling shift.
    """
    x = np.asarray(x, dtype=np.float32)
    if abs(semitones) < 1e-3 or x.size == 0:
        return x
    return resample(x, sample_rate * 2.0 ** (semitones / 12.0), sample_rate)


def apply_gain(x: np.ndarray, gain: float, limit: float = 0.98) -> np.ndarray:
    """Scale loudness, soft-limiting peaks so louder emotional speech never clips."""
    y = x.astype(np.float32) * gain
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak > limit:
        y = np.tanh(y / peak * 1.5) / np.tanh(1.5) * limit
    return y.astype(np.float32)


def estimate_f0(x: np.ndarray, sample_rate: int, fmin: float = 60.0, fmax: float = 400.0) -> float:
    """Median F0 over voiced frames by autocorrelation; enough to check a pitch shift, not a tracker."""
    frame, hop = int(0.04 * sample_rate), int(0.01 * sample_rate)
    lo, hi = int(sample_rate / fmax), int(sample_rate / fmin)
    energy_floor = 0.1 * np.sqrt(np.mean(x**2) + 1e-12)
    f0s = []
    for start in range(0, len(x) - frame, hop):
        seg = x[start : start + frame] - np.mean(x[start : start + frame])
        if np.sqrt(np.mean(seg**2)) < energy_floor:
            continue
        ac = np.correlate(seg, seg, mode="full")[frame - 1 :]
        if ac[0] <= 0:
            continue
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] / ac[0] > 0.5:
            f0s.append(sample_rate / lag)
    return float(np.median(f0s)) if f0s else 0.0
