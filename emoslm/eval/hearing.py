"""Does the unified model hear the emotion? Its think's tag on voices it never heard, and where the words
cannot tell (issue 33's evaluation).

Four sets, all spoken by its held-out voices (never in any training split):

- **unheard voices** (``test``): held-out scripts, each acted with the emotion its words carry (plain scripts
  neutrally and in one other emotion) — words and voice mostly agree;
- **same sentence** (``same``): every held-out plain script spoken in all seven emotions by every held-out
  voice — the words are identical across a sentence's seven clips, so a reader of the words scores chance and
  only a listener can do better;
- **conflict**: the words say one emotion, the voice acts another; scored against the voice;
- **chat turns** (``chitchat``): real chat turns from the packaged data set, each acted in an emotion drawn in turn
  (words unrelated to it) — the shape of an IEAT build's held-out clips, where the recogniser scored 0.469.

On each: the think's tag (``tag_in_think`` of what ``generate_batch`` writes: the model's own prompt, greedy)
against the acted emotion; beside it the recogniser that labels IEAT data (fused with the script's words, and
its acoustic part alone), an emotion head trained on the frozen encoder's layers alone (the corpus's training
voices; what the encoder holds before any listening path), always-the-commonest-tag and chance; the think's
confusion matrix. A model that injects its head's tag (``config.inject_emotion``) opens every think with it, so
its emotion-in-think is its head's accuracy by construction — the report says which kind of model it scored.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from emoslm.audio import load_audio
from emoslm.emotions import TAGS
from emoslm.errors import EmoslmError
from emoslm.progress import Start, silent
from emoslm.train.hearing import HearClip, corpus_sets

SETS = {"test": "unheard voices", "same": "same sentence, every emotion", "conflict": "conflict (scored by the voice)",
        "chitchat": "chat turns, random acted emotion"}


def think_tags(checkpoint: Path, sets: dict[str, list[HearClip]], think_budget: int, max_new_tokens: int,
               progress: Start = silent) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Each clip's generated think and reply and the think's tag; and what kind of model wrote them."""
    import torch
    from transformers import AutoTokenizer

    from emoslm.slm.generate import generate_batch, heard_prosody
    from emoslm.slm.model import UnifiedSLM
    from emoslm.think import tag_in_think

    model = UnifiedSLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    front_end = model.processor.front_end
    reads_prosody = model.emotion_head is not None and bool(model.emotion_head.prosody_dim)
    rows: dict[str, list[dict[str, Any]]] = {}
    for name, clips in sets.items():
        step = progress(f"thinks: {SETS[name]}", len(clips))
        rows[name] = []
        for start in range(0, len(clips), 16):
            chunk = clips[start:start + 16]
            audio = [load_audio(c.audio) for c in chunk]
            with torch.inference_mode():
                outs = generate_batch(model, tokenizer, [front_end.tensor(a) for a in audio], None, think_budget,
                                      max_new_tokens, prosody=[heard_prosody(model, a) for a in audio])
            rows[name] += [{"id": c.id, "voice": c.voice, "acted": c.acted, "words": c.words, "text": c.text,
                            "think": o.think, "reply": o.reply, "think_tag": tag_in_think(o.think) or "none"}
                           for c, o in zip(chunk, outs, strict=True)]
            step(len(chunk))
    kind = {"checkpoint": str(checkpoint), "injects_emotion": model.injects_emotion,
            "head_reads_prosody": reads_prosody, "encoder_mix": model.layer_mix is not None,
            "head_reads_frames": model.emotion_head is not None and model.emotion_head.reads_frames}
    return rows, kind


def recogniser_tags(sets: dict[str, list[HearClip]], progress: Start = silent) -> dict[str, dict[str, list[str]]]:
    """The shipped recogniser's tag for each clip: fused with the script's words, and its acoustic part alone."""
    from emoslm.perception.recognizer import EmotionRecognizer

    recogniser = EmotionRecognizer()
    out: dict[str, dict[str, list[str]]] = {}
    for name, clips in sets.items():
        step = progress(f"recogniser: {SETS[name]}", len(clips))
        fused, acoustic = [], []
        for clip in clips:
            estimate = recogniser.estimate(load_audio(clip.audio), clip.text, "en")
            fused.append(estimate.tag)
            acoustic.append(max(estimate.acoustic.probs, key=estimate.acoustic.probs.get))
            step()
        out[name] = {"fused": fused, "acoustic": acoustic}
    return out


def encoder_head_tags(train: list[HearClip], sets: dict[str, list[HearClip]], encoder: str, seed: int = 0,
                      epochs: int = 20, progress: Start = silent) -> dict[str, list[str]]:
    """An emotion head (layer mix + attention pooling) on the frozen encoder alone, fitted on the corpus's
    training voices: what the encoder holds before any listening path is trained."""
    from emoslm.speech.mel_front_end import MelFrontEnd
    from emoslm.speech.whisper_ct2 import load_whisper_encoder
    from emoslm.train.frames import FrameCache
    from emoslm.train.hearing import fit_head, predict

    model = load_whisper_encoder(encoder).eval()
    cache = FrameCache(model, MelFrontEnd.for_mels(model.config.num_mel_bins), layers=True)
    every = train + [c for clips in sets.values() for c in clips]
    cache.fill([c.audio for c in every], progress("encoder layers", len(every)))
    head = fit_head([cache(c.audio) for c in train], [c.acted for c in train], True, seed, epochs)
    return {name: predict(head, [cache(c.audio) for c in clips]) for name, clips in sets.items()}


def accuracy(tags: list[str], gold: list[str]) -> float:
    return round(float(np.mean([t == g for t, g in zip(tags, gold, strict=True)])), 4) if gold else 0.0


def evaluate(checkpoint: Path, out: Path, lang: str = "en", think_budget: int = 32, max_new_tokens: int = 40,
             progress: Start = silent, per_set: int = 0, encoder_head: bool = True) -> dict[str, Any]:
    """Score ``checkpoint`` on the four sets; write ``hearing-think.json``/``.md``/``.png`` into ``out``.
    ``per_set``: that many clips of each set (a quick check; 0: all); ``encoder_head``: train the frozen-encoder
    reference head (minutes: every training clip's layers)."""
    if not (checkpoint / "config.json").exists():
        raise EmoslmError(f"{checkpoint}: not a UnifiedSLM checkpoint (no config.json); give a run's final/ folder")
    every = corpus_sets(lang, per_set)
    sets = {name: every[name] for name in SETS}
    rows, kind = think_tags(checkpoint, sets, think_budget, max_new_tokens, progress)
    recognised = recogniser_tags(sets, progress)
    encoder = json.loads((checkpoint / "config.json").read_text()).get("encoder_source") or "whisper-tiny.en"
    heads = encoder_head_tags(every["train"], sets, encoder, progress=progress) if encoder_head else None
    results: dict[str, Any] = {"model": kind, "lang": lang, "sets": {}}
    for name, clips in sets.items():
        gold = [c.acted for c in clips]
        think = [r["think_tag"] for r in rows[name]]
        results["sets"][name] = {
            "title": SETS[name], "clips": len(clips), "voices": sorted({c.voice for c in clips}),
            "think": accuracy(think, gold),
            "recogniser_fused": accuracy(recognised[name]["fused"], gold),
            "recogniser_acoustic": accuracy(recognised[name]["acoustic"], gold),
            "encoder_head": accuracy(heads[name], gold) if heads else None,
            "commonest": round(max(Counter(gold).values()) / len(gold), 4),
            "chance": round(1 / len(TAGS), 4),
            "think_follows_words": accuracy(think, [c.words for c in clips]),
            "confusion": {t: dict(Counter(r["think_tag"] for r in rows[name] if r["acted"] == t)) for t in TAGS},
            "samples": rows[name][:: max(1, len(clips) // 6)][:6],
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "hearing-think.json").write_text(json.dumps({**results, "rows": rows}, indent=1, ensure_ascii=False))
    (out / "hearing-think.md").write_text(markdown(results))
    plot(results, out / "hearing-think.png")
    return results


def markdown(results: dict[str, Any]) -> str:
    kind = results["model"]
    parts = (("the adapter's output", kind.get("head_reads_frames", True)),
             ("the clip's pitch and loudness functionals", kind["head_reads_prosody"]))
    reads = " + ".join(part for part, used in parts if used)
    how = (f"its think opens with the tag its own emotion head hears (reading {reads}), so emotion-in-think is "
           "the head's accuracy" if kind["injects_emotion"] else "the LLM writes the whole think")
    lines = [f"# Does the model hear the emotion? ({kind['checkpoint']})", "",
             f"Model: {how}. Every clip is spoken by a voice the model never heard (the corpus's held-out voices); "
             "gold = the acted emotion.", "",
             "| set | clips | think | recogniser (fused with words) | recogniser (acoustic) | head on frozen "
             "encoder | commonest | chance |", "|---|---|---|---|---|---|---|---|"]
    for s in results["sets"].values():
        head = "—" if s["encoder_head"] is None else f"{s['encoder_head']:.3f}"
        lines.append(f"| {s['title']} | {s['clips']} | **{s['think']:.3f}** | {s['recogniser_fused']:.3f} | "
                     f"{s['recogniser_acoustic']:.3f} | {head} | {s['commonest']:.3f} | {s['chance']:.3f} |")
    conflict = results["sets"].get("conflict")
    if conflict:
        lines += ["", f"On conflict clips the think follows the words {conflict['think_follows_words']:.3f} of the "
                      f"time and the voice {conflict['think']:.3f}."]
    for s in results["sets"].values():
        lines += ["", f"## {s['title']}: confusion (rows acted, columns the think's tag)", "",
                  "| acted | " + " | ".join([*TAGS, "none"]) + " |", "|---" * (len(TAGS) + 2) + "|"]
        lines += [f"| {t} | " + " | ".join(str(s["confusion"][t].get(c, 0)) for c in [*TAGS, "none"]) + " |"
                  for t in TAGS]
        lines += ["", "Samples:", ""]
        lines += [f"- [{r['acted']}, {r['voice']}] \"{r['text']}\" → think: \"{r['think'][:220]}\" reply: "
                  f"\"{r['reply'][:160]}\"" for r in s["samples"]]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["sets"])
    series = [("think", "think"), ("recogniser_fused", "recogniser (fused)"),
              ("recogniser_acoustic", "recogniser (acoustic)"), ("encoder_head", "head on frozen encoder"),
              ("commonest", "commonest tag")]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        ax.bar([n + i * width for n in range(len(names))], [results["sets"][s][key] or 0.0 for s in names], width,
               label=label)
    ax.axhline(1 / len(TAGS), linestyle=":", color="grey", label="chance")
    ax.set_xticks([n + 0.4 - width / 2 for n in range(len(names))], [results["sets"][s]["title"] for s in names],
                  fontsize=8)
    ax.set(ylabel="accuracy vs the acted emotion", ylim=(0, 1), title="Emotion in the think, unheard voices")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
