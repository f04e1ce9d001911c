"""From judged and measured dialogues to HumDial scores: per task, dimension, language, and the final.

Final per language = 0.2·T1 + 0.2·T2 + 0.1·T3-D1 + 0.25·T3-D2 + 0.25·T3-D3, then zh and en averaged
(the challenge's weights). In the challenge D2 and D3 came from human raters; here they come from an
audio-capable judge when one is given, otherwise from **stand-ins** measured on the reply audio:

- D2 stand-in (vocal congruence): the recogniser's reading of the reply voice against the tones that
  fit a reply to the user's emotion (a calm or gentle voice for a sad or angry user, a bright one for a
  happy user); 4 when it fits, 1 when it contradicts (a cheerful voice for a sad user), 2 otherwise.
- D3 stand-in (naturalness): intelligibility of the reply audio by ASR, capped at 3 because every voice
  here is audibly synthetic (the rubric's 3: "clearly TTS but fluent and clear").

Every score says where it came from, and the report marks stand-ins as such.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from emoslm.eval.judge import DIMENSIONS, DimensionScores

WEIGHTS = {"T1": 0.20, "T2": 0.20, "d1_text_empathy": 0.10, "d2_vocal_congruence": 0.25,
           "d3_audio_naturalness": 0.25}
FITTING_REPLY_TONES = {
    "sad": {"neutral", "sad"}, "anger": {"neutral", "sad"}, "fear": {"neutral", "sad"}, "disgust": {"neutral", "sad"},
    "happy": {"happy", "surprise", "neutral"}, "surprise": {"happy", "surprise", "neutral"},
    "neutral": {"neutral", "happy"},
}
CONTRADICTING_REPLY_TONES = {
    "sad": {"happy", "surprise", "anger"}, "fear": {"happy", "anger"}, "anger": {"happy", "anger"},
    "disgust": {"happy"}, "happy": {"sad", "anger", "disgust"}, "surprise": {"sad", "disgust"},
    "neutral": {"anger", "disgust"},
}


def vocal_congruence_standin(user_tag: str, reply_voice_tag: str) -> int:
    if reply_voice_tag in FITTING_REPLY_TONES.get(user_tag, set()):
        return 4
    if reply_voice_tag in CONTRADICTING_REPLY_TONES.get(user_tag, set()):
        return 1
    return 2


def naturalness_standin(asr_error_rate: float) -> int:
    return 3 if asr_error_rate <= 0.10 else 2 if asr_error_rate <= 0.30 else 1


@dataclass
class TaskScores:
    task: str
    lang: str
    dialogues: int = 0
    judged: int = 0
    judge_failures: int = 0
    dimensions: dict[str, float] = field(default_factory=dict)  # mean over dialogues
    spreads: dict[str, float] = field(default_factory=dict)  # mean spread over the judge's samples
    sources: dict[str, str] = field(default_factory=dict)  # dimension -> "judge:MODEL" or "stand-in: ..."

    @property
    def overall(self) -> float | None:
        """T1/T2: mean of the dimensions (the challenge's Overall_avg)."""
        values = [v for d, v in self.dimensions.items() if d in DIMENSIONS.get(self.task, ())]
        return round(statistics.mean(values), 3) if values else None


def aggregate(task: str, lang: str, judged: list[DimensionScores], total: int, judge_name: str,
              standins: dict[str, list[float]] | None = None) -> TaskScores:
    scores = TaskScores(task, lang, dialogues=total, judged=len(judged),
                        judge_failures=sum(1 for j in judged if not j.means))
    dims = sorted({d for j in judged for d in j.means})
    for d in dims:
        values = [j.means[d] for j in judged if d in j.means]
        scores.dimensions[d] = round(statistics.mean(values), 3)
        scores.spreads[d] = round(statistics.mean(j.spreads[d] for j in judged if d in j.spreads), 3)
        scores.sources[d] = f"judge:{judge_name}"
    for d, values in (standins or {}).items():
        if d not in scores.dimensions and values:
            scores.dimensions[d] = round(statistics.mean(values), 3)
            scores.sources[d] = "stand-in: " + ("recogniser on reply audio" if d.startswith("d2") else
                                                "ASR intelligibility of reply audio")
    return scores


def final_score(by_task: dict[str, TaskScores]) -> tuple[float | None, list[str]]:
    """The weighted final for one language; None (and what is missing) when a part is absent."""
    parts = {"T1": by_task.get("T1") and by_task["T1"].overall, "T2": by_task.get("T2") and by_task["T2"].overall}
    t3 = by_task.get("T3")
    for d in ("d1_text_empathy", "d2_vocal_congruence", "d3_audio_naturalness"):
        parts[d] = t3.dimensions.get(d) if t3 else None
    missing = [k for k, v in parts.items() if v is None]
    if missing:
        return None, missing
    return round(sum(WEIGHTS[k] * float(v) for k, v in parts.items()), 3), []


def scoreboard(tasks: list[TaskScores]) -> dict[str, Any]:
    """Per-language finals and their average, plus which dimensions were stand-ins."""
    langs = sorted({t.lang for t in tasks})
    board: dict[str, Any] = {"languages": {}, "stand_ins": sorted({f"{t.task}:{d}" for t in tasks
                                                                   for d, s in t.sources.items()
                                                                   if s.startswith("stand-in")})}
    finals = []
    for lang in langs:
        final, missing = final_score({t.task: t for t in tasks if t.lang == lang})
        board["languages"][lang] = {"final": final, "missing": missing}
        if final is not None:
            finals.append(final)
    board["final"] = round(statistics.mean(finals), 3) if finals and len(finals) == len(langs) else None
    return board
