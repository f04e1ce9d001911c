"""Hand-written DSP vs librosa, side by side: pitch shift (Piper has no pitch control) and YIN pitch tracking.

emoslm keeps its own code only where this shows it is needed. For each: seconds per call on the same
clips (median of 5), and agreement: the F0 a shifted clip ends up with against the asked-for shift,
and the per-frame F0 of the two trackers (median difference in cents over frames both call voiced).
Writes ``benchmarks/results/dsp.{json,md}``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.audio import SAMPLE_RATE  # noqa: E402
from emoslm.perception.features import HOP, _pitch  # noqa: E402
from emoslm.speech.dsp import estimate_f0, pitch_shift  # noqa: E402
from emoslm.speech.tts import PiperTTS  # noqa: E402

TEXTS = ["I have had a really hard day at work, and I feel completely exhausted.",
         "You found my ring? I cannot believe it, thank you so much!",
         "The meeting moved to three o'clock on Thursday."]


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


def main() -> None:
    tts = PiperTTS()
    clips = [tts.synthesize(t, None).at() for t in TEXTS]
    rows = {"pitch_shift": [], "yin": []}
    for audio in clips:
        base = estimate_f0(audio, SAMPLE_RATE)
        for semitones in (-2.5, 3.0):
            ours_s, ours = timed(lambda a=audio, s=semitones: pitch_shift(a, SAMPLE_RATE, s))
            lib_s, lib = timed(lambda a=audio, s=semitones: librosa_shift(a, s))
            want = 12 * np.log2
            rows["pitch_shift"].append({
                "seconds": round(len(audio) / SAMPLE_RATE, 2), "semitones": semitones,
                "ours_s": round(ours_s, 4), "librosa_s": round(lib_s, 4),
                "ours_shift_st": round(float(want(estimate_f0(ours, SAMPLE_RATE) / base)), 2),
                "librosa_shift_st": round(float(want(estimate_f0(lib, SAMPLE_RATE) / base)), 2)})
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
