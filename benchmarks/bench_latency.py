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

- **streaming, one core taken** (``--hog``): streaming again while another process keeps one core busy
  (a bounded busy loop this benchmark starts before the dialogue and stops after it) — the machine a
  voice agent really runs on. The LLM's threads follow the load (``emoslm.threads``).

Writes ``benchmarks/results/latency.{json,md}``: p50/p90 per language and mode, the ratios, and the
mean seconds per stage of the streaming turns (idle and, with ``--hog``, with the core taken).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
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
HOGGED = "streaming, one core taken"
HOG_LIMIT_S = 1800  # the busy loop ends by itself even if this process dies


@contextlib.contextmanager
def hog() -> object:
    """Another process keeping one core busy (a pure-Python busy loop, bounded in time)."""
    loop = f"import time\nend = time.time() + {HOG_LIMIT_S}\nwhile time.time() < end: pass"
    process = subprocess.Popen([sys.executable, "-c", loop])
    time.sleep(1.0)  # it is already running when the user starts to speak (the load is judged over 1 s)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def play(lang: str, dialogues_per_lang: int, voices: Path, hogged: bool = False) -> dict[str, list[dict[str, float]]]:
    """Per mode, one row of timings per user turn."""
    picked = pick_dialogues(read_dialogues(examples_dir()), [lang], dialogues_per_lang)
    voiced = voice_dialogues(picked, voices)
    modes = ["streaming", "blocking", *([HOGGED] if hogged else [])]
    rows: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with load_agent("teacher") as agent:
        agent.respond([], load_audio(voices / voiced[0].turns[0].split_audio_file), lang)  # load every model once
        for dialogue in voiced:
            for mode in modes:
                agent.by_clause = mode != "blocking"
                conversation = Conversation(agent, lang)
                with hog() if mode == HOGGED else contextlib.nullcontext():
                    replies = [conversation.respond(load_audio(voices / turn.split_audio_file))
                               for turn in dialogue.turns]
                for reply in replies:
                    if mode != "blocking":
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
    if HOGGED in rows:
        out["stages_mean_s_hogged"] = {s: round(statistics.mean(r.get(s, 0.0) for r in rows[HOGGED]), 3)
                                       for s in STAGES}
        out["first_audio_ratio_hogged_over_idle"] = round(
            out[HOGGED]["first_audio"]["p50"] / out["streaming"]["first_audio"]["p50"], 2)
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
        for mode in [m for m in ("streaming", "blocking", HOGGED) if m in r]:
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
    hogged = {lang: r for lang, r in results.items() if HOGGED in r}
    if hogged:
        lines += ["", "With another process keeping one of the cores busy (`--hog`): first audio p50 with the core "
                  "taken ÷ idle, and the mean seconds per stage:", "",
                  "| lang | first audio ratio | " + " | ".join(STAGES) + " |", "|---" * (len(STAGES) + 2) + "|"]
        lines += [f"| {lang} | {r['first_audio_ratio_hogged_over_idle']}× | "
                  + " | ".join(f"{r['stages_mean_s_hogged'][s]:.2f}" for s in STAGES) + " |"
                  for lang, r in hogged.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=0, help="example dialogues per language (0 = all 12)")
    parser.add_argument("--lang", default="en,zh")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--hog", action="store_true", help="also stream every dialogue with one core taken")
    args = parser.parse_args()
    configure_threads()
    ensure_recogniser(silent)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lang in [x.strip() for x in args.lang.split(",") if x.strip()]:
            results[lang] = summarise(play(lang, args.dialogues, Path(tmp), args.hog))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(results, indent=1))
    (args.out / "latency.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
