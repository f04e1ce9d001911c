"""Cost of hearing one 5-second utterance: features + classifiers, ASR excluded.

Measured side by side in one run: each feature set, the acoustic classifier, text emotion and
fusion, the whole ``EmotionRecognizer.estimate`` call, and two comparisons that explain the
design: numpy prosody vs openSMILE eGeMAPS, and the Whisper encoder on the clip's own length vs a
padded 30 s window. Needs a trained recogniser (``emoslm perception train``). Writes
``benchmarks/results/perception.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.perception.features import EgemapsExtractor, WhisperEmbedder, prosodic_features  # noqa: E402
from emoslm.perception.recognizer import EmotionRecognizer, recogniser_dir  # noqa: E402
from emoslm.speech.prosody import acted  # noqa: E402
from emoslm.speech.tts import PiperTTS  # noqa: E402

TEXT = "My flight got cancelled for the third time and nobody at the desk will help me at all today."


def ms(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def padded_whisper(embedder: WhisperEmbedder, audio: np.ndarray) -> np.ndarray:
    """The usual way: pad to Whisper's 30 s window before encoding."""
    mel = embedder.mels(audio)
    mel = np.pad(mel, ((0, 0), (0, max(0, 3000 - mel.shape[1]))))[:, :3000]
    view = embedder._ct2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
    return np.asarray(embedder.encoder.encode(view, to_cpu=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    if not (recogniser_dir() / "meta.json").exists():
        sys.exit(f"no trained recogniser in {recogniser_dir()}; run `emoslm perception train` first")
    speech = PiperTTS().synthesize(TEXT, acted("anger")).at()
    audio = np.resize(speech, 5 * 16_000)  # exactly 5 s
    recognizer = EmotionRecognizer()
    embedder = recognizer.acoustic_model.featurizer._whisper
    acoustic = recognizer.acoustic_model
    rows = {
        "prosodic features (numpy)": ms(lambda: prosodic_features(audio), args.repeats),
        "whisper embedding, clip length": ms(lambda: embedder.embed(audio), args.repeats),
        "whisper encoder, padded to 30 s": ms(lambda: padded_whisper(embedder, audio), max(3, args.repeats // 4)),
        "acoustic features + classifier": ms(lambda: acoustic.acoustic(audio), args.repeats),
        "text emotion (VADER+NRC+MiniLM)": ms(lambda: recognizer.text_model.textual(TEXT, "en"), args.repeats),
        "full estimate (acoustic+text+fusion)": ms(lambda: recognizer.estimate(audio, TEXT, "en"), args.repeats),
    }
    try:
        egemaps = EgemapsExtractor()
        rows["eGeMAPS via openSMILE"] = ms(lambda: egemaps.extract(audio), args.repeats)
    except Exception as exc:  # optional, non-commercial package
        print(f"openSMILE skipped: {exc}")
    ratios = {
        "whisper padded 30 s / clip length": rows["whisper encoder, padded to 30 s"]
        / rows["whisper embedding, clip length"],
    }
    if "eGeMAPS via openSMILE" in rows:
        ratios["openSMILE eGeMAPS / numpy prosody"] = rows["eGeMAPS via openSMILE"] / rows["prosodic features (numpy)"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "perception.json").write_text(json.dumps({"utterance_s": 5.0, "ms": rows, "ratios": ratios},
                                                         indent=2))
    lines = ["# Perception benchmark (one 5 s utterance, median ms, ASR excluded)", "",
             "| step | ms |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in rows.items()]
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    (args.out / "perception.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
