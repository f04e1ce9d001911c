"""Spoken task instructions: the question a user asks before (or around) what they tell the model.

Per task and language the teacher drafts instructions from a few seed examples; drafts are
filtered (length, language, duplicates, no emotion words that would give the answer away) and
spoken by several voices. The trajectory and reasoning samples get one in front of the user clip;
empathy needs none (the user's own words are the request). The seeds stay in the pool, so a weak
teacher that drafts nothing usable still yields a working set, and ``source`` says which is which.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from emoslm.audio import save_audio
from emoslm.emotions import TAGS
from emoslm.ieat.construct import Toolkit, file_key, item_seed, speak
from emoslm.textnorm import tokens
from emoslm.think import language_of

SEEDS: dict[str, dict[str, list[str]]] = {
    "trajectory": {
        "en": ["What emotions did I go through just now?", "Can you describe how my feelings changed?",
               "Which emotions did you hear in what I said?"],
        "zh": ["我刚才经历了哪些情绪变化？", "你能说说我的情绪是怎么变化的吗？", "你从我说的话里听出了哪些情绪？"],
    },
    "reasoning": {
        "en": ["Why do I feel this way?", "What do you think is really behind my mood?",
               "Can you explain why I am feeling like this?"],
        "zh": ["我为什么会有这种感觉？", "你觉得我情绪背后的原因是什么？", "能帮我分析一下我为什么会这样吗？"],
    },
}
GOAL = {
    "trajectory": {"en": "tell them which emotions they went through", "zh": "说出用户经历了哪些情绪变化"},
    "reasoning": {"en": "explain why they feel the way they do", "zh": "分析用户产生这种情绪的原因"},
}
DRAFTS_PER_CALL = 10
DRAFT_PROMPT = {
    "en": "Write {n} different short questions a user might say to a voice assistant to ask it to {goal}. "
          "Examples:\n{examples}\nWrite one question per line, without numbers.",
    "zh": "请写出{n}个不同的简短问题，是用户对语音助手说的话，请它{goal}。例如：\n{examples}\n每行一个问题，不要编号。",
}


def clean_line(line: str) -> str:
    """A drafted line without numbering, bullets or a lead-in ('A user might ask: "…"' keeps the quote)."""
    quoted = re.search(r'["“「]([^"”」]+)', line)  # the closing quote may be cut off
    if quoted:
        line = quoted.group(1)
    return re.sub(r"^\s*(?:[-*•]|\d+[.)、:]|[（(]?\d+[)）])\s*", "", line).strip()


FIRST_PERSON = {"en": {"i", "me", "my", "myself", "i'm"}, "zh": {"我"}}


def keep(text: str, lang: str, min_words: int, max_words: int) -> bool:
    """A usable instruction: right length and language, the user asking about *themselves*, and no
    emotion word that would hand the model its answer."""
    words = tokens(text)
    if not min_words <= len(words) <= max_words or language_of(text) != lang:
        return False
    return bool(FIRST_PERSON[lang] & set(words)) and not any(tag in words for tag in TAGS)


def draft(tools: Toolkit, task: str, lang: str) -> list[dict[str, str]]:
    """Seeds first, then the teacher's filtered drafts, deduplicated, ``per_task`` at most."""
    spec = tools.recipe.data.instructions
    pool: list[dict[str, str]] = []
    seen: set[tuple[str, ...]] = set()

    def add(text: str, source: str) -> None:
        key = tuple(tokens(text))
        if key not in seen and keep(text, lang, spec.min_words, spec.max_words):
            seen.add(key)
            pool.append({"text": text, "source": source})

    for text in SEEDS[task][lang]:
        add(text, "seed")
    llm = tools.llms.for_lang(lang)
    for round_ in range(-(-spec.candidates // DRAFTS_PER_CALL)):
        if len(pool) >= spec.per_task:
            break
        prompt = DRAFT_PROMPT[lang].format(n=DRAFTS_PER_CALL, goal=GOAL[task][lang],
                                           examples="\n".join(SEEDS[task][lang]))
        sampling = tools.sampling(24 * DRAFTS_PER_CALL,
                                  item_seed(tools.recipe.seed, "instructions", task, lang, str(round_)))
        sampling.temperature = max(sampling.temperature, 0.8)
        for line in llm.chat([{"role": "user", "content": prompt}], sampling).text.splitlines():
            add(clean_line(line), "teacher")
    return pool[: spec.per_task]


def build_instructions(tools: Toolkit, langs: list[str], out: Path) -> dict[str, list[dict[str, Any]]]:
    """Every (language, task) pool, each instruction spoken once per voice; keyed ``lang/task``."""
    spec = tools.recipe.data.instructions
    pools: dict[str, list[dict[str, Any]]] = {}
    for lang in langs:
        voices = spec.voices.get(lang) or tools.recipe.data.voices.get(lang) or [None]
        for task in ("trajectory", "reasoning"):
            if tools.recipe.data.tasks.get(task, 0) <= 0:
                continue
            spoken = []
            for n, entry in enumerate(draft(tools, task, lang)):
                for voice in voices:
                    rng = random.Random(item_seed(tools.recipe.seed, "instruction", lang, task, str(n), str(voice)))
                    audio, name = speak(tools, entry["text"], lang, "neutral", rng, [voice] if voice else None)
                    rel = f"instructions/{lang}/{task}/{file_key(f'{n:03d}-{name}')}.wav"
                    save_audio(out / rel, audio)
                    spoken.append({**entry, "voice": name, "audio": rel})
            pools[f"{lang}/{task}"] = spoken
    return pools
