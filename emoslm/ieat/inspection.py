"""`emoslm data inspect`: what a build holds, as counts, length distributions and two plots.

Before training on a data set a person wants to see whether the emotions are balanced, whether
thinks are cut by the budget, and how the multi-turn dialogues move between emotions; numbers
for the first two, pictures for the spread and the transitions.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from emoslm.emotions import TAGS
from emoslm.errors import DataError
from emoslm.jsonl import json_lines
from emoslm.textnorm import tokens


def load_samples(build: Path, name: str) -> list[dict[str, Any]]:
    path = build / name
    return [obj for _, obj in json_lines(path)] if path.exists() else []


def _lengths(texts: list[str]) -> dict[str, float]:
    if not texts:
        return {}
    n = np.array([len(tokens(t)) for t in texts])
    return {"mean": round(float(n.mean()), 1), "p10": float(np.percentile(n, 10)), "p50": float(np.median(n)),
            "p90": float(np.percentile(n, 90)), "max": int(n.max())}


def transitions(multi: list[dict[str, Any]]) -> np.ndarray:
    """Counts of emotion a → emotion b between consecutive user turns of the multi-turn dialogues."""
    matrix = np.zeros((len(TAGS), len(TAGS)), int)
    for sample in multi:
        for a, b in zip(sample["emotions"], sample["emotions"][1:], strict=False):
            matrix[TAGS.index(a), TAGS.index(b)] += 1
    return matrix


def inspect_build(build: Path) -> dict[str, Any]:
    """Counts per task / language / emotion, think and answer lengths, budget cuts, error stages."""
    if not (build / "recipe.json").exists():
        raise DataError(f"{build}: not an IEAT build folder (no recipe.json); run `emoslm data build` first")
    if not (build / "stage1_2.jsonl").exists():
        raise DataError(f"{build}: the build is not assembled yet; finish it with `emoslm data build` (it resumes)")
    single = load_samples(build, "stage1_2.jsonl")
    multi = load_samples(build, "multiturn.jsonl")
    both = single + multi
    errors = load_samples(build, "errors.jsonl")
    return {
        "build": str(build),
        "samples": {"stage1_1": len(load_samples(build, "stage1_1.jsonl")), "stage1_2": len(single),
                    "multiturn": len(multi), "stage2": len(load_samples(build, "stage2.jsonl")), "errors": len(errors)},
        "per_task": dict(sorted(Counter(s["task"] for s in both).items())),
        "per_language": dict(sorted(Counter(s["lang"] for s in both).items())),
        "per_emotion": {t: sum(s["emotion"] == t for s in both) for t in TAGS},
        "think_tokens": _lengths([s["think"] for s in both]),
        "answer_tokens": _lengths([s["response"] for s in both]),
        "think_closed_by_budget": sum(bool(s["provenance"].get("think_closed_by_budget")) for s in both),
        "multiturn_lengths": dict(sorted(Counter(len(s["emotions"]) for s in multi).items())),
        "multiturn_first_differs_from_last": sum(s["emotions"][0] != s["emotions"][-1] for s in multi),
        "error_stages": dict(sorted(Counter(e["stage"] for e in errors).items())),
        "transitions": transitions(multi).tolist(),
    }


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    """``emotions.png`` (samples per emotion and task) and ``transitions.png`` (multi-turn a → b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    counts = [report["per_emotion"][t] for t in TAGS]
    ax.bar(TAGS, counts, color="#4c72b0")
    ax.set_ylabel("samples")
    ax.set_title(f"Emotion of the user turn (stage 1-2 + multi-turn, n={sum(counts)})")
    fig.tight_layout()
    emotions = out / "emotions.png"
    fig.savefig(emotions, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    matrix = np.array(report["transitions"])
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(TAGS)), TAGS, rotation=45, ha="right")
    ax.set_yticks(range(len(TAGS)), TAGS)
    ax.set_xlabel("next turn")
    ax.set_ylabel("turn")
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8)
    ax.set_title("Multi-turn emotion transitions")
    fig.tight_layout()
    trans = out / "transitions.png"
    fig.savefig(trans, dpi=110)
    plt.close(fig)
    return [emotions, trans]


def write_report(build: Path) -> tuple[dict[str, Any], list[Path]]:
    report = inspect_build(build)
    pictures = plot(report, build / "inspect")
    (build / "inspect" / "inspect.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report, pictures
