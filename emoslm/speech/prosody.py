"""How a voice should sound for an emotion: rate, pitch, energy, variability.

Two tables, because two jobs need prosody. ``acted`` voices a *user* who feels the emotion
(training and test audio: an angry speaker is fast and loud). ``reply`` voices the *assistant*
answering a user who feels it (a sad user gets a slower, softer, warmer reply, not a sad one).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from emoslm.emotions import normalise_tag


@dataclass(frozen=True)
class Prosody:
    rate: float = 1.0  # speaking-rate multiplier (>1 is faster)
    pitch: float = 0.0  # shift in semitones
    energy: float = 1.0  # loudness multiplier
    variability: float = 1.0  # expressiveness (Piper's noise scales, espeak's pitch range)
    style: str = ""  # words for instruction-following TTS servers, e.g. "gentle, warm"

    def jitter(self, rng: random.Random, amount: float = 0.08) -> Prosody:
        """A random variation around this prosody, so generated data is not one fixed voice."""
        return replace(
            self,
            rate=self.rate * (1 + rng.uniform(-amount, amount)),
            pitch=self.pitch + rng.uniform(-12 * amount, 12 * amount),
            energy=self.energy * (1 + rng.uniform(-amount, amount)),
            variability=self.variability * (1 + rng.uniform(-amount, amount)),
        )

    def describe(self) -> str:
        """An English instruction for TTS models that take one (CosyVoice-instruct, gpt-4o-mini-tts)."""
        words = []
        if self.rate < 0.95 or self.rate > 1.05:
            words.append("slowly" if self.rate < 1 else "briskly")
        if self.energy < 0.9 or self.energy > 1.1:
            words.append("softly" if self.energy < 1 else "with energy")
        if abs(self.pitch) >= 1:
            words.append("with a lower pitch" if self.pitch < 0 else "with a brighter, higher pitch")
        tone = f" in a {self.style} tone" if self.style else ""
        return ("Speak " + ", ".join(words) + tone).strip() + "." if words or tone else "Speak naturally."


ACTED: dict[str, Prosody] = {
    "neutral": Prosody(),
    "happy": Prosody(rate=1.1, pitch=2.0, energy=1.15, variability=1.3, style="cheerful"),
    "sad": Prosody(rate=0.8, pitch=-2.5, energy=0.6, variability=0.6, style="sad"),
    "anger": Prosody(rate=1.15, pitch=1.0, energy=1.45, variability=1.4, style="angry"),
    "fear": Prosody(rate=1.2, pitch=3.0, energy=0.8, variability=1.5, style="fearful, trembling"),
    "surprise": Prosody(rate=1.05, pitch=4.0, energy=1.25, variability=1.5, style="surprised"),
    "disgust": Prosody(rate=0.9, pitch=-1.5, energy=0.95, variability=0.9, style="disgusted"),
}

REPLY: dict[str, Prosody] = {
    "neutral": Prosody(style="friendly"),
    "happy": Prosody(rate=1.05, pitch=1.5, energy=1.1, variability=1.2, style="warm, upbeat"),
    "sad": Prosody(rate=0.88, pitch=-1.0, energy=0.8, variability=0.8, style="gentle, comforting"),
    "anger": Prosody(rate=0.9, pitch=-0.5, energy=0.85, variability=0.8, style="calm, steady"),
    "fear": Prosody(rate=0.88, pitch=-0.5, energy=0.85, variability=0.8, style="reassuring, calm"),
    "surprise": Prosody(rate=1.05, pitch=1.0, energy=1.05, variability=1.2, style="engaged, lively"),
    "disgust": Prosody(rate=0.95, pitch=-0.5, energy=0.9, variability=0.9, style="understanding"),
}


def acted(tag: str) -> Prosody:
    """Prosody for a speaker who *feels* ``tag``."""
    return ACTED[normalise_tag(tag)]


def reply(user_tag: str) -> Prosody:
    """Prosody for a reply to a user who feels ``user_tag``."""
    return REPLY[normalise_tag(user_tag)]
