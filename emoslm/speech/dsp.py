"""Signal processing for prosody that TTS engines do not expose (Piper has no pitch control)."""

from __future__ import annotations

import threading

import numpy as np


def preload() -> None:
    """Import what ``pitch_shift`` needs on a background thread, once.

    Why: ``librosa.effects`` pulls in scipy.signal and friends, 4-6 s on a 2-core AVX2 CPU, and that
    landed on the first emotional clause a process spoke (first audio of a server's first reply). A
    voice calls this when it is loaded; a clause spoken before the import ends waits for it as before.
    """
    global _PRELOADING
    if _PRELOADING is None:
        _PRELOADING = threading.Thread(target=_import_effects, name="emoslm-dsp-preload", daemon=True)
        _PRELOADING.start()


def _import_effects() -> None:
    import librosa.effects  # noqa: F401


def settle_preload() -> None:
    """Wait for an in-flight preload before importing anything else that imports scipy.

    Why: two threads importing scipy's submodules at once can meet its circular imports half-initialised
    (``cannot import name 'PytestTester' from partially initialized module``), which killed
    `perception train` when hibari (scipy.fft) loaded while this preload imported scipy.signal.
    """
    if _PRELOADING is not None and _PRELOADING.is_alive():
        _PRELOADING.join()


_PRELOADING: threading.Thread | None = None


def pitch_shift(x: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Shift pitch by ``semitones`` keeping duration (librosa's phase vocoder + soxr resampling).

    It replaced a hand-written phase vocoder: the same shift on a steady tone, 1.1–2× faster
    (``benchmarks/results/dsp.md``).
    """
    if abs(semitones) < 1e-3 or x.size == 0:
        return x.astype(np.float32)
    import librosa

    shifted = librosa.effects.pitch_shift(x.astype(np.float32), sr=sample_rate, n_steps=semitones, res_type="soxr_hq")
    return librosa.util.fix_length(shifted, size=len(x)).astype(np.float32)


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
