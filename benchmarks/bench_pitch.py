"""How the emotion prosody's pitch is made: librosa's phase vocoder (before) against varispeed (now).

Every neural voice (Piper, Kokoro, hibari) has no pitch control, so an emotion's pitch is shifted after
synthesis. For each engine and each emotion whose prosody moves the pitch, side by side in one run:

- intelligibility: Whisper tiny.en's word error on the clip, mean and the share of clips above 0.2 (a clip a
  listener — or the model trained on it — hears wrong words in);
- pitch: the median F0 moved, in semitones, against the same prosody rendered at pitch 0 (asked: the prosody's);
- length: the clip's length over that flat render's (the prosody's rate should be kept).

Piper is measured twice: with its VITS noise (how replies are spoken; several draws per text) and with the noise
off (how data builds voice it). Writes ``benchmarks/results/pitch.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.native import cpu_flags, cpu_name  # noqa: E402
from emoslm.speech import kokoro, tts  # noqa: E402
from emoslm.speech.dsp import engine_rate, estimate_f0, varispeed  # noqa: E402
from emoslm.speech.prosody import ACTED, REPLY  # noqa: E402

TEXTS = [  # none of them is in a training corpus or an evaluation dialogue
    "I left the keys on the kitchen table before the train came.",
    "She painted the fence blue while the radio played old songs.",
    "We counted the boxes twice and one of them was still missing.",
    "The garden looks different now that the old tree is gone.",
]
PROSODIES = {f"acted {t}": p for t, p in ACTED.items() if p.pitch} | {f"reply {t}": p for t, p in REPLY.items() if p.pitch}


def phase_vocoder(x: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """The shift emoslm used before (librosa's default 2048-point STFT, soxr_hq), kept here as the reference."""
    import librosa

    if abs(semitones) < 1e-3 or x.size == 0:
        return x.astype(np.float32)
    shifted = librosa.effects.pitch_shift(x.astype(np.float32), sr=sample_rate, n_steps=semitones, res_type="soxr_hq")
    return librosa.util.fix_length(shifted, size=len(x)).astype(np.float32)


METHODS = {  # name → (the rate an engine is asked for, the shift after it)
    "phase vocoder (before)": (lambda rate, semitones: rate, phase_vocoder),
    "varispeed (now)": (engine_rate, varispeed),
}


def use(method: str) -> None:
    """Make the engines pitch their audio by ``method`` (both modules import the two functions by name)."""
    rate_rule, shift = METHODS[method]
    for module in (tts, kokoro):
        module.engine_rate, module.varispeed = rate_rule, shift


def measure(engine: tts.TTS, prosody, draws: int, asr) -> dict[str, float]:
    from emoslm.textnorm import error_rate

    errors, moved, lengths = [], [], []
    for text in TEXTS:
        flat = engine.synthesize(text, replace(prosody, pitch=0.0)).at()
        for _ in range(draws):
            clip = engine.synthesize(text, prosody).at()
            errors.append(error_rate(text, asr.transcribe(clip).text))
            moved.append(12 * np.log2(max(estimate_f0(clip, 16_000), 1.0) / max(estimate_f0(flat, 16_000), 1.0)))
            lengths.append(len(clip) / len(flat))
    return {"wer": float(np.mean(errors)), "above_0.2": float(np.mean(np.array(errors) > 0.2)),
            "moved_st": float(np.median(moved)), "length": float(np.median(lengths))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=3, help="noisy Piper renders per text and prosody")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    from emoslm.perception.asr import FasterWhisperASR

    asr = FasterWhisperASR("whisper-tiny.en")
    piper = tts.PiperTTS()
    engines = {"piper (noise on: replies)": (piper, args.draws, False), "piper (noise off: data builds)": (piper, 1, True),
               "kokoro:jf_nezumi": (kokoro.KokoroTTS("jf_nezumi"), 1, False), "hibari": (kokoro.HibariTTS(), 1, False)}
    rows = []
    for engine_name, (engine, draws, quiet) in engines.items():
        for method in METHODS:
            use(method)
            for name, prosody in PROSODIES.items():
                prosody = engine.reproducible(prosody) if quiet else prosody
                row = {"engine": engine_name, "method": method, "prosody": name, "asked_st": prosody.pitch,
                       **measure(engine, prosody, draws, asr)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    flags = cpu_flags()
    machine = {"cpu": cpu_name(), "python": platform.python_version(),
               "flags": sorted(f for f in flags if f.startswith(("avx", "amx")))}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pitch.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    (args.out / "pitch.md").write_text(report(rows, machine))
    print(report(rows, machine))


def report(rows: list[dict], machine: dict) -> str:
    lines = ["# Emotion pitch: phase vocoder (before) vs varispeed (now) — `python benchmarks/bench_pitch.py`", "",
             f"Machine: {machine['cpu']}, flags {' '.join(machine['flags'])}. Whisper tiny.en hears each clip; "
             f"{len(TEXTS)} texts per prosody (noisy Piper: several draws each). F0 moved: median, semitones, "
             "against the same prosody at pitch 0 (by `emoslm.speech.dsp.estimate_f0`, an autocorrelation "
             "estimate); length: over that flat clip's.", "",
             "| engine | method | word error | clips > 0.2 | \\|F0 moved − asked\\| st | length ratio |",
             "|---|---|---|---|---|---|"]
    for engine in dict.fromkeys(r["engine"] for r in rows):
        for method in METHODS:
            sel = [r for r in rows if r["engine"] == engine and r["method"] == method]
            lines.append(f"| {engine} | {method} | {np.mean([r['wer'] for r in sel]):.3f} | "
                         f"{np.mean([r['above_0.2'] for r in sel]):.2f} | "
                         f"{np.mean([abs(r['moved_st'] - r['asked_st']) for r in sel]):.2f} | "
                         f"{np.mean([r['length'] for r in sel]):.2f} |")
    lines += ["", "Per prosody:", "", "| engine | method | prosody | asked st | moved st | word error | clips > 0.2 | length |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['engine']} | {r['method']} | {r['prosody']} | {r['asked_st']:+.1f} | {r['moved_st']:+.2f} | "
              f"{r['wer']:.3f} | {r['above_0.2']:.2f} | {r['length']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
