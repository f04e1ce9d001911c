"""Hand-written DSP vs librosa, side by side: pitch shift (Piper has no pitch control) and YIN pitch tracking.

emoslm keeps its own code only where this shows it is needed. For each: seconds per call on the same
clips (median of 5), and agreement: the F0 a shifted clip ends up with against the asked-for shift,
and the per-frame F0 of the two trackers (median difference in cents over frames both call voiced).
Writes ``benchmarks/results/dsp.{json,md}``.

Both shifts measured here are phase vocoders on a steady tone; on speech they garbled words and moved
Piper's F0 the wrong way, so emoslm now shifts by varispeed (``benchmarks/bench_pitch.py``).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.audio import SAMPLE_RATE  # noqa: E402
from emoslm.perception.features import HOP, _pitch  # noqa: E402
from emoslm.speech.dsp import estimate_f0  # noqa: E402
from emoslm.speech.tts import PiperTTS  # noqa: E402

TEXTS = ["I have had a really hard day at work, and I feel completely exhausted.",
         "You found my ring? I cannot believe it, thank you so much!",
         "The meeting moved to three o'clock on Thursday."]


# --- the hand-written phase vocoder emoslm used before librosa's (kept here as the reference) ---------

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


def handwritten_time_stretch(x: np.ndarray, factor: float, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
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


def handwritten_pitch_shift(x: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Shift pitch by ``semitones`` keeping duration: stretch in time, then resample back."""
    if abs(semitones) < 1e-3 or x.size == 0:
        return x.astype(np.float32)
    ratio = 2.0 ** (semitones / 12.0)
    stretched = handwritten_time_stretch(x, ratio)
    shifted = soxr.resample(stretched, sample_rate * ratio, sample_rate, quality="HQ")
    if len(shifted) >= len(x):
        return shifted[: len(x)].astype(np.float32)
    return np.pad(shifted, (0, len(x) - len(shifted))).astype(np.float32)



def timed(fn, repeats: int = 5) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def librosa_shift(audio: np.ndarray, semitones: float) -> np.ndarray:
    import librosa

    return librosa.effects.pitch_shift(audio, sr=SAMPLE_RATE, n_steps=semitones, res_type="soxr_hq")


def librosa_yin(audio: np.ndarray, frames: int) -> np.ndarray:
    import librosa

    f0, voiced, _ = librosa.pyin(audio, fmin=60, fmax=500, sr=SAMPLE_RATE, frame_length=1024, hop_length=HOP)
    return np.where(voiced, f0, 0.0)[:frames]


def harmonic(f0: float, seconds: float = 2.0) -> np.ndarray:
    """A steady vowel-like tone (ten harmonics): its F0 is unambiguous, so a shift can be read off exactly."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.1 * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 11))).astype(np.float32)


def semitones_between(f0: float, shifted: float) -> float:
    return round(float(12 * np.log2(shifted / f0)), 2) if f0 > 0 and shifted > 0 else float("nan")


def main() -> None:
    tts = PiperTTS()
    clips = [tts.synthesize(t, None).at() for t in TEXTS]
    rows = {"pitch_shift": [], "yin": []}
    for audio in [harmonic(150.0), *clips]:
        base = estimate_f0(audio, SAMPLE_RATE)
        for semitones in (-2.5, 3.0):
            ours_s, ours = timed(lambda a=audio, s=semitones: handwritten_pitch_shift(a, SAMPLE_RATE, s))
            lib_s, lib = timed(lambda a=audio, s=semitones: librosa_shift(a, s))
            rows["pitch_shift"].append({
                "seconds": round(len(audio) / SAMPLE_RATE, 2), "semitones": semitones,
                "ours_s": round(ours_s, 4), "librosa_s": round(lib_s, 4),
                "ours_shift_st": semitones_between(base, estimate_f0(ours, SAMPLE_RATE)),
                "librosa_shift_st": semitones_between(base, estimate_f0(lib, SAMPLE_RATE))})
        frames = len(audio) // HOP
        ours_s, ours = timed(lambda a=audio, n=frames: _pitch(a, n))
        lib_s, lib = timed(lambda a=audio, n=frames: librosa_yin(a, n), repeats=2)
        n = min(len(ours), len(lib))
        both = (ours[:n] > 0) & (lib[:n] > 0)
        cents = np.abs(1200 * np.log2(ours[:n][both] / lib[:n][both]))
        rows["yin"].append({"seconds": round(len(audio) / SAMPLE_RATE, 2), "ours_s": round(ours_s, 4),
                            "librosa_pyin_s": round(lib_s, 4), "frames_both_voiced": int(both.sum()),
                            "voicing_agreement": round(float(((ours[:n] > 0) == (lib[:n] > 0)).mean()), 3),
                            "median_cents_apart": round(float(np.median(cents)), 1) if both.any() else None})
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    (out / "dsp.json").write_text(json.dumps(rows, indent=1))
    lines = ["# Hand-written DSP vs librosa (benchmarks/bench_dsp.py)", "",
             "Pitch shift: the first clip is a steady 150 Hz harmonic tone (its shift reads off exactly); the "
             "others are Piper speech, where the autocorrelation F0 estimate is rough.", "",
             "| clip s | shift st | ours s | librosa s | librosa ÷ ours | shift measured: ours | librosa |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['seconds']} | {r['semitones']} | {r['ours_s']} | {r['librosa_s']} | "
              f"{r['librosa_s'] / r['ours_s']:.2f}× | {r['ours_shift_st']} | {r['librosa_shift_st']} |"
              for r in rows["pitch_shift"]]
    lines += ["", "| clip s | ours YIN s | librosa pYIN s | pYIN ÷ ours | voicing agreement | median cents apart |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['seconds']} | {r['ours_s']} | {r['librosa_pyin_s']} | {r['librosa_pyin_s'] / r['ours_s']:.1f}× | "
              f"{r['voicing_agreement']} | {r['median_cents_apart']} |" for r in rows["yin"]]
    (out / "dsp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
