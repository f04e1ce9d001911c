"""One result type for every emotion recogniser: ``EmotionEstimate``.

The evidence stays split into its acoustic and textual parts, so a caller (the IEAT think opening,
the chat agent, the evaluation) can see *why* an estimate was made and notice a conflict such as
neutral words spoken in a sad voice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emoslm.emotions import TAGS, valence_arousal


def as_probs(values: Mapping[str, float] | np.ndarray) -> dict[str, float]:
    """A normalised distribution over the 7 tags, from a mapping or an array in ``TAGS`` order."""
    if isinstance(values, np.ndarray):
        values = dict(zip(TAGS, values.tolist(), strict=True))
    clean = {t: max(0.0, float(values.get(t, 0.0))) for t in TAGS}
    total = sum(clean.values())
    if total <= 0:
        return {t: 1.0 / len(TAGS) for t in TAGS}
    return {t: v / total for t, v in clean.items()}


def top(probs: Mapping[str, float]) -> str:
    return max(TAGS, key=lambda t: probs.get(t, 0.0))


@dataclass
class Evidence:
    """What one modality says: a distribution plus the cues behind it (for people to read)."""

    source: str  # e.g. "acoustic:builtin", "acoustic:emotion2vec", "text:lexicon+minilm"
    probs: dict[str, float]
    cues: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return top(self.probs)

    @property
    def confidence(self) -> float:
        return self.probs[self.tag]


@dataclass
class EmotionEstimate:
    tag: str
    probs: dict[str, float]
    valence: float
    arousal: float
    acoustic: Evidence | None = None
    textual: Evidence | None = None
    transcript: str = ""

    @classmethod
    def from_probs(cls, probs: Mapping[str, float] | np.ndarray, acoustic: Evidence | None = None,
                   textual: Evidence | None = None, transcript: str = "") -> EmotionEstimate:
        clean = as_probs(probs)
        valence, arousal = valence_arousal(clean)
        return cls(top(clean), clean, valence, arousal, acoustic, textual, transcript)

    @property
    def confidence(self) -> float:
        return self.probs[self.tag]

    @property
    def conflict(self) -> bool:
        """True when voice and words point to different emotions, each with some confidence."""
        if self.acoustic is None or self.textual is None:
            return False
        return (self.acoustic.tag != self.textual.tag
                and self.acoustic.confidence >= 0.35 and self.textual.confidence >= 0.35)

    @classmethod
    def from_json(cls, wire: Mapping[str, Any]) -> EmotionEstimate:
        """The inverse of ``to_json`` (probabilities as rounded there)."""
        return cls.from_probs(wire["probs"], acoustic=_evidence(wire.get("acoustic")),
                              textual=_evidence(wire.get("textual")), transcript=wire.get("transcript", ""))

    def to_json(self) -> dict[str, Any]:
        def evidence(e: Evidence | None) -> dict[str, Any] | None:
            if e is None:
                return None
            return {"source": e.source, "tag": e.tag, "probs": _round(e.probs), "cues": e.cues}

        return {"tag": self.tag, "confidence": round(self.confidence, 4), "probs": _round(self.probs),
                "valence": round(self.valence, 3), "arousal": round(self.arousal, 3), "conflict": self.conflict,
                "transcript": self.transcript, "acoustic": evidence(self.acoustic), "textual": evidence(self.textual)}


def _evidence(wire: Mapping[str, Any] | None) -> Evidence | None:
    return None if wire is None else Evidence(wire["source"], as_probs(wire["probs"]), dict(wire.get("cues") or {}))


def _round(probs: Mapping[str, float]) -> dict[str, float]:
    return {t: round(float(p), 4) for t, p in probs.items()}
