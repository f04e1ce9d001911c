"""`make learn` (`emoslm train learn RECIPE`): the learning run of issue 33 end to end, each step resumable.

1. **build** — ``train.learn_data``: chat and empathy-corpus turns voiced with acted emotions, the stage 1-1
   targets (the LLM's own replies to the transcripts) and the stage 1-2 targets (the corpus's think and reply);
2. **stage 1-1** and **stage 1-2** — ``train.loop.train`` with the recipe's stages (a killed stage resumes from
   its checkpoint);
3. **replies** — on every held-out stage 1-2 clip (unheard voices, unseen texts), for the untrained adapter and
   both stages: the think's emotion against the acted one, the reply's relevance (MiniLM cosine to the teacher's
   reply for that clip) beside its relevance to *another* clip's teacher reply (what a reply that ignores the
   words scores: the corpus's replies all sound alike), distinct-2, replies that repeat the think, and replies
   that speak of "the user";
4. **hearing** — ``eval.hearing.evaluate`` on the four sets the words cannot answer (short thinks: the tag is in
   the opening), beside the recogniser and a head on the frozen encoder;
5. **probes** — ``train.probes``: where along the listening path the acted emotion is still linearly readable
   (fitted on 480 of the training voices' clips, scored on every held-out voice's).

Each step's minutes go to ``RUN/timings.jsonl`` (a step already done is skipped and keeps its earlier time), so
the whole run's length is the sum of one pass over the steps even when it was killed and resumed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emoslm.errors import EmoslmError
from emoslm.progress import Start, silent

STEPS = ("build", "1-1", "1-2", "replies", "hearing", "probes")


def timed(run: Path, name: str, done: bool, work: Callable[[], Any]) -> None:
    """Run ``work`` unless ``done``; append its seconds to ``run/timings.jsonl``."""
    if done:
        return
    began = time.perf_counter()
    work()
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "timings.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": name, "seconds": round(time.perf_counter() - began, 1),
                            "at": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def timings(run: Path) -> dict[str, float]:
    """The latest recorded seconds of each step."""
    path = run / "timings.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return {r["step"]: r["seconds"] for r in rows}


def third_person(reply: str) -> bool:
    """The reply talks about "the user" instead of to them."""
    return bool(re.search(r"\bthe user'?s?\b", reply, re.IGNORECASE))


def mismatched(examples: list[Any]) -> list[str]:
    """For each clip, the teacher's reply to the next clip with other words: the relevance a reply that does not
    depend on what was said gets (the floor to read relevance against)."""
    texts = [e.target for e in examples]
    out = []
    for i, example in enumerate(examples):
        other = next((examples[(i + k) % len(examples)] for k in range(1, len(examples))
                      if texts[(i + k) % len(examples)] != texts[i]), example)
        out.append(other.teacher_reply)
    return out


def per_voice_distinct(examples: list[Any], replies: list[str]) -> float | None:
    """Distinct-2 within each voice's replies, averaged over the voices. Each held-out text is said by every
    held-out voice, so over the whole set even the teacher's replies repeat (0.231 on make learn's); within one
    voice every reply answers other words, and a model that answers everything alike is still caught."""
    import statistics
    from collections import defaultdict

    from emoslm.train.listening import distinct_2

    groups: dict[str, list[str]] = defaultdict(list)
    for example, reply in zip(examples, replies, strict=True):
        groups[example.voice].append(reply)
    return round(statistics.mean(distinct_2(g) for g in groups.values()), 4) if groups else None


def reply_scores(model: Any, tokenizer: Any, examples: list[Any], acted: dict[str, str], words: dict[str, str],
                 embedder: Any, think_budget: int = 48, max_new_tokens: int = 64) -> dict[str, Any]:
    """One model on the held-out clips (what ``generate`` writes): ``listen``'s measures and every row (think,
    reply), the mismatched floor, the third-person share, distinct-2 per voice (the model's and the teacher's), and
    eight samples with the words and the teacher's reply."""
    from emoslm.train.listening import listen, relevance

    result = listen(model, tokenizer, examples, acted, think_budget, max_new_tokens, embedder=embedder)
    replies = [r["reply"] for r in result["rows"]]
    result["relevance_other_clip"] = relevance(replies, mismatched(examples), embedder)
    result["third_person"] = round(sum(map(third_person, replies)) / len(replies), 4) if replies else None
    result["distinct_2_per_voice"] = per_voice_distinct(examples, replies)
    result["teacher_distinct_2_per_voice"] = per_voice_distinct(examples, [e.teacher_reply for e in examples])
    every = max(1, len(examples) // 8)
    result["samples"] = [{"voice": e.voice, "acted": acted.get(e.key, ""), "words": words.get(e.key, ""),
                          "reply": reply, "teacher": e.teacher_reply}
                         for e, reply in list(zip(examples, replies, strict=True))[::every][:8]]
    return result


def replies(runs: Path, out: Path, progress: Start = silent) -> dict[str, Any]:
    """``reply_scores`` for the untrained adapter, stage 1-1 and stage 1-2 → ``out/replies.json``."""
    from transformers import AutoTokenizer

    from emoslm.perception.text_emotion import load_sentence_model
    from emoslm.slm.model import UnifiedSLM
    from emoslm.train.data import load_examples, split
    from emoslm.train.listening import acted_by_key
    from emoslm.train.runs import finished_runs, untrained_model

    info = finished_runs([runs / "1-2"])[0]["config"]
    build = Path(info["data"])
    _, held = split(load_examples(build, "1-2"), info["held_out"], info["seed"], info["held_out_voices"])
    words = {r["id"]: r["transcript"] for r in map(json.loads, (build / "stage1_1.jsonl").read_text().splitlines())}
    acted, embedder = acted_by_key(build), load_sentence_model()
    results: dict[str, Any] = {"clips": len(held), "voices": sorted({e.voice for e in held}),
                               "texts": len({words.get(e.key, e.key) for e in held}), "models": {}}

    def final(stage: str) -> tuple[Any, Any]:
        folder = runs / stage / "final"
        return UnifiedSLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)

    models = {"untrained adapter": lambda: untrained_model(info), "stage 1-1": lambda: final("1-1"),
              "stage 1-2": lambda: final("1-2")}
    step = progress("replies on held-out clips", len(models))
    for name, load in models.items():
        model, tokenizer = load()
        results["models"][name] = reply_scores(model.eval(), tokenizer, held, acted, words, embedder)
        step()
    out.mkdir(parents=True, exist_ok=True)
    (out / "replies.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return results


def learn(recipe: Path, out: Path, progress: Start = silent, chat: int = 480, voices: int = 3, corpus_limit: int = 0,
          per_set: int = 0, encoder_head: bool = True) -> dict[str, Any]:
    """Every step of the run (skipping the ones done), then ``out/report.md``; returns the step timings.
    ``corpus_limit`` and ``per_set`` (the first N corpus turns, N clips of each hearing set) and ``encoder_head``
    off make a quick run (tests); the defaults are the full one."""
    from emoslm.eval.hearing import evaluate
    from emoslm.train.learn_data import build as build_data
    from emoslm.train.loop import train
    from emoslm.train.probes import probe_runs
    from emoslm.train.recipe import train_config

    first = train_config(recipe, "1-1")
    build, runs = Path(first.data), Path(first.out).parent
    if first.stage != "1-1" or runs == Path(first.out):
        raise EmoslmError(f"{recipe}: train.out must be a folder for the stages (RUN/1-1, RUN/1-2)")
    # stage 1-1 distils the recipe's own LLM: its replies to the transcripts are the targets
    timed(runs, "build", (build / "recipe.json").exists(),
          lambda: build_data(build, chat, voices, first.seed, first.llm, progress=progress, corpus_limit=corpus_limit))
    timed(runs, "1-1", (runs / "1-1" / "final" / "config.json").exists(), lambda: train(first, progress))
    second = train_config(recipe, "1-2")  # its init is 1-1's final/, which exists now
    timed(runs, "1-2", (runs / "1-2" / "final" / "config.json").exists(), lambda: train(second, progress))
    timed(runs, "replies", (out / "replies.json").exists(), lambda: replies(runs, out, progress))
    timed(runs, "hearing", (out / "hearing" / "hearing-think.json").exists(),
          lambda: evaluate(runs / "1-2" / "final", out / "hearing", think_budget=12, max_new_tokens=12,
                           progress=progress, per_set=per_set, encoder_head=encoder_head))
    timed(runs, "probes", (out / "probes-build.json").exists(),
          lambda: probe_runs([runs / "1-1", runs / "1-2"], out=out, progress=progress, fit_limit=480))
    from emoslm.eval.learning_report import write_report

    write_report(runs, out)
    return timings(runs)


def sweep(recipe: Path, out: Path, rates: list[float], steps: int = 30, clips: int = 32,
          progress: Start = silent) -> dict[str, Any]:
    """Stage 1-2 from stage 1-1's final/ for ``steps`` steps at each LoRA learning rate (everything else as the
    recipe has it), each scored on the first ``clips`` held-out clips before and after (the collapse guard's
    measures) → ``out/sweep.md``/``.json``: the evidence for the recipe's ``lora_lr``. Runs resume or are reused."""
    from emoslm.train.loop import train
    from emoslm.train.recipe import train_config

    base = train_config(recipe, "1-2")
    if not base.init:
        raise EmoslmError(f"{recipe}: stage 1-1 has no final/ yet; run `emoslm train learn {recipe}` (or its 1-1)")
    rows = []
    for rate in rates:
        run = Path(base.out).parent / "sweep" / f"lora-{rate:g}"
        if not (run / "summary.json").exists():
            train(train_config(recipe, "1-2", out=run, max_steps=steps, lora_lr=rate, listen_clips=clips,
                               stop_on_collapse=False), progress)
        curve = [json.loads(line) for line in (run / "listening.jsonl").read_text().splitlines() if line.strip()]
        summary = json.loads((run / "summary.json").read_text())
        rows.append({"lora_lr": rate, "steps": summary["steps"], "held_out_loss": summary["held_out_loss"],
                     **{k: curve[-1].get(k) for k in ("reply_relevance", "distinct_2", "reply_repeats_think",
                                                      "think_vs_acted", "collapsed")},
                     "before": {k: curve[0].get(k) for k in ("reply_relevance", "distinct_2")}})
    result = {"adapter_lr": base.lr, "steps": steps, "clips": clips, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    lines = [f"# LoRA learning rate for stage 1-2 ({steps} steps each from stage 1-1, adapter at {base.lr:g}, "
             f"first {clips} held-out clips)", "",
             "| LoRA lr | held-out loss | relevance | distinct-2 | repeats think | think = acted | collapsed |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['lora_lr']:g} | {r['held_out_loss']:.3f} | {r['reply_relevance']} | {r['distinct_2']} | "
              f"{r['reply_repeats_think']} | {r['think_vs_acted']} | {'; '.join(r['collapsed'] or []) or 'no'} |"
              for r in rows]
    if rows:
        lines += ["", f"Before stage 1-2 (stage 1-1's model): relevance {rows[0]['before']['reply_relevance']}, "
                      f"distinct-2 {rows[0]['before']['distinct_2']}."]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    return result
