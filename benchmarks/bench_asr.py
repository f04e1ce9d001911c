"""Whisper on a turn: the window fitted to the clip against the 30 s window, side by side.

The example dialogues' user turns are voiced (as ``bench_latency`` does), trimmed to speech, and each is
transcribed by the turn models (whisper-base for zh, tiny.en for en) in one process:

- **30 s window**: faster-whisper's own transcription (Silero VAD crop, 30 s mel window, temperature
  fallback) — the turn path before issue 35;
- **fitted, N s**: one greedy decode, no fallback, over the clip padded with silence to at least N s.

Error rate: CER on simplified characters (zh), WER (en). Seconds: p50 / max per turn.
Writes ``benchmarks/results/asr.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.audio import load_audio, trim_to_speech  # noqa: E402
from emoslm.config import configure_threads  # noqa: E402
from emoslm.dialogues import examples_dir, read_dialogues  # noqa: E402
from emoslm.perception.asr import FasterWhisperASR, asr_for_language  # noqa: E402
from emoslm.textnorm import error_rate  # noqa: E402
from emoslm.voicing import voice_dialogues  # noqa: E402

FLOORS = (10.0, 15.0, 20.0)


def turns(lang: str, folder: Path) -> list[tuple[str, object]]:
    voiced = voice_dialogues([d for d in read_dialogues(examples_dir()) if d.lang == lang], folder)
    return [(t.text, trim_to_speech(load_audio(folder / t.split_audio_file), pad=0.3)) for d in voiced for t in d.turns]


def measure(asr: FasterWhisperASR, clips: list, lang: str, timestamps: bool) -> dict[str, float]:
    asr.transcribe(clips[0][1], lang, timestamps=timestamps)  # warm
    errors, chars, seconds = 0.0, 0, []
    for text, audio in clips:
        start = time.perf_counter()
        heard = asr.transcribe(audio, lang, timestamps=timestamps).text
        seconds.append(time.perf_counter() - start)
        errors, chars = errors + error_rate(text, heard) * len(text), chars + len(text)
    return {"error_rate": round(errors / chars, 4), "p50_s": round(statistics.median(seconds), 3),
            "max_s": round(max(seconds), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    configure_threads()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lang in ("zh", "en"):
            clips = turns(lang, Path(tmp))
            name = asr_for_language(lang)
            rows = {"30 s window": measure(FasterWhisperASR(name), clips, lang, timestamps=True)}
            for floor in FLOORS:
                rows[f"fitted, {floor:g} s"] = measure(FasterWhisperASR(name, fit_floor=floor), clips, lang, False)
            results[lang] = {"model": name, "turns": len(clips), "rows": rows}
            print(lang, rows, flush=True)
    lines = ["# Whisper on a turn: fitted window vs 30 s window", "",
             "`python benchmarks/bench_asr.py`; the example dialogues' user turns, voiced and trimmed to speech; "
             "error rate = CER (zh, simplified) / WER (en); seconds per turn on this machine.", "",
             "| lang | model | turns | window | error rate | p50 s | max s |", "|---|---|---|---|---|---|---|"]
    for lang, r in results.items():
        for label, row in r["rows"].items():
            lines.append(f"| {lang} | {r['model']} | {r['turns']} | {label} | {row['error_rate']:.3f} | "
                         f"{row['p50_s']:.2f} | {row['max_s']:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "asr.json").write_text(json.dumps(results, indent=1))
    (args.out / "asr.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
