"""The learning run's data, built in minutes: speech turns voiced with acted emotions, and the targets of the
paper's stage 1 steps (issue 33).

The IEAT builder (``emoslm data build``) asks a teacher agent to think and reply for each item, one at a time:
hours for 1,600 items on two cores. The stage 1 steps that BLSP-Emo and GOAT-SLM show work need less:

- **stage 1-1, self-distillation** (LLM frozen): the target of each clip is what the frozen LLM itself replies
  to the clip's *transcript* under the unified model's own prompt, so the adapter learns to make speech the LLM
  reads like the words; a seeded quarter of the clips have the words themselves as the target (what was heard,
  said back). The turns are the ``chitchat-dataset`` package's conversation openers (the hearing evaluation's
  chat turns are its *last* conversations; none is used here) and the empathy corpus's user turns. The LLM's
  replies are written greedily in batches by the HF copy of the LLM the unified model holds (~2 turns a second).
- **stage 1-2, emotion-aware replies + IEAT**: targets written from the transcript *and the emotion*: the
  committed empathy corpus (``corpora/empathy``: each turn's emotion, its concrete cause and a second-person
  reply, written for emoslm and kept away from the evaluation dialogues) — the think opens with the acted emotion
  and the voice evidence (``think_opening``, as the IEAT teacher's does with the recogniser's tag) and gives the
  corpus's cause; the reply is the corpus's; earlier turns are the text history. The embedded LLM cannot write
  such targets itself (SmolLM2-135M's emotion-aware replies, tried here, were loops of "I'm here to help you"
  and dates), so the corpus is the teacher on this machine.

Every clip is acted with its emotion (chat turns: the seven in rotation, so each voice acts each emotion equally
often; corpus turns: their own) by the perception corpus's training voices, and a seeded tenth of the texts by
its held-out voices only: those texts and voices are never trained on (the recipe holds the voices out).
Writes an IEAT-build-shaped folder (``recipe.json``, ``stage1_1.jsonl``, ``stage1_2.jsonl``,
``multiturn.jsonl``, ``audio/``) that ``emoslm train`` reads. Resumable: rendered clips and every written batch
of replies are kept.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import torch

from emoslm.atomic import atomic_file
from emoslm.emotions import TAGS
from emoslm.errors import EmoslmError
from emoslm.progress import Start, silent
from emoslm.train.data import held_key as held

WORDS_SHARE = 0.25  # stage 1-1 clips whose target is their own words (the rest: the LLM's own reply)


def says_words(key: str) -> bool:
    """The seeded share of stage 1-1 clips whose target is the transcript."""
    return zlib.crc32(f"words:{key}".encode()) % 10_000 < WORDS_SHARE * 10_000


def chat_turns(count: int, lang: str = "en") -> list[tuple[str, str]]:
    """(key, text) of the first ``count`` chitchat conversation openers (6-30 words); the hearing evaluation's
    turns (``train.hearing.chitchat_plan``: the last ones) are never among them."""
    from emoslm.ieat.sources import SourceSpec, read_chitchat

    if lang != "en":
        raise EmoslmError("the learning run's chat turns are English (the chitchat data set); use --lang en")
    items = list(read_chitchat(SourceSpec(type="chitchat", lang="en", min_words=6, max_words=30), None, None))
    if count > len(items) - 200:
        raise EmoslmError(f"--turns {count}: the chat data has {len(items) - 200} turns outside the evaluation's")
    return [(f"chat-{item.id}", item.text) for item in items[:count]]


def corpus_turns(lang: str = "en") -> list[dict[str, Any]]:
    """Every user turn of the empathy corpus with its emotion, the think (acted emotion + the corpus's cause), the
    reply and the text history before it."""
    from emoslm.ieat.reply_corpus import CORPUS_DIR, read_corpus
    from emoslm.think import think_opening

    turns = []
    for dialogue in read_corpus([CORPUS_DIR / f"{lang}.jsonl"]):
        history: list[dict[str, str]] = []
        for index, turn in enumerate(dialogue.turns):
            path = dialogue.path(index) if turn.trajectory else None
            turns.append({"key": f"{dialogue.id}-{index + 1}", "text": turn.user, "emotion": turn.emotion,
                          "think": f"{think_opening(turn.emotion, lang, None, path)} {turn.cause}",
                          "reply": dialogue.full_reply(index), "history": list(history[-4:])})
            history += [{"role": "user", "content": turn.user}, {"role": "assistant",
                                                                 "content": dialogue.full_reply(index)}]
    return turns


def plan_clips(texts: list[tuple[str, str, str]], voices_per_text: int = 1, seed: int = 0) -> list[Any]:
    """Corpus clips for (key, text, emotion) — emotion "" rotates the seven: training texts by
    ``voices_per_text`` training voices, held-out texts by every held-out voice; the voices rotate so each acts
    each emotion about equally often. Clip ids carry the voice, so one text may have several clips."""
    from emoslm.perception.corpus import VOICES, make_clip

    train = [v for v in VOICES if v.lang == "en" and v.split == "train"]
    test = [v for v in VOICES if v.lang == "en" and v.split == "test"]
    clips, n, h = [], 0, 0
    for key, text, emotion in texts:
        if held(key, seed):  # every held-out voice, each acting another emotion
            chosen = [(voice, TAGS[(h + k) % len(TAGS)]) for k, voice in enumerate(test)]
            h += 1
        else:
            chosen = [(train[m % len(train)], TAGS[(m // len(train) + m) % len(TAGS)])
                      for m in range(n, n + voices_per_text)]
            n += voices_per_text
        clips += [make_clip(voice, "learn", key, text, emotion or rotated, "", 0) for voice, rotated in chosen]
    return clips


def continue_batch(llm: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
                   batch_size: int = 32) -> list[str]:
    """Greedy continuations of token-id prompts, a batch at a time (left-padded; sorted by length so batches
    waste little), in the prompts' order."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ends = [i for i in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")} if isinstance(i, int)]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in chunk])
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in chunk])
        with torch.inference_mode():
            written = llm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                   do_sample=False, repetition_penalty=1.2, pad_token_id=pad, eos_token_id=ends)
        for row, i in enumerate(chunk):
            out[i] = tokenizer.decode(written[row, width:], skip_special_tokens=True)
    return [out[i] for i in range(len(prompts))]


def whole_sentences(text: str) -> str:
    """The reply cut after its last full sentence (a budget-cut tail is dropped), one paragraph."""
    text = " ".join(text.replace("<think>", " ").replace("</think>", " ").split())
    last = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    if text.endswith((".", "!", "?")) or last < 0:
        return text
    return text[:last + 1]


def own_replies(texts: dict[str, str], out: Path, llm_name: str, batch_size: int, progress: Start
                ) -> dict[str, str]:
    """What the frozen LLM replies to each transcript under the unified model's prompt (no think): the stage 1-1
    targets; kept in ``own.jsonl`` a batch at a time, so a rerun resumes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emoslm.llm.hf import hf_checkpoint
    from emoslm.slm.processor import SLMProcessor

    path = out / "own.jsonl"
    done = {r["key"]: r["reply"] for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}
    todo = [key for key in texts if key not in done]
    if not todo:
        return done
    checkpoint = hf_checkpoint(llm_name)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    llm = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    rules = SLMProcessor()  # what a unified model built from this LLM carries
    advance = progress("the LLM's replies to the transcripts", len(todo))
    for start in range(0, len(todo), 4 * batch_size):
        chunk = todo[start:start + 4 * batch_size]
        written = continue_batch(llm, tokenizer, [rules.layout(tokenizer, 0, think=False, user_text=texts[k]).input_ids
                                                  for k in chunk], 56, batch_size)
        rows = [{"key": k, "reply": whole_sentences(w)} for k, w in zip(chunk, written, strict=True)]
        with open(path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        done.update({r["key"]: r["reply"] for r in rows})
        advance(len(chunk))
    return done


def build(out: Path, chat: int = 480, voices_per_turn: int = 3, seed: int = 0, llm: str = "smollm2-135m-instruct",
          batch_size: int = 32, progress: Start = silent, corpus_limit: int = 0) -> dict[str, Any]:
    """Write the folder (resuming what a killed build left); returns counts. ``corpus_limit``: the first N corpus
    turns only (a quick build; 0: all)."""
    from emoslm.perception.corpus import synthesize

    corpus = corpus_turns()[: corpus_limit or None]
    chats = [(key, text, "") for key, text in chat_turns(chat)]
    clips = plan_clips(chats, 1, seed) + plan_clips([(t["key"], t["text"], t["emotion"]) for t in corpus],
                                                    voices_per_turn, seed)
    out.mkdir(parents=True, exist_ok=True)
    advance = progress("voicing the turns", len(clips))
    synthesize(clips, out / "audio", seed, progress=advance)
    own = own_replies({c.script_id: c.text for c in clips}, out, llm, batch_size, progress)
    by_key = {t["key"]: t for t in corpus}
    stage11, stage12 = [], []
    for clip in clips:
        audio = f"audio/{clip.path}"
        provenance = {"acted_emotion": clip.emotion, "voiced_by": clip.voice, "text": clip.script_id}
        target = clip.text if says_words(clip.script_id) or not own.get(clip.script_id) else own[clip.script_id]
        stage11.append({"id": clip.id, "lang": "en", "audio": audio, "transcript": clip.text, "response": target,
                        "provenance": provenance})
        turn = by_key.get(clip.script_id)
        if turn is not None:
            history = [{"role": m["role"], "text": m["content"]} for m in turn["history"]]
            stage12.append({"id": clip.id, "lang": "en", "think": turn["think"], "response": turn["reply"],
                            "emotion": clip.emotion, "provenance": {"members": [clip.id]},
                            "turns": [*history, {"role": "user", "text": clip.text, "audio": audio},
                                      {"role": "assistant", "text": turn["reply"]}]})
    for name, rows in (("stage1_1.jsonl", stage11), ("stage1_2.jsonl", stage12), ("multiturn.jsonl", [])):
        with atomic_file(out / name) as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    counts = {"clips": len(clips), "chat_turns": len(chats), "corpus_turns": len(corpus), "stage1_2": len(stage12),
              "held_out_texts": len({c.script_id for c in clips if held(c.script_id, seed)}),
              "words_targets": sum(r["response"] == r["transcript"] for r in stage11), "llm": llm,
              "voices": sorted({c.voice for c in clips}),
              "emotions": {t: sum(c.emotion == t for c in clips) for t in TAGS}}
    with atomic_file(out / "recipe.json") as tmp:
        tmp.write_text(json.dumps({"name": "learn-chat", "lang": "en", "seed": seed, "counts": counts}, indent=1))
    return counts
