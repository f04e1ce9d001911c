"""The committed empathetic-dialogue corpus (``corpora/empathy``): read, check, decontaminate, render.

Each line is one dialogue in one language: the user's turns with the emotion their voice carries, the
cause the assistant reasons out (the continuation of IEAT's injected think opening) and the spoken reply.
It teaches the reply model what issue 32 found missing: speak *to* the user, name the concrete cause from
what they said (earlier turns included), answer a "how did my feelings change" question with the path and
what moved it, and stay short. Rendering uses the same think opening, system prompt and chat template the
agents run with (``emoslm.think``), so the adapter is trained on exactly the text it later continues.

No dialogue may resemble the evaluation dialogues (``examples/dialogues``): ``decontaminate`` drops any whose
user turns come near one of them (MiniLM cosine), and the build records what it dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoslm.emotions import TAGS
from emoslm.errors import DataError
from emoslm.think import THINK_CLOSE, THINK_OPEN, think_opening, trajectory_reply

KINDS = ("trajectory", "why", "empathy")
CORPUS_DIR = Path(__file__).resolve().parents[2] / "corpora" / "empathy"


@dataclass
class CorpusTurn:
    user: str
    emotion: str
    cause: str
    reply: str
    trajectory: bool = False


@dataclass
class CorpusDialogue:
    id: str
    lang: str
    kind: str
    turns: list[CorpusTurn] = field(default_factory=list)

    def path(self, upto: int) -> list[str]:
        return [t.emotion for t in self.turns[: upto + 1]]

    def full_reply(self, index: int) -> str:
        """The spoken reply of turn ``index``: a trajectory answer starts with the path sentence the agent forces."""
        turn = self.turns[index]
        if not turn.trajectory:
            return turn.reply
        opening = trajectory_reply(self.path(index), self.lang)
        return f"{opening}{'' if self.lang == 'zh' else ' '}{turn.reply}"


def parse(obj: Any, where: str) -> CorpusDialogue:
    """One corpus line, checked; ``where`` (file:line) starts every error."""
    if not isinstance(obj, dict) or not isinstance(obj.get("turns"), list) or not obj["turns"]:
        raise DataError(f"{where}: expected an object with a non-empty 'turns' list")
    lang, kind = obj.get("lang"), obj.get("kind")
    if lang not in ("en", "zh") or kind not in KINDS:
        raise DataError(f"{where}: lang must be en or zh and kind one of {', '.join(KINDS)}")
    turns = []
    for k, raw in enumerate(obj["turns"]):
        missing = [key for key in ("user", "emotion", "cause", "reply") if not str(raw.get(key, "")).strip()]
        if missing:
            raise DataError(f"{where}: turn {k + 1} lacks {', '.join(missing)}")
        if raw["emotion"] not in TAGS:
            raise DataError(f"{where}: turn {k + 1} has emotion '{raw['emotion']}'; use one of {', '.join(TAGS)}")
        turns.append(CorpusTurn(raw["user"].strip(), raw["emotion"], raw["cause"].strip(), raw["reply"].strip(),
                                bool(raw.get("trajectory", False))))
    return CorpusDialogue(str(obj.get("id", where)), lang, kind, turns)


def read_corpus(paths: Sequence[Path]) -> list[CorpusDialogue]:
    """Every dialogue of the given JSONL files (or folders of them), ids unique."""
    files = [f for p in paths for f in (sorted(Path(p).glob("*.jsonl")) if Path(p).is_dir() else [Path(p)])]
    dialogues, seen = [], set()
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{file}:{number}: not JSON ({exc.msg})") from None
            dialogue = parse(obj, f"{file}:{number}")
            if dialogue.id in seen:
                raise DataError(f"{file}:{number}: duplicate id '{dialogue.id}'")
            seen.add(dialogue.id)
            dialogues.append(dialogue)
    return dialogues


def decontaminate(dialogues: list[CorpusDialogue], held_out: Sequence[str],
                  embed: Callable[[list[str]], Any], threshold: float = 0.75
                  ) -> tuple[list[CorpusDialogue], list[dict[str, Any]]]:
    """Drop dialogues any of whose user turns is within ``threshold`` (cosine of ``embed``'s unit vectors)
    of a held-out user turn; what was dropped, with its nearest held-out turn, is returned for the record."""
    import numpy as np

    turns = [t.user for d in dialogues for t in d.turns]
    if not turns or not held_out:
        return list(dialogues), []
    near = np.asarray(embed(turns)) @ np.asarray(embed(list(held_out))).T
    kept, dropped, row = [], [], 0
    for dialogue in dialogues:
        block = near[row: row + len(dialogue.turns)]
        row += len(dialogue.turns)
        turn, other = np.unravel_index(int(block.argmax()), block.shape)
        if block[turn, other] >= threshold:
            dropped.append({"id": dialogue.id, "similarity": round(float(block[turn, other]), 3),
                            "turn": dialogue.turns[turn].user, "near": held_out[other]})
        else:
            kept.append(dialogue)
    return kept, dropped


@dataclass
class Sample:
    """One training sample: ``prompt`` is context only (no loss), ``target`` is what the model learns to write."""

    key: str
    lang: str
    prompt: str
    target: str


def render_samples(dialogue: CorpusDialogue, render: Callable[[list[dict[str, str]]], str],
                   system: str, end: str, history_turns: int = 3) -> list[Sample]:
    """A sample per turn, exactly as the agents prompt: system, the last ``history_turns`` exchanges (replies
    only; thinks are never kept), the user's turn, then the assistant's think opened with the injected opening.
    The target continues it: the cause, the closed think, the reply and the template's end token."""
    samples, history = [], []
    for index, turn in enumerate(dialogue.turns):
        path = dialogue.path(index) if turn.trajectory else None
        opening = think_opening(turn.emotion, dialogue.lang, None, path)
        messages = [{"role": "system", "content": system}, *history[-2 * history_turns:],
                    {"role": "user", "content": turn.user}]
        reply = dialogue.full_reply(index)
        space = "" if dialogue.lang == "zh" else " "
        samples.append(Sample(f"{dialogue.id}/{index + 1}", dialogue.lang,
                              f"{render(messages)}{THINK_OPEN}\n{opening}",
                              f"{space}{turn.cause}{THINK_CLOSE}\n{reply}{end}"))
        history += [{"role": "user", "content": turn.user}, {"role": "assistant", "content": reply}]
    return samples
