"""The LLM judge of HumDial Track 1: rubric prompts, the judge's context, robust parsing, repeated sampling.

The rubric prompts (``rubrics/t{1,2,3}.txt``) were written for emoslm to implement the challenge's
dimensions and scales: T1 and T2 score three dimensions each on 1/3/5 (other integers snap to the
nearest band: ≤2 → 1, 3–4 → 3, ≥5 → 5), T3 scores text empathy (D1) 1–5 and, when the judge can hear
the reply audio, vocal congruence (D2) and naturalness (D3). As in the challenge the judge sees the
gold emotion tags and transcripts plus the model's own earlier replies; T3 judges the turn where a
non-neutral emotion appears for the second time.

Judges are language models and write broken JSON: fenced blocks, missing closing braces, scores as
words. A reply that cannot be read is recorded as a failure (kept out of the means, counted), never
a crash. Local llama.cpp judges are constrained by a JSON grammar built from the rubric's schema.
"""

from __future__ import annotations

import base64
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoslm.audio import to_wav_bytes
from emoslm.dialogues import Dialogue
from emoslm.errors import DataError
from emoslm.llm import LLM, Sampling, load_llm
from emoslm.think import strip_think

RUBRIC_DIR = Path(__file__).with_name("rubrics")
DIMENSIONS = {
    "T1": ("accuracy_completeness", "depth_granularity", "added_value"),
    "T2": ("information_integration", "insight_root_cause", "clarity_logic"),
    "T3": ("d1_text_empathy",),
}
AUDIO_DIMENSIONS = ("d2_vocal_congruence", "d3_audio_naturalness")
AUDIO_RUBRIC = """- d2_vocal_congruence: 5 = tone, pace and pauses fit the words and the user's state, like a sincere
  friend. 4 = the right overall tone (gentle, concerned, encouraging). 3 = flat, audibly a script. 2 = subtly wrong
  (too fast for a user who is down, too flat where encouragement is needed). 1 = contradicts the words.
- d3_audio_naturalness: 5 = indistinguishable from a professional human speaker. 4 = very human, tiny artefacts.
  3 = clearly synthetic but fluent and clear. 2 = distracting robotic flaws or slurring. 1 = severe artefacts.
"""
# The challenge's judge sampling (Qwen3-Omni through vLLM).
JUDGE_SAMPLING = dict(temperature=0.6, top_p=0.95, top_k=20)


def find_target_turn(dialogue: Dialogue) -> int | None:
    """Index of the T3 turn to judge: where a non-neutral user emotion occurs for the second time."""
    seen = 0
    for index, turn in enumerate(dialogue.turns):
        if turn.emotion and turn.emotion != "neutral":
            seen += 1
            if seen == 2:
                return index
    return None


def snap_135(value: int) -> int:
    return 1 if value <= 2 else 3 if value <= 4 else 5


def _number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(round(value))
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        return int(round(float(value)))
    return None


def _json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text``: fences stripped, missing closing braces and trailing commas patched."""
    text = re.sub(r"```(?:json)?", "", strip_think(text))
    start = text.find("{")
    if start < 0:
        return None
    body = text[start:].strip()
    for candidate in (body, body[: body.rfind("}") + 1]):
        candidate = re.sub(r",\s*([}\]])", r"\1", candidate)
        candidate += "}" * max(0, candidate.count("{") - candidate.count("}"))
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        return obj if isinstance(obj, dict) else None
    return None


@dataclass
class Judgement:
    scores: dict[str, int] | None  # None when the reply could not be read
    error: str = ""
    raw: str = ""


def parse_judgement(text: str, dimensions: tuple[str, ...], scale: str) -> Judgement:
    """Scores for ``dimensions`` from a judge reply; ``scale`` is ``135`` (T1/T2) or ``1-5`` (T3)."""
    obj = _json_object(text)
    if obj is None:
        return Judgement(None, "no JSON object in the judge's reply", text)
    scores = obj.get("scores", obj)
    if not isinstance(scores, dict):
        return Judgement(None, "'scores' is not an object", text)
    parsed = {}
    for dim in dimensions:
        number = _number(scores.get(dim))
        if number is None:
            return Judgement(None, f"score '{dim}' missing or not a number ({scores.get(dim)!r})", text)
        parsed[dim] = snap_135(number) if scale == "135" else min(5, max(1, number))
    return Judgement(parsed, "", text)


def schema_for(dimensions: tuple[str, ...], scale: str) -> dict[str, Any]:
    allowed = [1, 3, 5] if scale == "135" else [1, 2, 3, 4, 5]
    score = {"type": "integer", "enum": allowed}
    return {"type": "object", "required": ["scores", "justification", "overall_comment"], "properties": {
        "scores": {"type": "object", "required": list(dimensions), "properties": {d: score for d in dimensions}},
        "justification": {"type": "object", "required": list(dimensions),
                          "properties": {d: {"type": "string", "maxLength": 200} for d in dimensions}},
        "overall_comment": {"type": "string", "maxLength": 300}}}


def history_lines(dialogue: Dialogue, upto: int, include_last_reply: bool) -> str:
    lines = []
    for index, turn in enumerate(dialogue.turns[: upto + 1]):
        lines.append(f"User (emotion: {turn.emotion or 'unknown'}): {turn.text}")
        if index < upto or include_last_reply:
            lines.append(f"AI: {strip_think(turn.response_text)}")
    return "\n".join(lines)


@dataclass
class DimensionScores:
    """One dialogue's scores: per dimension the mean and spread over the judge's samples."""

    dialogue_id: str
    task: str
    lang: str
    means: dict[str, float] = field(default_factory=dict)
    spreads: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    turn_index: int | None = None

    @property
    def overall(self) -> float | None:
        return statistics.mean(self.means.values()) if self.means else None


class Judge:
    """Scores dialogues with an LLM (``llama-cpp:MODEL``, ``transformers:MODEL`` or an ``http(s)://`` endpoint).

    ``hears_audio`` sends the T3 reply audio with the prompt (an audio-capable endpoint such as vLLM
    serving Qwen3-Omni) and adds D2/D3 to the rubric; otherwise those dimensions are left to stand-ins.
    """

    def __init__(self, spec: str = "llama-cpp:qwen2.5-coder-0.5b-instruct", samples: int = 1,
                 rubric_dir: Path | None = None, hears_audio: bool = False, max_tokens: int = 400,
                 seed: int = 1234, llm: LLM | None = None) -> None:
        self.spec, self.samples, self.hears_audio = spec, max(1, samples), hears_audio
        self.max_tokens, self.seed = max_tokens, seed
        self.rubrics = {task: load_rubric(task, rubric_dir) for task in DIMENSIONS}
        self.llm = llm or (None if spec == "prompts" else load_llm(spec))  # "prompts": rubric prompts only

    def dimensions(self, task: str) -> tuple[str, ...]:
        return DIMENSIONS[task] + (AUDIO_DIMENSIONS if task == "T3" and self.hears_audio else ())

    def prompt(self, task: str, dialogue: Dialogue, index: int) -> str:
        turn = dialogue.turns[index]
        if task == "T3":
            dims = self.dimensions(task)
            return self.rubrics[task].format(
                history=history_lines(dialogue, index, include_last_reply=False),
                response=strip_think(turn.response_text),
                audio_note="(The reply's audio is attached: judge how it sounds too.)\n" if self.hears_audio else "",
                audio_dimensions=AUDIO_RUBRIC if self.hears_audio else "",
                score_keys=", ".join(f'"{d}": 1-5' for d in dims),
                justification_keys=", ".join(f'"{d}": "..."' for d in dims))
        # the final question carries its tag like every other user turn: HumDial's T1 path includes it (the
        # closing neutral), and without it a judge counts a reply that names it as inventing an emotion
        question = f"(emotion: {turn.emotion}) {turn.text}" if turn.emotion else turn.text
        return self.rubrics[task].format(history=history_lines(dialogue, index - 1, include_last_reply=True),
                                         question=question, response=strip_think(turn.response_text))

    def message(self, task: str, dialogue: Dialogue, index: int, audio: Any = None) -> dict[str, Any]:
        text = self.prompt(task, dialogue, index)
        if not (self.hears_audio and task == "T3" and audio is not None):
            return {"role": "user", "content": text}
        data = base64.b64encode(to_wav_bytes(audio)).decode()
        return {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
                                            {"type": "text", "text": text}]}

    def score(self, task: str, dialogue: Dialogue, audio: Any = None) -> DimensionScores | None:
        """Judge one dialogue ``samples`` times; None for a T3 dialogue without a target turn."""
        index = find_target_turn(dialogue) if task == "T3" else len(dialogue.turns) - 1
        if index is None:
            return None
        dims, scale = self.dimensions(task), ("1-5" if task == "T3" else "135")
        message = self.message(task, dialogue, index, audio)
        result = DimensionScores(dialogue.dialogue_id, task, dialogue.lang, turn_index=index)
        got: dict[str, list[int]] = {d: [] for d in dims}
        for k in range(self.samples):
            sampling = Sampling(max_tokens=self.max_tokens, seed=self.seed + k, json_schema=schema_for(dims, scale),
                                **JUDGE_SAMPLING)
            judgement = parse_judgement(self.llm.chat([message], sampling).text, dims, scale)
            result.samples += 1
            if judgement.scores is None:
                result.failures += 1
                result.errors.append(judgement.error)
                continue
            for d in dims:
                got[d].append(judgement.scores[d])
        for d, values in got.items():
            if values:
                result.means[d] = round(statistics.mean(values), 3)
                result.spreads[d] = round(statistics.pstdev(values), 3)
        return result

    def close(self) -> None:
        self.llm.close()


def load_rubric(task: str, rubric_dir: Path | None = None) -> str:
    """``t1.txt``/``t2.txt``/``t3.txt`` from ``rubric_dir`` when it has one, else the built-in prompt."""
    name = f"{task.lower()}.txt"
    path = rubric_dir / name if rubric_dir and (rubric_dir / name).exists() else RUBRIC_DIR / name
    if rubric_dir and not rubric_dir.is_dir():
        raise DataError(f"--rubric-dir {rubric_dir}: no such folder")
    text = path.read_text(encoding="utf-8")
    needed = {"{history}", "{response}"}
    missing = [p for p in needed if p not in text]
    if missing:
        raise DataError(f"{path}: the rubric needs the placeholders {', '.join(sorted(missing))}")
    return text
