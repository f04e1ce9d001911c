"""HumDial Track 1 dialogue files (JSONL, one dialogue per line), read strictly and written atomically.

Reading reports a malformed line by file and line number, so a user with a 900-dialogue test set
fixes the one bad line instead of guessing. The aliases ``input_text`` / ``input_emotion`` used by
HumDial-EIBench are accepted and written back in the canonical names.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emoslm.atomic import atomic_file
from emoslm.emotions import TAGS
from emoslm.errors import DataError
from emoslm.jsonl import json_lines

TASK_IN_ID = re.compile(r"(?:^|_)(?:T|task)([123])(?:_|$)", re.IGNORECASE)
CJK = re.compile(r"[\u4e00-\u9fff]")


@dataclass
class Turn:
    turn_id: int
    text: str
    emotion: str
    split_audio_file: str = ""
    response_text: str = ""
    response_audio: str = ""


@dataclass
class Dialogue:
    dialogue_id: str
    turns: list[Turn] = field(default_factory=list)

    @property
    def task(self) -> str | None:
        """``T1``/``T2``/``T3`` when the id says so (``en_T1_01``, ``task2_4_en_0002``), else None."""
        match = TASK_IN_ID.search(self.dialogue_id)
        return f"T{match.group(1)}" if match else None

    @property
    def lang(self) -> str:
        """Language from the id (``_en_``/``zh_``) or, failing that, from the user's text."""
        for lang in ("zh", "en"):
            if re.search(rf"(?:^|_){lang}(?:_|$)", self.dialogue_id):
                return lang
        return "zh" if any(CJK.search(t.text) for t in self.turns) else "en"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_dialogue(obj: Any, where: str) -> Dialogue:
    """Validate one decoded JSON object; ``where`` (file:line) prefixes every error."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with 'dialogue_id' and 'turns'")
    if "dialogue_id" not in obj or not isinstance(obj.get("turns"), list) or not obj["turns"]:
        raise DataError(f"{where}: a dialogue needs 'dialogue_id' and a non-empty 'turns' list")
    turns = []
    for i, raw in enumerate(obj["turns"], 1):
        if not isinstance(raw, dict):
            raise DataError(f"{where}: turn {i} is not an object")
        text = raw.get("text", raw.get("input_text"))
        emotion = raw.get("emotion", raw.get("input_emotion", ""))
        if not isinstance(text, str):
            raise DataError(f"{where}: turn {i} has no 'text' (or 'input_text')")
        if emotion and emotion not in TAGS:
            raise DataError(f"{where}: turn {i} has emotion '{emotion}'; use one of {', '.join(TAGS)}")
        turns.append(
            Turn(
                turn_id=int(raw.get("turn_id", i)),
                text=text,
                emotion=emotion or "",
                split_audio_file=str(raw.get("split_audio_file") or ""),
                response_text=str(raw.get("response_text") or ""),
                response_audio=str(raw.get("response_audio") or ""),
            )
        )
    return Dialogue(dialogue_id=str(obj["dialogue_id"]), turns=turns)


def read_dialogues(path: str | os.PathLike[str]) -> list[Dialogue]:
    """Read a HumDial JSONL file, or every ``*.jsonl`` in a directory (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise DataError(f"{path}: no .jsonl dialogue files in this directory")
        return [d for f in files for d in read_dialogues(f)]
    if not path.exists():
        raise DataError(f"{path}: no such dialogue file")
    dialogues, seen = [], set()
    for where, obj in json_lines(path, expect="a JSON object with 'dialogue_id' and 'turns'"):
        dialogue = parse_dialogue(obj, where)
        if dialogue.dialogue_id in seen:
            raise DataError(f"{where}: dialogue_id '{dialogue.dialogue_id}' appears twice")
        seen.add(dialogue.dialogue_id)
        dialogues.append(dialogue)
    return dialogues


def write_dialogues(path: str | os.PathLike[str], dialogues: list[Dialogue]) -> Path:
    """Write JSONL atomically (a crash never leaves half a file)."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(d.to_json(), ensure_ascii=False) + "\n" for d in dialogues),
                       encoding="utf-8")
    return path


def examples_dir() -> Path:
    """The example dialogues shipped in the repository (``examples/dialogues``)."""
    return Path(__file__).resolve().parent.parent / "examples" / "dialogues"
