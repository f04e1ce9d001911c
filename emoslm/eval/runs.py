"""`emoslm train report RUN...`: did the unified model learn? Untrained adapter vs stage 1-1 vs stage 1-2 (an
evaluation of training runs, so it lives under ``eval``; training imports no evaluation).

On held-out clips (never trained on; the ids are in each run's ``run.json``):

- held-out loss on the stage 1-1 targets (the teacher's answer) and on the stage 1-2 targets (think + reply);
- content: cosine similarity (packaged MiniLM) between the reply the model writes from the audio alone
  and the teacher's reply written from the transcript;
- emotion in think: the share of clips whose generated think names the recogniser's tag (chance 1/7;
  the share of the most frequent tag is printed beside it, since a model can learn to always say it);
- for a stage 2 run, how the model speaks for itself (``emoslm.eval.speaking``): WER of its speech against
  its own text, the emotion its voice carries against the teacher's spoken reply, first-audio latency
  split by stage, and the real-time factor.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from emoslm.emotions import TAGS
from emoslm.errors import EmoslmError
from emoslm.train.data import Collator, Example, load_examples
from emoslm.train.frames import FrameCache
from emoslm.train.listening import listen
from emoslm.train.loop import held_out_loss
from emoslm.train.runs import finished_runs, untrained_model


def evaluate_model(model: Any, tokenizer: Any, held_11: list[Example], held_12: list[Example], embedder: Any,
                   think_budget: int = 48, max_new_tokens: int = 64, held_voices: tuple[str, ...] = ()
                   ) -> dict[str, Any]:
    collate = Collator(tokenizer, model.speech_length, FrameCache.for_model(model, model.processor.front_end),
                       processor=model.processor)
    result: dict[str, Any] = {"loss_1_1": held_out_loss(model, collate, held_11) if held_11 else None,
                              "loss_1_2": held_out_loss(model, collate, held_12) if held_12 else None}
    rows = listen(model, tokenizer, held_12, {}, think_budget, max_new_tokens)["rows"]  # what `generate` writes
    similarities, by_kind = [], {}
    for example, row in zip(held_12, rows, strict=True):
        a, b = embedder.encode([row["reply"] or " ", example.teacher_reply], normalize_embeddings=True)
        similarities.append(float((a * b).sum()))
        by_kind.setdefault("unheard voice" if example.voice in held_voices else "unseen text", []).append(
            row["think_tag"] == row["label"])
    hits = [row["think_tag"] == row["label"] for row in rows]
    samples = [{"id": r["id"], "emotion": r["label"], "think": r["think"], "reply": r["reply"]} for r in rows[:5]]
    result.update(content_similarity=round(statistics.mean(similarities), 4) if similarities else None,
                  emotion_in_think=round(sum(hits) / len(hits), 4) if hits else None, samples=samples,
                  emotion_in_think_by_kind={k: [round(sum(v) / len(v), 4), len(v)] for k, v in sorted(by_kind.items())})
    return result


def report(runs: list[Path], out: Path | None = None, clips: int | None = 160) -> dict[str, Any]:
    """Compare the untrained model, and the final model of each run, on the first ``clips`` held-out clips
    (None: all) — the clips stage 1-2's learning curve scores (``listen_clips`` of them), so the report's
    last row and the curve's end agree. Losses and generation both: the held-out loss on all 438 stage 1-2
    clips of the learn-en build took ~6 min per model here, so all clips × three models is long."""
    from transformers import AutoTokenizer

    from emoslm.perception.text_emotion import load_sentence_model
    from emoslm.slm.model import UnifiedSLM

    infos = finished_runs(runs)
    held_keys = set().union(*(set(i["held_out_keys"]) for i in infos))
    if any(set(i["train_keys"]) & held_keys for i in infos):
        raise EmoslmError("a held-out clip of one run was trained on by another; use the same seed and data")
    data = Path(infos[0]["config"]["data"])
    held_11 = [e for e in load_examples(data, "1-1") if e.key in held_keys]
    held_12 = [e for e in load_examples(data, "1-2") if e.key in held_keys]
    if clips is not None and clips < 1:
        raise EmoslmError(f"--clips must be at least 1 (got {clips})")
    held_11, held_12 = held_11[:clips], held_12[:clips]
    embedder = load_sentence_model()
    config = infos[0]["config"]
    untrained, tokenizer = untrained_model(config)
    voices = tuple(config.get("held_out_voices") or ())
    rows = {"untrained adapter": evaluate_model(untrained, tokenizer, held_11, held_12, embedder, held_voices=voices)}
    for run, info in zip(runs, infos, strict=True):
        model = UnifiedSLM.from_pretrained(run / "final")
        rows[f"stage {info['config']['stage']} ({run.name})"] = evaluate_model(
            model, AutoTokenizer.from_pretrained(run / "final"), held_11, held_12, embedder, held_voices=voices)
    speech = {}
    for run, info in zip(runs, infos, strict=True):
        if info["config"]["stage"] == "2":
            from emoslm.eval.speaking import plot_losses, speech_rows, summarise

            spoken = [e for e in load_examples(data, "2") if e.key in held_keys]
            rows_2 = speech_rows(run / "final", spoken)
            speech[f"stage 2 ({run.name})"] = {**summarise(rows_2), "samples": rows_2[:5]}
            plot_losses(run, out or runs[-1])
    tags = Counter(e.emotion for e in held_12)
    summary = {"held_out_clips": len(held_keys), "generated_clips": len(held_12),
               "chance_emotion": round(1 / len(TAGS), 4),
               "majority_emotion": round(max(tags.values()) / len(held_12), 4) if held_12 else None, "rows": rows,
               "speech": speech}
    target = out or runs[-1]
    target.mkdir(parents=True, exist_ok=True)
    from emoslm.train.listening import plot_curve

    summary["plots"] = [str(p) for p in plot_curve(runs[-1], target)]
    curve = runs[-1] / "listening.jsonl"
    if curve.exists():
        summary["listening"] = [json.loads(line) for line in curve.read_text().splitlines() if line.strip()]
    (target / "report.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    (target / "report.md").write_text(markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}"

    lines = ["# Unified model: what training changed", "",
             f"{summary['held_out_clips']} held-out clips; losses, think and reply on the first "
             f"{summary.get('generated_clips', summary['held_out_clips'])}. Emotion in think: chance "
             f"{summary['chance_emotion']:.3f}, "
             f"always naming the most frequent tag {f(summary['majority_emotion'])}.", "",
             "| model | held-out loss 1-1 | held-out loss 1-2 | content similarity | emotion in think |",
             "|---|---|---|---|---|"]
    for name, r in summary["rows"].items():
        lines.append(f"| {name} | {f(r['loss_1_1'])} | {f(r['loss_1_2'])} | {f(r['content_similarity'])} | "
                     f"{f(r['emotion_in_think'])} |")
    lines += ["", "Emotion in think by what is new to the model (accuracy, clips):", ""]
    for name, r in summary["rows"].items():
        kinds = ", ".join(f"{k} {v[0]:.3f} ({v[1]})" for k, v in r.get("emotion_in_think_by_kind", {}).items())
        lines.append(f"- {name}: {kinds or '–'}")
    if summary.get("listening"):
        lines += ["", "Learning curve of hearing (stage 1-2, held-out clips; `learning-curve.png`, `confusion.png`):",
                  "", "| epoch | think = label | think = acted | recogniser = acted | reply repeats think |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c['epoch']} | {f(c['think_vs_label'])} | {f(c['think_vs_acted'])} | "
                  f"{f(c['recogniser_vs_acted'])} | {f(c['reply_repeats_think'])} |" for c in summary["listening"]]
    from emoslm.eval.speaking import table as speech_table

    for name, sp in summary.get("speech", {}).items():
        lines += ["", f"Speaking for itself — {name}, {sp['clips']} held-out clips through `SLMAgent` (own voice):", "",
                  *speech_table(sp)]
        lines += [f"- said: {s['text'][:100]!r} → heard: {s['heard'][:100]!r}" for s in sp["samples"][:3]]
    lines += ["", "Examples (last model):", ""]
    last = list(summary["rows"].values())[-1]
    lines += [f"- [{s['emotion']}] think: {s['think'][:160]} | reply: {s['reply'][:120]}" for s in last["samples"]]
    return "\n".join(lines) + "\n"
