"""HumDial's emotion tags: the canonical label set everywhere in emoslm."""

from __future__ import annotations

from emoslm.errors import DataError

# Exact strings of HumDial Track 1 (note `anger`, `fear`, `surprise`, not adjectives).
TAGS: tuple[str, ...] = ("happy", "sad", "anger", "fear", "neutral", "surprise", "disgust")

# Adjective / noun forms people and other models use, mapped onto the tags.
ALIASES: dict[str, str] = {
    "angry": "anger", "fearful": "fear", "scared": "fear", "afraid": "fear", "surprised": "surprise",
    "disgusted": "disgust", "happiness": "happy", "joy": "happy", "sadness": "sad", "calm": "neutral",
}


def normalise_tag(label: str) -> str:
    """Map a label or a common alias onto one of the 7 tags, or raise with the valid set."""
    low = label.strip().lower()
    tag = ALIASES.get(low, low)
    if tag not in TAGS:
        raise DataError(f"unknown emotion '{label}'; use one of {', '.join(TAGS)}")
    return tag
