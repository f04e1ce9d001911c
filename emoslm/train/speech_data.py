"""Stage 2 data for phoneme units, built in minutes: the empathy corpus's user turns voiced, and two replies each.

Phoneme units are a function of the reply's text, so stage 2 needs no spoken replies — only the text the model
will have to say and the states it writes it from. Each user turn of the committed corpus (``corpora/empathy``)
is voiced with the acted prosody of its emotion by one of the training voices (a seeded tenth of the turns —
texts the branch never trains on — by a voice it never hears: the held-out clips), and becomes two samples:

- the **teacher's**: the injected think (its emotion and the corpus's cause) and the corpus's reply;
- the **model's own**: the think and reply the checkpoint writes when it hears the clip (greedy, the serving
  budgets) — the text its speech branch will have to say when it serves, so the branch learns those words.

The corpus's replies are few (about 240 in training), and saying unseen words is what the branch must learn, so
``extra`` text-only samples come from the ``chitchat-dataset`` package's conversations: a message as the
user's turn (text, no clip), an empty think (so the style is neutral, as the agent's rule gives for a think
that names no emotion) and the answering message (6-30 words) as the reply. They cost little to lay out and
teach the branch to say much more of English.

The style code of each sample is the emotion its think names (``Example.emotion``; neutral when none), which is
how the agent chooses the reply prosody too. Writes an IEAT-build-shaped folder (``recipe.json``,
``stage1_1.jsonl``, ``stage1_2.jsonl``, ``multiturn.jsonl``, ``audio/``) that ``emoslm train --stage 2`` reads;
resumable: voiced clips and written replies are kept.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

from emoslm.atomic import atomic_file
from emoslm.progress import Start, silent
from emoslm.train.data import held_key as held

TRAIN_VOICES = ("piper", "hibari", "kokoro:jf_alpha")
HELD_VOICE = "kokoro:jf_nezumi"


def build(checkpoint: Path, out: Path, lang: str = "en", limit: int = 0, seed: int = 0, think_budget: int = 48,
          max_new_tokens: int = 64, extra: int = 6000, progress: Start = silent) -> dict[str, Any]:
    """Write the folder; returns counts."""
    from emoslm.ieat.reply_corpus import CORPUS_DIR, read_corpus
    from emoslm.think import THINK_CLOSE, think_opening

    dialogues = [d for d in read_corpus([CORPUS_DIR / f"{lang}.jsonl"])]
    turns = []
    for dialogue in dialogues:
        history: list[dict[str, str]] = []
        for index, turn in enumerate(dialogue.turns):
            key = f"{dialogue.id}/{index + 1}"
            path = dialogue.path(index) if turn.trajectory else None
            think = f"{think_opening(turn.emotion, lang, None, path)} {turn.cause}"
            turns.append({"key": key, "user": turn.user, "emotion": turn.emotion, "history": list(history[-6:]),
                          "think": think, "reply": dialogue.full_reply(index)})
            said = dialogue.full_reply(index)
            history += [{"role": "user", "content": turn.user}, {"role": "assistant", "content": said}]
    turns = turns[:limit] if limit else turns
    out.mkdir(parents=True, exist_ok=True)
    _voice(turns, out, lang, seed, progress)
    own = _own_replies(checkpoint, turns, out, think_budget, max_new_tokens, progress)
    stage11, stage12 = [], []
    for turn in turns:
        audio, voice = turn["audio"], turn["voice"]
        stage11.append({"id": turn["key"], "audio": audio, "response": turn["reply"],
                        "provenance": {"voiced_by": voice, "acted_emotion": turn["emotion"]}})
        pairs = [("teacher", turn["think"], turn["reply"], turn["emotion"])]
        written = own.get(turn["key"])
        if written and written["reply"].strip():
            pairs.append(("own", written["think"], written["reply"], written["tag"] or "neutral"))
        for name, think, reply, tag in pairs:
            stage12.append({"id": f"{turn['key']}#{name}", "think": think.replace(THINK_CLOSE, "").strip(),
                            "response": reply, "emotion": tag, "provenance": {"members": [turn["key"]]},
                            "turns": [*({"role": m["role"], "text": m["content"]} for m in turn["history"]),
                                      {"role": "user", "text": turn["user"], "audio": audio},
                                      {"role": "assistant", "text": reply}]})
    for n, (said, answer) in enumerate(chitchat_pairs(extra) if lang == "en" else []):
        stage12.append({"id": f"chitchat/{n}#chitchat", "think": "", "response": answer, "emotion": "neutral",
                        "provenance": {"members": [f"chitchat/{n}"]},
                        "turns": [{"role": "user", "text": said}, {"role": "assistant", "text": answer}]})
    _write(out / "stage1_1.jsonl", stage11)
    _write(out / "stage1_2.jsonl", stage12)
    _write(out / "multiturn.jsonl", [])
    counts = {"turns": len(turns), "samples": len(stage12), "held_out_turns": sum(held(t["key"], seed) for t in turns),
              "own_replies": len(own), "chitchat_replies": sum(r["id"].endswith("#chitchat") for r in stage12),
              "voices": sorted({t["voice"] for t in turns})}
    with atomic_file(out / "recipe.json") as tmp:
        tmp.write_text(json.dumps({"name": "speech-data", "checkpoint": str(checkpoint), "lang": lang,
                                   "seed": seed, "counts": counts}, indent=1))
    return counts


def chitchat_pairs(count: int) -> list[tuple[str, str]]:
    """``count`` (message, answer) pairs of ``chitchat-dataset`` whose answer has 6-30 words, in a fixed order
    (none when the package is missing)."""
    import re

    try:
        import chitchat_dataset
    except ImportError:
        return []
    from emoslm.textnorm import tokens

    def text(turn: list[dict[str, Any]]) -> str:
        said = re.sub(r"\s+", " ", " ".join(m.get("text", "") for m in turn)).strip()
        return said[:1].upper() + said[1:]

    def usable(said: str) -> bool:
        return said.isascii() and not re.search(r"https?:|www\.", said)

    conversations = json.loads(Path(chitchat_dataset.__file__).with_name("dataset.json").read_text(encoding="utf-8"))
    out: list[tuple[str, str]] = []
    for key in sorted(conversations):
        messages = [text(turn) for turn in conversations[key].get("messages", [])]
        for said, answer in zip(messages, messages[1:], strict=False):
            if len(out) < count and usable(said) and usable(answer) and 6 <= len(tokens(answer)) <= 30:
                out.append((said[:200], answer))
        if len(out) >= count:
            break
    return out


def _voice(turns: list[dict[str, Any]], out: Path, lang: str, seed: int, progress: Start) -> None:
    """Each turn's clip, by a training voice (chosen by hash) or, for held-out texts, by the held-out voice."""
    from emoslm.audio import SAMPLE_RATE, save_audio
    from emoslm.speech.prosody import acted
    from emoslm.speech.voice import voice_pool

    advance = progress("voicing user turns", len(turns))
    for turn in turns:
        key = turn["key"]
        voice = HELD_VOICE if held(key, seed) else TRAIN_VOICES[zlib.crc32(key.encode()) % len(TRAIN_VOICES)]
        rel = f"audio/{key.replace('/', '_')}.wav"
        if not (out / rel).exists():
            tts = voice_pool().tts(voice, lang)
            speech = tts.synthesize(turn["user"], tts.reproducible(acted(turn["emotion"])))
            save_audio(out / rel, speech.at(SAMPLE_RATE))
        turn["audio"], turn["voice"] = rel, voice
        advance()


def _own_replies(checkpoint: Path, turns: list[dict[str, Any]], out: Path, think_budget: int, max_new_tokens: int,
                 progress: Start, batch: int = 16) -> dict[str, dict[str, Any]]:
    """What the checkpoint thinks and replies on hearing each clip (kept in ``own.jsonl``, so a rerun resumes)."""
    import torch
    from transformers import AutoTokenizer

    from emoslm.audio import load_audio
    from emoslm.slm.generate import generate_batch, heard_prosody
    from emoslm.slm.model import UnifiedSLM
    from emoslm.think import tag_in_think

    path = out / "own.jsonl"
    done = {r["key"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}
    todo = [t for t in turns if t["key"] not in done]
    if not todo:
        return done
    model, tokenizer = UnifiedSLM.from_pretrained(checkpoint).eval(), AutoTokenizer.from_pretrained(checkpoint)
    front_end = model.processor.front_end
    advance = progress("the model's own replies", len(todo))
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        audio = [load_audio(out / t["audio"]) for t in chunk]
        written = generate_batch(model, tokenizer, [torch.from_numpy(front_end(a)) for a in audio],
                                 [t["history"] for t in chunk], think_budget, max_new_tokens, batch,
                                 prosody=[heard_prosody(model, a) for a in audio])
        with open(path, "a", encoding="utf-8") as f:
            for turn, gen in zip(chunk, written, strict=True):
                row = {"key": turn["key"], "think": gen.think, "reply": gen.reply, "tag": tag_in_think(gen.think)}
                done[turn["key"]] = row
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        advance(len(chunk))
    return done


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
