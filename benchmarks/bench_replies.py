"""What the replies say, per reply model and lever, on the example dialogues (issue 32).

Two ways to play the dialogues:

- ``--mode text`` (the levers): the user's words and gold emotion tags go straight into the reply step the
  agents use (``emoslm.think.answer_turn``), so each configuration's replies differ only by the model, the
  prompt and the decoding. First reply text is timed from the call (the LLM's share of a turn).
- ``--mode agent`` (the product): the teacher agent on the voiced dialogues through ASR and the recogniser,
  as ``emoslm eval humdial`` plays them; latency counts from the end of the user's speech.

Each run writes ``benchmarks/results/replies/<config>.json`` (every reply and think, the cheap checks per
reply, latency) and ``<config>.prompts.jsonl``: the judge prompts of the judged turns, built by emoslm's HumDial
rubric (``eval.judge.Judge.prompt``), to be scored by any judge (an OpenAI-compatible endpoint with
``emoslm eval humdial --judge``, or by hand). ``--scores FILE`` folds judge scores (JSONL: config,
dialogue_id, scores) into ``benchmarks/results/replies.md`` / ``replies.json`` with the checks and latency.

    python benchmarks/bench_replies.py --mode text --config qwen1.5b=llama-cpp:qwen2.5-coder-1.5b-instruct
    python benchmarks/bench_replies.py --mode agent --config default=auto
    python benchmarks/bench_replies.py --packets runs/judge      # blind packets for a judge
    python benchmarks/bench_replies.py --scores runs/judge/judged-en.jsonl runs/judge/judged-zh.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from emoslm.dialogues import Dialogue, examples_dir, read_dialogues
from emoslm.eval.checks import check_dialogue, minilm_similarity, summarise
from emoslm.eval.judge import DIMENSIONS, Judge
from emoslm.eval.run import judged_turn
from emoslm.think import answer_turn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "replies"


def play_text(spec: str, lang: str, dialogues: list[Dialogue]) -> list[dict[str, Any]]:
    """Every dialogue through ``answer_turn`` with the gold transcript and tags."""
    from emoslm.llm import LLMPool

    pool = LLMPool(spec)
    llm = pool.for_lang(lang)
    rows = []
    for dialogue in dialogues:
        history, path, turns = [], [], []
        for turn in dialogue.turns:
            path.append(turn.emotion)
            started, first, think, reply = time.perf_counter(), None, "", ""
            pieces = answer_turn(llm, history, turn.text, list(path), lang, think_budget=64, reply_budget=96)
            for piece in pieces:
                if piece.part == "reply" and piece.text.strip() and first is None:
                    first = time.perf_counter() - started
                think, reply = (think + piece.text, reply) if piece.part == "think" else (think, reply + piece.text)
            turns.append({"text": turn.text, "emotion": turn.emotion, "think": think, "reply": reply,
                          "first_reply_text_s": round(first or 0.0, 3),
                          "turn_s": round(time.perf_counter() - started, 3)})
            history += [{"role": "user", "content": turn.text}, {"role": "assistant", "content": reply}]
        rows.append({"dialogue_id": dialogue.dialogue_id, "task": dialogue.task, "lang": lang, "turns": turns})
        print(dialogue.dialogue_id, [t["first_reply_text_s"] for t in turns], flush=True)
    pool.close()
    return rows


def play_agent(spec: str, lang: str, dialogues: list[Dialogue], work: Path) -> list[dict[str, Any]]:
    """The teacher agent on the voiced dialogues, played as ``emoslm eval humdial`` plays them (resumable)."""
    from emoslm.agents import load_agent
    from emoslm.eval.humdial import Entry, ensure_audio, play

    entries = ensure_audio([Entry(d.task or "T3", d, work) for d in dialogues], work / "voices", voice=True)
    with load_agent("teacher", llm=spec) as agent:
        played = play(agent, entries, work)
    rows = []
    for entry in entries:
        pairs = zip(entry.dialogue.turns, played[entry.dialogue.dialogue_id], strict=True)
        turns = [{"text": gold.text, "emotion": t.detected_emotion, "think": t.think, "reply": t.response_text,
                  "first_reply_text_s": t.timings.get("first_text"), "first_audio_s": t.first_audio_s,
                  "turn_s": t.total_s} for gold, t in pairs]
        rows.append({"dialogue_id": entry.dialogue.dialogue_id, "task": entry.task, "lang": lang, "turns": turns})
    return rows


def checked(rows: list[dict[str, Any]], gold: dict[str, Dialogue]) -> list[dict[str, Any]]:
    """The cheap checks of every reply (T1: the path the reply step was given, i.e. what was perceived)."""
    similarity = minilm_similarity()
    for row in rows:
        replies = [t["reply"] for t in row["turns"]]
        perceived = [t["emotion"] for t in row["turns"]]
        verdicts = check_dialogue(replies, row["lang"], perceived, row["task"], similarity)
        for turn, verdict in zip(row["turns"], verdicts, strict=True):
            turn["problems"] = verdict.problems
        row["checks"] = [v.to_json() for v in verdicts]
        row["judged_turn"] = judged_turn_of(gold[row["dialogue_id"]], row["task"])
    return rows


def judged_turn_of(dialogue: Dialogue, task: str) -> int | None:
    from emoslm.eval.humdial import Entry

    return judged_turn(Entry(task, dialogue, Path(".")))


def judge_prompts(config: str, rows: list[dict[str, Any]], gold: dict[str, Dialogue]) -> list[dict[str, Any]]:
    """The judge's prompt for each dialogue's judged turn, with the dialogue's own replies in the history."""
    from dataclasses import replace

    judge = Judge("prompts")  # emoslm's rubric prompts; no judge model is loaded
    out = []
    for row in rows:
        index = row["judged_turn"]
        if index is None:
            continue
        dialogue = gold[row["dialogue_id"]]
        dialogue = replace(dialogue, turns=[replace(t, response_text=p["reply"])
                                            for t, p in zip(dialogue.turns, row["turns"], strict=True)])
        out.append({"config": config, "dialogue_id": row["dialogue_id"], "task": row["task"], "lang": row["lang"],
                    "dimensions": list(DIMENSIONS[row["task"]]), "prompt": judge.prompt(row["task"], dialogue, index)})
    return out


def summary_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per language: the checks over every reply and the judged replies, and first reply text p50/p90."""
    from emoslm.eval.checks import ReplyChecks

    out = {}
    for lang in sorted({r["lang"] for r in rows}):
        mine = [r for r in rows if r["lang"] == lang]
        every = [ReplyChecks(**{k: v for k, v in c.items() if k != "ok"}) for r in mine for c in r["checks"]]
        firsts = sorted(t["first_reply_text_s"] for r in mine for t in r["turns"] if t["first_reply_text_s"])
        out[lang] = {"checks": summarise(every), "first_reply_text_p50": _pct(firsts, 50),
                     "first_reply_text_p90": _pct(firsts, 90)}
    return out


def _pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))], 3)


def write_packets(folder: Path, configs: list[str] | None = None, seed: int = 0) -> None:
    """Every configuration's judge prompts per language, shuffled under anonymous ids, for a blind judge
    (``key.json`` maps the ids back; the judge sees neither the configuration nor the other prompts' source)."""
    import random

    prompts = [json.loads(line) for path in sorted(OUT.glob("*.prompts.jsonl"))
               if not configs or path.name.removesuffix(".prompts.jsonl") in configs
               for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(prompts)
    folder.mkdir(parents=True, exist_ok=True)
    key = {}
    for lang in sorted({p["lang"] for p in prompts}):
        mine = [p for p in prompts if p["lang"] == lang]
        lines = []
        for k, item in enumerate(mine, 1):
            pid = f"{lang}-{k:03d}"
            key[pid] = [item["config"], item["dialogue_id"]]
            lines.append(json.dumps({"id": pid, "dimensions": item["dimensions"], "prompt": item["prompt"]},
                                    ensure_ascii=False))
        (folder / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "key.json").write_text(json.dumps(key, indent=1))


def read_scores(paths: list[Path]) -> dict[tuple[str, str], dict[str, int]]:
    """Judge scores: JSONL lines with config and dialogue_id, or with a packet id (mapped by the key.json
    beside the file; agent-key.json for agent-*.jsonl)."""
    scores: dict[tuple[str, str], dict[str, int]] = {}
    for path in paths:
        key_file = path.parent / ("agent-key.json" if path.name.startswith("agent-") else "key.json")
        key_file = key_file if key_file.exists() else path.parent / "key.json"
        key = json.loads(key_file.read_text()) if key_file.exists() else {}
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                item = json.loads(line)
                config, dialogue_id = key[item["id"]] if "id" in item else (item["config"], item["dialogue_id"])
                scores[(config, dialogue_id)] = item["scores"]
    return scores


def fold_scores(score_files: list[Path]) -> None:
    """Merge judge scores into replies.json / replies.md next to each configuration's checks and latency."""
    scores = read_scores(score_files)
    table = []
    for path in sorted(OUT.glob("*.json")):
        run = json.loads(path.read_text(encoding="utf-8"))
        for lang, numbers in run["summary"].items():
            per_task = {}
            for task in ("T1", "T2", "T3"):
                means = [statistics.mean(scores[(run["config"], r["dialogue_id"])].values()) for r in run["rows"]
                         if r["lang"] == lang and r["task"] == task and (run["config"], r["dialogue_id"]) in scores]
                per_task[task] = round(statistics.mean(means), 2) if means else None
            judged = [v for v in per_task.values() if v is not None]
            table.append({"config": run["config"], "mode": run["mode"], "spec": run["spec"], "lang": lang,
                          **per_task, "judged_mean": round(statistics.mean(judged), 2) if judged else None,
                          **{k: v for k, v in numbers["checks"].items()},
                          "first_reply_text_p50": numbers["first_reply_text_p50"],
                          "first_reply_text_p90": numbers["first_reply_text_p90"]})
    (RESULTS / "replies.json").write_text(json.dumps(table, indent=1, ensure_ascii=False))
    write_markdown(table)


def write_markdown(table: list[dict[str, Any]]) -> None:
    lines = ["# Replies on the example dialogues (issue 32)", "",
             "Written by `benchmarks/bench_replies.py`. Judged: mean of the HumDial rubric dimensions of each "
             "dialogue's judged turn (T1/T2 on 1/3/5, T3 text empathy 1-5), per task, by the judge named in "
             "`replies/judge/README.md`. Checks count faults over every reply of the dialogues. First reply text: "
             "seconds, p50 / p90 (text mode: from the reply step's start; agent mode: from the end of speech).", "",
             "| config | mode | lang | T1 | T2 | T3 | judged mean | replies | cut off | third person | not 2nd person "
             "| near-copy | T1 path not exact | over budget | first reply text |", "|" + "---|" * 15]
    for r in table:
        lines.append(f"| {r['config']} | {r['mode']} | {r['lang']} | {r['T1']} | {r['T2']} | {r['T3']} | "
                     f"**{r['judged_mean']}** | {r['replies']} | {r['cut off']} | {r['third person']} | "
                     f"{r['not second person']} | {r['near-copy of an earlier reply']} | {r['trajectory not exact']} | "
                     f"{r['over length budget']} | {r['first_reply_text_p50']} / {r['first_reply_text_p90']} |")
    (RESULTS / "replies.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["text", "agent"], default="text")
    parser.add_argument("--config", action="append", default=[], help="NAME=LLM_SPEC (auto: the default)")
    parser.add_argument("--langs", default="en,zh")
    parser.add_argument("--scores", type=Path, nargs="+", help="judge scores (JSONL) to fold into replies.md")
    parser.add_argument("--packets", type=Path, help="write the judge prompts, shuffled and anonymised, here")
    args = parser.parse_args()
    if args.packets:
        write_packets(args.packets, [c.partition("=")[0] for c in args.config] or None)
        return
    if args.scores:
        fold_scores(args.scores)
        print((RESULTS / "replies.md").read_text())
        return
    OUT.mkdir(parents=True, exist_ok=True)
    for item in args.config:
        name, _, spec = item.partition("=")
        rows = []
        for lang in args.langs.split(","):
            dialogues = read_dialogues(examples_dir() / f"{lang}.jsonl")
            gold = {d.dialogue_id: d for d in dialogues}
            played = play_text(spec, lang, dialogues) if args.mode == "text" else \
                play_agent(spec, lang, dialogues, ROOT / "runs" / "bench-replies" / name)
            rows += checked(played, gold)
        gold = {d.dialogue_id: d for lang in args.langs.split(",")
                for d in read_dialogues(examples_dir() / f"{lang}.jsonl")}
        run = {"config": name, "spec": spec, "mode": args.mode, "summary": summary_of(rows), "rows": rows}
        (OUT / f"{name}.json").write_text(json.dumps(run, indent=1, ensure_ascii=False))
        prompts = judge_prompts(name, rows, gold)
        (OUT / f"{name}.prompts.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts))
        print(name, json.dumps(run["summary"], ensure_ascii=False))


if __name__ == "__main__":
    main()
