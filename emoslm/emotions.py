"""HumDial's emotion tags: the canonical label set everywhere in emoslm, and maps onto it.

A leaf module: every layer (perception, speech prosody, IEAT thinking, agents, eval) imports it and it
imports nothing of emoslm but the error types, so no import cycle can run through the labels.
"""

from __future__ import annotations

from collections.abc import Mapping

from emoslm.errors import DataError

# Exact strings of HumDial Track 1 (note `anger`, `fear`, `surprise`, not adjectives).
TAGS: tuple[str, ...] = ("happy", "sad", "anger", "fear", "neutral", "surprise", "disgust")

# The tags' names in Mandarin, for Chinese think openings and replies.
ZH_NAMES: dict[str, str] = {"happy": "开心", "sad": "难过", "anger": "愤怒", "fear": "害怕", "neutral": "平静",
                            "surprise": "惊讶", "disgust": "厌恶"}

# Adjective / noun forms people and other models use, mapped onto the tags.
ALIASES: dict[str, str] = {
    "angry": "anger", "fearful": "fear", "scared": "fear", "afraid": "fear", "surprised": "surprise",
    "disgusted": "disgust", "happiness": "happy", "joy": "happy", "sadness": "sad", "calm": "neutral",
}

# emotion2vec (plus / base) output classes in model order; `other` and `<unk>` have no tag.
EMOTION2VEC_CLASSES: tuple[str, ...] = (
    "angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "<unk>",
)
EMOTION2VEC_TO_TAG: dict[str, str | None] = {
    "angry": "anger", "disgusted": "disgust", "fearful": "fear", "happy": "happy", "neutral": "neutral",
    "other": None, "sad": "sad", "surprised": "surprise", "<unk>": None, "unknown": None,
}

# NRC Emotion Lexicon categories. anticipation and trust have no HumDial tag; positive/negative are valence.
NRC_TO_TAG: dict[str, str | None] = {
    "anger": "anger", "disgust": "disgust", "fear": "fear", "joy": "happy", "sadness": "sad",
    "surprise": "surprise", "anticipation": None, "trust": None, "positive": None, "negative": None,
}

# Valence (unpleasant -1 … pleasant +1) and arousal (calm -1 … excited +1) per tag, placed on
# Russell's circumplex as in the affective-computing literature; used to summarise a distribution.
VALENCE_AROUSAL: dict[str, tuple[float, float]] = {
    "happy": (0.8, 0.5), "sad": (-0.7, -0.5), "anger": (-0.6, 0.8), "fear": (-0.7, 0.6),
    "neutral": (0.0, 0.0), "surprise": (0.3, 0.8), "disgust": (-0.6, 0.3),
}


def normalise_tag(label: str) -> str:
    """Map a label or a common alias onto one of the 7 tags, or raise with the valid set."""
    low = label.strip().lower()
    tag = ALIASES.get(low, low)
    if tag not in TAGS:
        raise DataError(f"unknown emotion '{label}'; use one of {', '.join(TAGS)}")
    return tag


def map_distribution(scores: Mapping[str, float], mapping: Mapping[str, str | None]) -> dict[str, float]:
    """Fold another model's class scores onto the 7 tags (unmapped classes dropped, renormalised)."""
    folded = dict.fromkeys(TAGS, 0.0)
    for label, score in scores.items():
        tag = mapping.get(label)
        if tag is not None:
            folded[tag] += max(0.0, float(score))
    total = sum(folded.values())
    if total <= 0:
        return {tag: 1.0 if tag == "neutral" else 0.0 for tag in TAGS}
    return {tag: value / total for tag, value in folded.items()}


def valence_arousal(probs: Mapping[str, float]) -> tuple[float, float]:
    """Expected valence and arousal under a distribution over the tags."""
    valence = sum(p * VALENCE_AROUSAL[t][0] for t, p in probs.items())
    arousal = sum(p * VALENCE_AROUSAL[t][1] for t, p in probs.items())
    return valence, arousal
