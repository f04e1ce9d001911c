"""Cheap checks of a reply that need no judge: the failures a HumDial judge punishes that a program can see.

A judge scores empathy; these catch the mechanical faults that sank the example dialogues' replies before
any judging (issue 32): a reply cut off mid-sentence, the user spoken of in the third person ("The user's
tone is quite intense"), the wrong language, a reply far over a spoken turn's length, a near-copy of an
earlier reply, and (T1) a trajectory that does not name exactly the perceived emotions in order. They run in
the demo's summary and in `emoslm eval humdial`'s metrics (benchmarks: not yet), so every change to prompts,
models or decoding is seen against them at once.

The near-copy test uses the packaged English MiniLM for both languages: measured on two pairs each, a
paraphrase scores 0.91 (en) / 0.89 (zh) and an unrelated reply 0.07 / 0.64, so in Mandarin it catches
repeats but may miss close paraphrases.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from emoslm.eval.metrics import language_matches, reply_length, trajectory_exact
from emoslm.language import served

# A spoken turn: HumDial's replies are a few sentences. Tokens as `textnorm.tokens` counts them (a CJK
# character is one token, so the Mandarin budget is larger).
LENGTH_BUDGET = {"en": 90, "zh": 160}
NEAR_COPY = 0.9  # MiniLM cosine at which a reply repeats an earlier one
CHECK_NAMES = ("cut off", "third person", "not second person", "wrong language", "over length budget",
               "near-copy of an earlier reply", "trajectory not exact")

SENTENCE_END = "。！？!?.…~～」』\"'”’)）"
THIRD_PERSON = {
    "en": re.compile(r"\b(the user|the user's|the speaker|the speaker's|this user|the person speaking)\b", re.I),
    "zh": re.compile(r"用户|说话人|说话者|该用户"),
}
SECOND_PERSON = {"en": re.compile(r"\b(you|your|you're|yours|yourself)\b", re.I), "zh": re.compile(r"你|您")}


@dataclass
class ReplyChecks:
    """What is wrong with one reply; ``ok`` when nothing is."""

    ends_on_sentence: bool
    second_person: bool
    third_person: bool
    language: bool
    within_budget: bool
    near_copy: bool
    trajectory: dict[str, object] | None = None  # T1's final turn: trajectory_exact's verdict
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


def ends_on_sentence(text: str) -> bool:
    """The reply's last character closes a sentence (a reply cut off by a token budget does not)."""
    stripped = text.rstrip()
    return bool(stripped) and stripped[-1] in SENTENCE_END


def third_person(text: str, lang: str) -> bool:
    """The reply talks *about* the user ("the user's tone …") instead of to them."""
    return bool(THIRD_PERSON[served(lang)].search(text))


def second_person(text: str, lang: str) -> bool:
    return bool(SECOND_PERSON[served(lang)].search(text))


def check_reply(text: str, lang: str, earlier: Sequence[str] = (),
                similarity: Callable[[str, str], float] | None = None,
                gold_path: Sequence[str] | None = None) -> ReplyChecks:
    """Every cheap check of one reply. ``earlier``: the agent's previous replies in the dialogue;
    ``similarity``: a sentence similarity (MiniLM cosine, `minilm_similarity`); ``gold_path``: the
    emotions to name in order, for a T1 final turn."""
    lang = served(lang)
    copied = similarity is not None and any(similarity(text, before) >= NEAR_COPY for before in earlier if before)
    checks = ReplyChecks(ends_on_sentence(text), second_person(text, lang), third_person(text, lang),
                         language_matches(text, lang), reply_length(text) <= LENGTH_BUDGET[lang], copied)
    if gold_path is not None:
        checks.trajectory = trajectory_exact(text, list(gold_path), lang)
    checks.problems = [name for name, bad in (
        ("cut off", not checks.ends_on_sentence), ("third person", checks.third_person),
        ("not second person", not checks.second_person), ("wrong language", not checks.language),
        ("over length budget", not checks.within_budget), ("near-copy of an earlier reply", checks.near_copy),
        ("trajectory not exact", checks.trajectory is not None and not checks.trajectory["exact"])) if bad]
    return checks


def minilm_similarity() -> Callable[[str, str], float]:
    """Cosine of the packaged MiniLM's sentence embeddings (the text-emotion model, loaded once)."""
    import numpy as np

    from emoslm.perception.text_emotion import load_sentence_model

    model = load_sentence_model()

    def cosine(a: str, b: str) -> float:
        x, y = model.encode([a, b], normalize_embeddings=True)
        return float(np.dot(x, y))

    return cosine


def check_dialogue(replies: Sequence[str], lang: str, perceived: Sequence[str], task: str | None,
                   similarity: Callable[[str, str], float] | None = None) -> list[ReplyChecks]:
    """The checks of every reply in one dialogue: each against the replies before it; a T1 dialogue's last
    reply must also name the perceived emotions in order (what the agent heard, which is what it can know)."""
    out = []
    for k, text in enumerate(replies):
        last_t1 = task == "T1" and k == len(replies) - 1 and all(perceived)  # a saved submission has no path
        out.append(check_reply(text, lang, replies[:k], similarity, list(perceived) if last_t1 else None))
    return out


def summarise(checks: Sequence[ReplyChecks]) -> dict[str, object]:
    """Counts per fault over many replies, for summaries and benchmark results."""
    return {"replies": len(checks), "ok": sum(c.ok for c in checks),
            **{name: sum(name in c.problems for c in checks) for name in CHECK_NAMES}}
