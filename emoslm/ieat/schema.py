"""The files a build writes, in one documented schema, and the converter to HumDial's format.

``stage1_1.jsonl`` (speech → the teacher's answer to the text)::

    {"id", "lang", "audio", "transcript", "response", "provenance"}

``stage1_2.jsonl`` (single-turn IEAT) and ``multiturn.jsonl`` (regrouped empathy dialogues)::

    {"id", "task": "trajectory|reasoning|empathy", "lang",
     "turns": [{"role": "user", "audio", "text", "transcript", "instruction", "emotion", "emotion_probs"},
               {"role": "assistant", "text"}, ...,
               {"role": "assistant", "think", "text", "audio"}],   # think only in the last turn
     "emotion", "think", "response",
     "provenance": {"source", "source_id", "voiced_by", "acted_emotion", "asr", "teacher", "recognizer",
                    "prompts", "seed", "attempts", "think_closed_by_budget", "members"}}

``stage2.jsonl`` (the later speech stage)::

    {"id", "kind": "asr", "lang", "audio", "text"}                       # alignment: clip → transcript
    {"id", "kind": "tts", "lang", "text", "emotion", "style", "audio"}   # synthesis: reply → speech

``errors.jsonl``: ``{"id", "stage", "error"}``. Audio paths are relative to the build folder.
As in Qwen3's template, earlier assistant turns carry no think.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emoslm.dialogues import Dialogue, Turn
from emoslm.speech.prosody import reply as reply_prosody

TASK_IDS = {"trajectory": "T1", "reasoning": "T2", "empathy": "T3"}


def stage_1_1_sample(record: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    clip = record["clip"]
    return {"id": record["id"], "lang": record["lang"], "audio": clip["audio"], "transcript": clip["transcript"],
            "response": record["answer"], "provenance": {**clip["provenance"], **extra}}


def user_turn(record: dict[str, Any]) -> dict[str, Any]:
    ieat, clip = record["ieat"], record["clip"]
    return {"role": "user", "audio": ieat["user_audio"], "text": ieat["user_text"], "transcript": clip["transcript"],
            "instruction": (ieat["instruction"] or {}).get("text"), "emotion": ieat["emotion"]["tag"],
            "emotion_probs": ieat["emotion"]["probs"]}


def final_turn(turn: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "think": turn["think"], "text": turn["response"], "audio": turn.get("reply_audio")}


def stage_1_2_sample(record: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    ieat = record["ieat"]
    return {"id": record["id"], "task": record["task"], "lang": record["lang"],
            "turns": [user_turn(record), final_turn(ieat)],
            "emotion": ieat["emotion"]["tag"], "think": ieat["think"], "response": ieat["response"],
            "provenance": {**record["clip"]["provenance"], **extra, "attempts": ieat["attempts"],
                           "think_closed_by_budget": ieat["think_closed_by_budget"]}}


def multiturn_sample(dialogue_id: str, members: list[dict[str, Any]], final: dict[str, Any],
                     extra: dict[str, Any]) -> dict[str, Any]:
    turns: list[dict[str, Any]] = []
    for member in members[:-1]:
        turns += [user_turn(member), {"role": "assistant", "text": member["ieat"]["response"]}]
    last = user_turn(members[-1])
    if final.get("user_audio"):  # a trajectory question spoken in front of the last clip
        last.update(audio=final["user_audio"], text=final["user_text"],
                    instruction=(final.get("instruction") or {}).get("text"))
    turns += [last, final_turn(final)]
    return {"id": dialogue_id, "task": final.get("task", "empathy"), "lang": members[-1]["lang"], "turns": turns,
            "emotion": members[-1]["ieat"]["emotion"]["tag"],
            "emotions": [m["ieat"]["emotion"]["tag"] for m in members],
            "think": final["think"], "response": final["response"],
            "provenance": {**extra, "members": [m["id"] for m in members], "attempts": final["attempts"],
                           "think_closed_by_budget": final["think_closed_by_budget"]}}


def stage2_entries(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """An ASR pair per user turn and a TTS target for the final reply (with the prosody it should have)."""
    entries = [{"id": f"{sample['id']}#{i}", "kind": "asr", "lang": sample["lang"], "audio": t["audio"],
                "text": t["transcript"]} for i, t in enumerate(sample["turns"]) if t["role"] == "user"]
    prosody = reply_prosody(sample["emotion"])
    entries.append({"id": sample["id"], "kind": "tts", "lang": sample["lang"], "text": sample["response"],
                    "emotion": sample["emotion"], "style": prosody.describe(), "audio": sample["turns"][-1]["audio"]})
    return entries


def to_humdial(sample: dict[str, Any], build_dir: Path | None = None) -> Dialogue:
    """One IEAT sample as a HumDial Track 1 dialogue (user transcript, gold = recognised emotion, reply)."""
    users = [t for t in sample["turns"] if t["role"] == "user"]
    replies = [t for t in sample["turns"] if t["role"] == "assistant"]
    prefix = f"{build_dir}/" if build_dir else ""
    turns = [Turn(turn_id=i, text=u["transcript"], emotion=u["emotion"], split_audio_file=prefix + u["audio"],
                  response_text=r["text"], response_audio=prefix + r["audio"] if r.get("audio") else "")
             for i, (u, r) in enumerate(zip(users, replies, strict=True), 1)]
    return Dialogue(f"{sample['lang']}_{TASK_IDS[sample['task']]}_{sample['id']}", turns)
