"""Signal processing for prosody that TTS engines do not expose (Piper has no pitch control)."""

from __future__ import annotations

import numpy as np
import soxr


def _stft(x: np.ndarray, n_fft: int, hop: int, window: np.ndarray) -> np.ndarray:
    pad = np.pad(x, (n_fft // 2, n_fft // 2 + n_fft))
    frames = 1 + (len(pad) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    return np.fft.rfft(pad[idx] * window, axis=1)


def _istft(spec: np.ndarray, n_fft: int, hop: int, window: np.ndarray, length: int) -> np.ndarray:
    frames = np.fft.irfft(spec, n=n_fft, axis=1) * window
    out = np.zeros(hop * (len(frames) - 1) + n_fft)
    norm = np.zeros_like(out)
    for i, frame in enumerate(frames):
        out[i * hop : i * hop + n_fft] += frame
        norm[i * hop : i * hop + n_fft] += window**2
    out /= np.maximum(norm, 1e-8)
    return out[n_fft // 2 : n_fft // 2 + length]


def time_stretch(x: np.ndarray, factor: float, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Phase-vocoder time stretch: the result is ``factor`` times as long, at the same pitch."""
    if factor <= 0:
        raise ValueError("factor must be positive")
    window = np.hanning(n_fft)
    spec = _stft(x.astype(np.float64), n_fft, hop, window)
    steps = np.arange(0, len(spec) - 1, 1.0 / factor)
    expected = 2 * np.pi * hop * np.arange(spec.shape[1]) / n_fft
    phase = np.angle(spec[0])
    out = np.empty((len(steps), spec.shape[1]), dtype=np.complex128)
    for i, t in enumerate(steps):
        lo = int(t)
        frac = t - lo
        mag = (1 - frac) * np.abs(spec[lo]) + frac * np.abs(spec[lo + 1])
        out[i] = mag * np.exp(1j * phase)
        delta = np.angle(spec[lo + 1]) - np.angle(spec[lo]) - expected
        delta -= 2 * np.pi * np.round(delta / (2 * np.pi))
        phase = phase + expected + delta
    return _istft(out, n_fft, hop, window, int(round(len(x) * factor))).astype(np.float32)


def pitch_shift(x: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Shift pitch by ``semitones`` keeping duration: stretch in time, then resample back."""
    if abs(semitones) < 1e-3 or x.size == 0:
        return x.astype(np.float32)
    ratio = 2.0 ** (semitones / 12.0)
    stretched = time_stretch(x, ratio)
    shifted = soxr.resample(stretched, sample_rate * ratio, sample_rate, quality="HQ")
    if len(shifted) >= len(x):
        return shifted[: len(x)].astype(np.float32)
    return np.pad(shifted, (0, len(x) - len(shifted))).astype(np.float32)


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
