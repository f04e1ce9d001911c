"""IEAT build throughput with 1 vs 2 workers, and the teacher agent's latency per stage of a turn.

Measured side by side in one run on this machine:

- samples per minute of ``recipes/tiny.yaml`` (first N items, fresh build folders) with one worker
  (in-process) and two spawned workers that split the cores; the ratio is the parallel speed-up;
- the teacher agent (VAD → ASR → emotion → injected think + reply → TTS) over voiced example
  turns, per stage (mean and p90 seconds) and per language.

Needs a trained recogniser (``emoslm perception train``). Writes ``benchmarks/results/ieat.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.agents import Conversation, load_agent  # noqa: E402
from emoslm.audio import load_audio  # noqa: E402
from emoslm.demo import pick_dialogues  # noqa: E402
from emoslm.dialogues import examples_dir, read_dialogues  # noqa: E402
from emoslm.ieat.recipe import load_recipe  # noqa: E402
from emoslm.ieat.runner import build  # noqa: E402
from emoslm.perception.recognizer import recogniser_dir  # noqa: E402
from emoslm.voicing import voice_dialogues  # noqa: E402

RECIPE = ROOT.parent / "recipes" / "tiny.yaml"


def throughput(items: int, workers: int, kokoro_threads: int | None = None) -> dict[str, float]:
    """One fresh build; ``kokoro_threads=1`` is the build as it was before Kokoro got the worker's threads."""
    if kokoro_threads:
        os.environ["EMOSLM_TTS_THREADS"] = str(kokoro_threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            report = build(load_recipe(RECIPE), Path(tmp) / "build", limit=items, workers=workers)
            seconds = time.perf_counter() - start
    finally:
        os.environ.pop("EMOSLM_TTS_THREADS", None)
    samples = report.summary["stage1_2"] + report.summary["multiturn"]
    return {"workers": workers, "kokoro_threads": kokoro_threads or "all", "items": items,
            "seconds": round(seconds, 1), "samples": samples, "items_per_min": round(60 * items / seconds, 2)}


def teacher_latency(dialogues_per_lang: int) -> dict[str, dict[str, dict[str, float]]]:
    with tempfile.TemporaryDirectory() as tmp:
        picked = pick_dialogues(read_dialogues(examples_dir()), ["en", "zh"], dialogues_per_lang)
        voiced = voice_dialogues(picked, Path(tmp))
        agent = load_agent("teacher")
        timings: dict[str, dict[str, list[float]]] = {}
        for dialogue in voiced:
            conversation = Conversation(agent, dialogue.lang)
            for turn in dialogue.turns:
                reply = conversation.respond(load_audio(Path(tmp) / turn.split_audio_file))
                stages = timings.setdefault(dialogue.lang, {})
                for stage, seconds in reply.timings.items():
                    stages.setdefault(stage, []).append(seconds)
        agent.close()
    return {lang: {stage: {"mean": round(statistics.mean(v), 3), "p90": round(_p90(v), 3), "n": len(v)}
                   for stage, v in stages.items()} for lang, stages in timings.items()}


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--dialogues", type=int, default=2, help="example dialogues per language")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    if not (recogniser_dir() / "meta.json").exists():
        sys.exit(f"no trained recogniser in {recogniser_dir()}; run `emoslm perception train` first")
    before, one, two = throughput(args.items, 1, kokoro_threads=1), throughput(args.items, 1), throughput(args.items, 2)
    latency = teacher_latency(args.dialogues)
    results = {"build": [before, one, two], "speedup_2_over_1": round(two["items_per_min"] / one["items_per_min"], 2),
               "speedup_kokoro_threads": round(one["items_per_min"] / before["items_per_min"], 2),
               "teacher_turn_seconds": latency}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ieat.json").write_text(json.dumps(results, indent=2))
    lines = ["# IEAT build and teacher agent", "",
             f"`recipes/tiny.yaml`, first {args.items} items, fresh folder each run (model loading included).", "",
             "| workers | Kokoro threads | seconds | items/min | samples (1-2 + multi-turn) |", "|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['kokoro_threads']} | {r['seconds']} | {r['items_per_min']} | {r['samples']} |"
              for r in (before, one, two)]
    lines += ["", f"Kokoro on all the worker's threads / on one: **{results['speedup_kokoro_threads']}×**; "
              f"2 workers / 1 worker: **{results['speedup_2_over_1']}×**", "",
              "Teacher agent, seconds per turn (example dialogues voiced by the default voices):", "",
              "| lang | stage | mean | p90 | turns |", "|---|---|---|---|---|"]
    for lang, stages in latency.items():
        lines += [f"| {lang} | {stage} | {v['mean']} | {v['p90']} | {v['n']} |" for stage, v in stages.items()]
    (args.out / "ieat.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
