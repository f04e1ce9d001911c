"""Latency after the end of the user's speech: streaming vs blocking, side by side, teacher en and zh.

Every user turn of the example dialogues is voiced, then each dialogue is played through the teacher
agent twice, alternately in the same process (same models, same warm caches):

- **streaming**: ``Conversation.stream`` with the reply spoken clause by clause while the LLM writes
  the rest. First text / first audio are the event times, measured from the moment the clip is
  handed over (a whole clip: the end of the user's speech).
- **blocking**: the pipeline before streaming: the whole reply is written, then spoken in one
  synthesis call, and ``respond`` returns it. Its caller has nothing before the turn ends, so first
  text = first audio = whole turn.

Each turn is a replayed recording, so the dialogue loop gives the agent up to the clip's duration for
the work a live conversation does while the user talks (``Agent.settle``: the teacher prefills its
next prompt's head); the clock starts after that, at the end of the user's speech.

Writes ``benchmarks/results/latency.{json,md}``: p50/p90 per language and mode, the ratio, and the
mean seconds per stage of the streaming turns.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.agents import Conversation, load_agent  # noqa: E402
from emoslm.audio import load_audio  # noqa: E402
from emoslm.config import configure_threads  # noqa: E402
from emoslm.demo import pick_dialogues  # noqa: E402
from emoslm.dialogues import examples_dir, read_dialogues  # noqa: E402
from emoslm.perception.training import ensure_recogniser  # noqa: E402
from emoslm.progress import silent  # noqa: E402
from emoslm.voicing import voice_dialogues  # noqa: E402

METRICS = ("first_text", "first_audio", "total")
STAGES = ("vad", "asr", "emotion", "think", "write", "tts")


def play(lang: str, dialogues_per_lang: int, voices: Path) -> dict[str, list[dict[str, float]]]:
    """Per mode, one row of timings per user turn."""
    picked = pick_dialogues(read_dialogues(examples_dir()), [lang], dialogues_per_lang)
    voiced = voice_dialogues(picked, voices)
    rows: dict[str, list[dict[str, float]]] = {"streaming": [], "blocking": []}
    with load_agent("teacher") as agent:
        agent.respond([], load_audio(voices / voiced[0].turns[0].split_audio_file), lang)  # load every model once
        for dialogue in voiced:
            for mode in ("streaming", "blocking"):
                agent.by_clause = mode == "streaming"
                conversation = Conversation(agent, lang)
                for turn in dialogue.turns:
                    audio = load_audio(voices / turn.split_audio_file)
                    reply = conversation.respond(audio)
                    if mode == "streaming":
                        rows[mode].append(dict(reply.timings))
                    else:  # respond returns with the whole turn: nothing reached the caller before
                        rows[mode].append({**reply.timings, **dict.fromkeys(METRICS, reply.timings["total"])})
                print(f"{lang} {dialogue.dialogue_id} {mode}: first audio "
                      f"{[round(r['first_audio'], 2) for r in rows[mode][-len(dialogue.turns):]]}", flush=True)
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summarise(rows: dict[str, list[dict[str, float]]]) -> dict[str, object]:
    out: dict[str, object] = {"turns": len(rows["streaming"])}
    for mode, turns in rows.items():
        out[mode] = {m: {"p50": round(statistics.median(r[m] for r in turns), 3),
                         "p90": round(percentile([r[m] for r in turns], 0.9), 3)}
                     for m in METRICS if all(m in r for r in turns)}
    out["stages_mean_s"] = {s: round(statistics.mean(r.get(s, 0.0) for r in rows["streaming"]), 3) for s in STAGES}
    stream, block = out["streaming"], out["blocking"]
    out["first_audio_ratio_blocking_over_streaming"] = round(block["first_audio"]["p50"] / stream["first_audio"]["p50"],
                                                             2)
    out["total_ratio_streaming_over_blocking"] = round(stream["total"]["p50"] / block["total"]["p50"], 2)
    return out


def markdown(results: dict[str, dict]) -> str:
    lines = ["# Latency after the end of the user's speech (teacher agent, embedded default)", "",
             "Measured by `benchmarks/bench_latency.py` on this machine, streaming and blocking alternated per "
             "dialogue in one process. Seconds, p50 / p90 over the user turns of the example dialogues.", "",
             "| lang | mode | turns | first text | first audio | whole turn |", "|---|---|---|---|---|---|"]
    for lang, r in results.items():
        for mode in ("streaming", "blocking"):
            cells = [f"{r[mode][m]['p50']:.2f} / {r[mode][m]['p90']:.2f}" for m in METRICS]
            lines.append(f"| {lang} | {mode} | {r['turns']} | " + " | ".join(cells) + " |")
    lines += ["", "| lang | first audio: blocking ÷ streaming (p50) | whole turn: streaming ÷ blocking (p50) |",
              "|---|---|---|"]
    lines += [f"| {lang} | {r['first_audio_ratio_blocking_over_streaming']}× | "
              f"{r['total_ratio_streaming_over_blocking']}× |" for lang, r in results.items()]
    lines += ["", "Mean seconds per stage of the streaming turns (think = LLM start to first reply text, "
              "including the reply prompt; write = the rest of the reply; tts = synthesis time, overlapping "
              "the writing):", "", "| lang | " + " | ".join(STAGES) + " |", "|---" * (len(STAGES) + 1) + "|"]
    lines += [f"| {lang} | " + " | ".join(f"{r['stages_mean_s'][s]:.2f}" for s in STAGES) + " |"
              for lang, r in results.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=0, help="example dialogues per language (0 = all 12)")
    parser.add_argument("--lang", default="en,zh")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    configure_threads()
    ensure_recogniser(silent)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lang in [x.strip() for x in args.lang.split(",") if x.strip()]:
            results[lang] = summarise(play(lang, args.dialogues, Path(tmp)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(results, indent=1))
    (args.out / "latency.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
