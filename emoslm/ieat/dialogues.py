"""Regroup single-turn empathy samples into multi-turn dialogues whose emotion changes.

The paper takes 40% of the empathetic-response samples and regroups them into 2-, 3- and 4-turn
dialogues whose first and last emotions differ, so the model learns to follow a change of mood.
Grouping is a pure function of the sample ids and the seed: the same input always gives the same
dialogues, whichever shard or worker built the samples.
"""

from __future__ import annotations

import random
from typing import Any


def regroup(samples: list[dict[str, Any]], share: float, lengths: list[int], seed: int) -> list[list[dict[str, Any]]]:
    """Dialogues (lists of member samples, one language each) with first emotion ≠ last emotion."""
    ordered = sorted(samples, key=lambda s: s["id"])
    rng = random.Random(seed)
    rng.shuffle(ordered)
    chosen = ordered[: round(share * len(ordered))]
    dialogues = []
    for lang in sorted({s["lang"] for s in chosen}):
        queue = [s for s in chosen if s["lang"] == lang]
        turn = 0
        while len(queue) >= 2:
            length = min(lengths[turn % len(lengths)], len(queue))
            turn += 1
            first = queue.pop(0)
            last_at = next((i for i, s in enumerate(queue) if _tag(s) != _tag(first)), None)
            if last_at is None:  # every remaining sample has the first one's emotion
                break
            last = queue.pop(last_at)
            middle, queue = queue[: length - 2], queue[length - 2:]
            dialogues.append([first, *middle, last])
    return dialogues


def _tag(sample: dict[str, Any]) -> str:
    return sample["ieat"]["emotion"]["tag"]
