"""The ``train`` section of a recipe → a ``TrainConfig`` for one stage (command-line options win)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from emoslm.errors import DataError
from emoslm.ieat.recipe import load_recipe
from emoslm.train.loop import TrainConfig
from emoslm.train.stages import STAGES


def train_config(recipe_path: Path, stage: str, **overrides: Any) -> TrainConfig:
    """Defaults, then the recipe's ``train`` keys, then its ``train.stages[STAGE]`` keys, then ``overrides``."""
    if stage not in STAGES:
        raise DataError(f"--stage '{stage}': use one of {', '.join(STAGES)}")
    recipe = load_recipe(recipe_path, needs_data=False)
    section = dict(recipe.train)
    per_stage = (section.pop("stages", None) or {}).get(stage, {})
    section.pop("backbone", None)
    known = {f.name for f in fields(TrainConfig)}
    values = {**section, **per_stage}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DataError(f"{recipe_path}: train: unknown key(s) {unknown}; known: {sorted(known - {'stage'})}")
    from emoslm.speech.units.phonemes import parse_spec

    for key in ("data", "out", "init", "unit_decoder"):
        if values.get(key) and not (key == "unit_decoder" and parse_spec(values[key])):  # kokoro:VOICE is no path
            values[key] = str(recipe.resolve(values[key]))
    values["out"] = str(Path(values.get("out") or "runs/train") / stage)
    if stage in ("1-2", "2") and not values.get("init"):  # each stage starts from the one before it
        before = Path(values["out"]).parent / {"1-2": "1-1", "2": "1-2"}[stage] / "final"
        values["init"] = str(before) if before.exists() else None
    for key, value in overrides.items():
        if value is not None:
            values[key] = str(value) if isinstance(value, Path) else value
    if not values.get("data"):
        raise DataError(f"{recipe_path}: train.data is not set; give --data BUILD_FOLDER")
    values["seed"] = values.get("seed", recipe.seed)
    return TrainConfig(stage=stage, **values)
