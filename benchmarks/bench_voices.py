"""Which voices to use: intelligibility, speed and how well the recogniser hears their acted emotion, side by side.

In one run, every voice speaks the same text:

- **Mandarin**: the zh example dialogues' user turns, voiced by espeak-ng (the old default) and by each
  of Kokoro's five voices; Whisper base (language zh) transcribes them; CER after converting both sides
  to simplified characters (Whisper often writes traditional ones).
- **English**: the en example dialogues' user turns, voiced by Piper (the default), hibari and the
  Kokoro voices; Whisper tiny.en; WER.
- **Speed**: synthesis seconds per second of speech (one onnxruntime thread, as an agent runs them).
- **Emotion**: the built-in recogniser's voice-only (acoustic) accuracy on acted clips: the
  recogniser's own script lines (``plain`` lines: the voice alone carries the emotion), each acted
  with every emotion's prosody. The recogniser was trained on Piper/espeak-ng/Flite voices, so for
  the new voices this is accuracy on voices it has never heard.

Writes ``benchmarks/results/voices.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.config import configure_threads  # noqa: E402
from emoslm.dialogues import examples_dir, read_dialogues  # noqa: E402
from emoslm.emotions import TAGS  # noqa: E402
from emoslm.perception.asr import FasterWhisperASR  # noqa: E402
from emoslm.perception.corpus import load_scripts  # noqa: E402
from emoslm.speech.kokoro import KOKORO_VOICES  # noqa: E402
from emoslm.speech.prosody import acted  # noqa: E402
from emoslm.speech.tts import load_tts  # noqa: E402
from emoslm.textnorm import error_rate  # noqa: E402

ZH_VOICES = ["espeak:cmn", *(f"kokoro:{v}" for v in KOKORO_VOICES)]
EN_VOICES = ["piper", "hibari", *(f"kokoro:{v}" for v in KOKORO_VOICES)]


def user_turns(lang: str, limit: int) -> list[tuple[str, str]]:
    """(text, gold emotion) of the example dialogues' user turns."""
    turns = [(t.text, t.emotion or "neutral") for d in read_dialogues(examples_dir()) if d.lang == lang
             for t in d.turns]
    return turns[:limit] if limit else turns


def intelligibility(specs: list[str], turns: list[tuple[str, str]], lang: str) -> dict[str, dict]:
    asr = FasterWhisperASR("whisper-base" if lang == "zh" else "whisper-tiny.en")
    rows = {}
    for spec in specs:
        tts, errors, synth, spoken = load_tts(spec), [], 0.0, 0.0
        for text, emotion in turns:
            speech = tts.synthesize(text, acted(emotion))
            synth, spoken = synth + speech.seconds, spoken + speech.duration
            heard = asr.transcribe(speech.at(), language=lang).text
            errors.append(error_rate(text, heard))  # CER for Chinese, in simplified characters
        rows[spec] = {"error_rate": round(statistics.fmean(errors), 4), "rtf": round(synth / spoken, 3),
                      "turns": len(turns)}
        print(f"{lang} {spec:22s} {'CER' if lang == 'zh' else 'WER'} {rows[spec]['error_rate']:.3f}  "
              f"RTF {rows[spec]['rtf']:.3f}", flush=True)
    return rows


def emotion_accuracy(specs: list[str], lang: str, lines: int) -> dict[str, float]:
    from emoslm.perception.recognizer import EmotionRecognizer

    recogniser = EmotionRecognizer()
    plain = load_scripts(lang)["plain"][:lines]
    out = {}
    for spec in specs:
        tts, hits, total = load_tts(spec), 0, 0
        for emotion in TAGS:
            for line in plain:
                evidence = recogniser.acoustic_model.acoustic(tts.synthesize(line, acted(emotion)).at())
                hits, total = hits + (evidence.tag == emotion), total + 1
        out[spec] = round(hits / total, 4)
        print(f"{lang} {spec:22s} acted-emotion accuracy (voice only) {out[spec]:.3f} of {total}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=16, help="user turns per language (0: all)")
    parser.add_argument("--emotion-lines", type=int, default=3, help="plain script lines acted per emotion")
    args = parser.parse_args()
    configure_threads(torch_threads=1)
    start = time.perf_counter()
    result = {"zh": intelligibility(ZH_VOICES, user_turns("zh", args.turns), "zh"),
              "en": intelligibility(EN_VOICES, user_turns("en", args.turns), "en")}
    for lang, specs in (("zh", ZH_VOICES), ("en", EN_VOICES)):
        for spec, accuracy in emotion_accuracy(specs, lang, args.emotion_lines).items():
            result[lang][spec]["emotion_accuracy"] = accuracy
    result["chance"] = round(1 / len(TAGS), 4)
    result["seconds"] = round(time.perf_counter() - start, 1)
    report(result, args)


def report(result: dict, args: argparse.Namespace) -> None:
    out = ROOT / "results"
    (out / "voices.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    lines = ["# Voices side by side (2 CPU cores, one onnxruntime thread per voice)", "",
             f"`python benchmarks/bench_voices.py --turns {args.turns} --emotion-lines {args.emotion_lines}` "
             f"({result['seconds']:.0f} s). Error rate: Whisper base (zh, CER on simplified characters) or tiny.en "
             "(en, WER) on the example dialogues' user turns, each acted with its gold emotion. RTF: synthesis "
             "seconds per second of speech. Emotion: the built-in recogniser's voice-only accuracy on "
             f"{args.emotion_lines} neutral-worded lines acted in each of the 7 emotions (chance "
             f"{result['chance']:.2f}).", ""]
    for lang, metric in (("zh", "CER"), ("en", "WER")):
        lines += [f"| {lang} voice | {metric} | RTF | emotion accuracy |", "|---|---|---|---|"]
        for spec, row in sorted(result[lang].items(), key=lambda item: item[1]["error_rate"]):
            lines.append(f"| {spec} | {row['error_rate']:.1%} | {row['rtf']:.2f} | "
                         f"{row.get('emotion_accuracy', float('nan')):.2f} |")
        lines.append("")
    (out / "voices.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
