"""Objective metrics that need no judge: computed from the replies, their audio and the timings.

- **trajectory exactness** (T1): the final reply names every gold tag of the dialogue in order (the
  transitional ``neutral`` included) and no other emotion word. HumDial's judge punishes "excited"
  for happy or a missing neutral, so this is the part of T1 a system can check for itself.
- language match, think leakage, reply length;
- text–speech consistency: ASR error rate of ``response_audio`` against ``response_text``;
- emotion of the spoken reply: the recogniser on the reply audio;
- latency (first audio, total) and real-time factor (turn time / reply audio duration).
"""

from __future__ import annotations

import re

from emoslm.language import of_text, served
from emoslm.textnorm import tokens
from emoslm.think import THINK_CLOSE, THINK_OPEN

# Words that name each tag, per language. The tag word itself always counts (HumDial's gold strings).
TAG_WORDS = {
    "en": {"happy": ["happy", "happiness"], "sad": ["sad", "sadness"], "anger": ["anger", "angry"],
           "fear": ["fear", "afraid", "fearful"], "neutral": ["neutral", "calm"],
           "surprise": ["surprise", "surprised"], "disgust": ["disgust", "disgusted"]},
    "zh": {"happy": ["开心", "高兴", "快乐", "happy"], "sad": ["难过", "伤心", "悲伤", "sad"],
           "anger": ["愤怒", "生气", "anger"], "fear": ["害怕", "恐惧", "fear"], "neutral": ["平静", "中性", "neutral"],
           "surprise": ["惊讶", "surprise"], "disgust": ["厌恶", "恶心", "disgust"]},
}
# Emotion words that are not one of the seven tags: naming them is an "invented" or "deviating" emotion.
OTHER_EMOTIONS = {
    "en": ["excited", "excitement", "anxious", "anxiety", "frustrated", "frustration", "upset", "bored", "worried",
           "nervous", "scared", "furious", "joy", "joyful", "depressed", "lonely", "relieved", "relief", "stressed",
           "annoyed", "irritated", "grateful", "proud", "ashamed", "guilty", "jealous", "hopeful", "disappointed",
           "overwhelmed", "shocked", "content", "cheerful", "miserable", "terrified", "panic"],
    "zh": ["兴奋", "焦虑", "沮丧", "失望", "紧张", "担心", "无聊", "郁闷", "委屈", "烦躁", "激动", "感激",
           "自豪", "孤独", "羞愧", "内疚", "嫉妒", "绝望", "崩溃", "欣慰", "震惊"],
}


def emotion_mentions(text: str, lang: str) -> list[tuple[int, str]]:
    """(position, tag or ``other:word``) for every emotion word in ``text``, in order."""
    lang = served(lang)
    lowered = text.lower()
    found = []
    for tag, words in TAG_WORDS[lang].items():
        for word in words:
            found += [(m.start(), tag) for m in re.finditer(_pattern(word, lang), lowered)]
    for word in OTHER_EMOTIONS[lang]:
        found += [(m.start(), f"other:{word}") for m in re.finditer(_pattern(word, lang), lowered)]
    return sorted(found)


def _pattern(word: str, lang: str) -> str:
    return re.escape(word) if lang == "zh" and not word.isascii() else rf"\b{re.escape(word)}\b"


def trajectory_exact(reply: str, gold: list[str], lang: str) -> dict[str, object]:
    """Does ``reply`` name the gold tags in order (consecutive repeats count once), and nothing else?"""
    path = [t for i, t in enumerate(gold) if t and (i == 0 or t != gold[i - 1])]
    mentions = emotion_mentions(reply, lang)
    named = [tag for _, tag in mentions if not tag.startswith("other:")]
    others = sorted({tag[6:] for _, tag in mentions if tag.startswith("other:")})
    position = 0
    for tag in named:  # is ``path`` a subsequence of the named tags?
        if position < len(path) and tag == path[position]:
            position += 1
    missing = [t for t in path if t not in named]
    extra = sorted({t for t in named if t not in path})
    return {"exact": position == len(path) and not others and not extra, "in_order": position == len(path),
            "missing": missing, "extra_tags": extra, "other_emotion_words": others}


def think_leaked(text: str) -> bool:
    return THINK_OPEN in text or THINK_CLOSE in text


def reply_length(text: str) -> int:
    return len(tokens(text))


def language_matches(text: str, lang: str) -> bool:
    return bool(text.strip()) and of_text(text) == served(lang)
