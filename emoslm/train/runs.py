"""Finished training runs and the model each started from: what reports and probes read of a run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from emoslm.errors import EmoslmError


def finished_runs(runs: list[Path]) -> list[dict[str, Any]]:
    """Each run's ``run.json``; a folder without it and ``final/`` is one clear error."""
    infos = []
    for run in runs:
        if not (run / "run.json").exists() or not (run / "final" / "config.json").exists():
            raise EmoslmError(f"{run}: not a finished training run (no run.json and final/); train it first")
        infos.append(json.loads((run / "run.json").read_text()))
    return infos


def untrained_model(config: dict[str, Any]) -> tuple[Any, Any]:
    """The run's LLM and encoder with a fresh adapter seeded as the run was: the "before training" row."""
    from emoslm.slm.generate import from_parts

    torch.manual_seed(config["seed"])
    return from_parts(config["llm"], config["encoder"], adapter_dim=config["adapter_dim"])
