"""When does the user's turn end? Fixed silence against Smart Turn, on the example dialogues' user turns.

Every user turn of the example dialogues is voiced (acted with its gold emotion), framed by silence
(0.5 s before, 2 s after) and fed through ``LiveSession`` frame by frame, as a microphone would, in two
set-ups side by side:

- **silence 0.4 s**: Silero VAD ends the turn after 0.4 s of silence (the default before issue 35);
- **smart turn**: the VAD reports 0.2 s pauses, Smart Turn v3.2 decides whether the utterance is finished
  (``emoslm.perception.turn.TurnEnd``, eagerness auto: the turn ends anyway after 1 s of silence).

Measured per turn: **cut-ins** (the turn was ended before the speaker had finished: more than one end
decision inside one spoken turn — a false end of turn), how soon the speaker went on after each (a
cut-in that the speaker resumes within ``REJOIN_S``, before the reply's first audio, is absorbed: the live
session drops that reply and continues the turn), and the **wait**: seconds of audio from the last voiced
frame of the clip to the decision (the time a user waits before the agent even starts).
Writes ``benchmarks/results/turns.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.agents.events import SpeechStarted  # noqa: E402
from emoslm.agents.live import FRAME, REJOIN_S, LiveSession  # noqa: E402
from emoslm.audio import SAMPLE_RATE, load_audio  # noqa: E402
from emoslm.dialogues import examples_dir, read_dialogues  # noqa: E402
from emoslm.perception.turn import SmartTurn, TurnEnd  # noqa: E402
from emoslm.voicing import voice_dialogues  # noqa: E402

BEFORE_S, AFTER_S = 0.5, 2.0


def last_voiced(audio: np.ndarray, floor: float = 0.02) -> int:
    """The sample after the last 10 ms frame whose RMS is above ``floor`` of the clip's loudest frame."""
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    loud = np.nonzero(rms > floor * rms.max())[0]
    return int(loud[-1] + 1) * 160 if len(loud) else len(audio)


class Timer:
    """Wraps the detector to time its calls."""

    def __init__(self, detector: SmartTurn) -> None:
        self.detector, self.seconds = detector, []

    def complete(self, audio: np.ndarray) -> float:
        start = time.perf_counter()
        try:
            return self.detector.complete(audio)
        finally:
            self.seconds.append(time.perf_counter() - start)


def decisions(clip: np.ndarray, turn_end: TurnEnd | None) -> tuple[list[int], list[int]]:
    """The sample indexes (within the framed clip) at which the session ended a turn, and where speech started."""
    session = LiveSession(None, "en", partial_every=None, turn_end=turn_end)  # no agent: only the turn-taking
    ended: list[int] = []
    session.answer = lambda audio, heard_at=None, lang=None: ended.append(session._samples)  # noqa: ARG005
    stream = np.concatenate([np.zeros(int(BEFORE_S * SAMPLE_RATE), np.float32), clip,
                             np.zeros(int(AFTER_S * SAMPLE_RATE), np.float32)])
    for start in range(0, len(stream), FRAME):
        session.feed(stream[start:start + FRAME])
    started = [int(e.at * SAMPLE_RATE) for e in session.events() if isinstance(e, SpeechStarted)]
    return ended, started


def measure(clips: list[np.ndarray], turn_end: TurnEnd | None) -> dict[str, float]:
    cut_ins, waits, unended, gaps = 0, [], 0, []
    for clip in clips:
        ended, started = decisions(clip, turn_end)
        if not ended:
            unended += 1
            continue
        cut_ins += len(ended) - 1
        gaps += [max(0, min((s for s in started if s > e - FRAME), default=e) - e) / SAMPLE_RATE for e in ended[:-1]]
        waits.append((ended[-1] - (int(BEFORE_S * SAMPLE_RATE) + last_voiced(clip))) / SAMPLE_RATE)
    return {"turns": len(clips), "cut_ins": cut_ins, "unended": unended,
            "resumed_within_s": {f"{x:g}": sum(g <= x for g in gaps) for x in (0.5, 1.0, REJOIN_S)},
            "resume_gap_max_s": round(max(gaps), 3) if gaps else None, "wait_p50_s": round(statistics.median(waits), 3),
            "wait_p90_s": round(float(np.percentile(waits, 90)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--voices", type=Path, help="a folder for the voiced turns (kept between runs)")
    args = parser.parse_args()
    detector = Timer(SmartTurn())
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.voices or Path(tmp)
        for lang in ("en", "zh"):
            voiced = voice_dialogues([d for d in read_dialogues(examples_dir()) if d.lang == lang], folder)
            clips = [load_audio(folder / t.split_audio_file) for d in voiced for t in d.turns]
            results[lang] = {"silence 0.4 s": measure(clips, None),
                             "smart turn": measure(clips, TurnEnd(detector))}
            print(lang, results[lang], flush=True)
    results["smart_turn_ms_p50"] = round(1000 * statistics.median(detector.seconds), 1)
    lines = ["# End of turn: fixed silence vs Smart Turn", "",
             "`python benchmarks/bench_turns.py`; the example dialogues' user turns, voiced, each framed by "
             f"{BEFORE_S} s / {AFTER_S} s of silence and fed frame by frame through `LiveSession`. Cut-ins: "
             "ends of turn decided while the speaker had not finished. Wait: seconds from the last voiced "
             "frame to the decision.", "",
             "| lang | turns | end of turn | cut-ins | resumed within 0.5 / 1 / 1.5 s | wait p50 s | wait p90 s |",
             "|---|---|---|---|---|---|---|"]
    for lang in ("en", "zh"):
        for mode, r in results[lang].items():
            resumed = " / ".join(str(v) for v in r["resumed_within_s"].values())
            lines.append(f"| {lang} | {r['turns']} | {mode} | {r['cut_ins']} | {resumed} | {r['wait_p50_s']:.2f} | "
                         f"{r['wait_p90_s']:.2f} |")
    lines += ["", f"Smart Turn: {results['smart_turn_ms_p50']} ms per call (p50, one onnxruntime thread)."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "turns.json").write_text(json.dumps(results, indent=1))
    (args.out / "turns.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
