"""Play HumDial Track 1 dialogues through an Agent and write the submission the challenge accepts.

Each dialogue is played turn by turn, as the challenge plays it: the user's recorded turn goes in,
the agent's reply comes out, and the agent's own earlier replies (never its think) are the history.
Every turn gets a ``response_text`` (think stripped), T3 turns also a ``response_audio``. The layout::

    submission/{zh,en}/HD-Track1-T{1,2,3}.jsonl
    submission/{zh,en}/HD-Track1-T3/{dialogue_id}_{turn_id}_response.wav

Dialogues are finished one at a time into part files, so a long evaluation resumes after a crash.
Dialogues given as text only (the examples) are voiced first, as the demo does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from emoslm.agents import Agent, Conversation
from emoslm.atomic import atomic_file
from emoslm.audio import SAMPLE_RATE, load_audio, save_audio
from emoslm.dialogues import Dialogue, read_dialogues, write_dialogues
from emoslm.errors import DataError
from emoslm.eval.metrics import think_leaked
from emoslm.progress import Start, silent
from emoslm.think import strip_think

TASKS = ("T1", "T2", "T3")
FILE_TASK = re.compile(r"(?:HD-Track1-|^)T([123])$|^task([234])(?:_\d)?$", re.IGNORECASE)


def task_file(task: str) -> str:
    return f"HD-Track1-{task}"


@dataclass
class Entry:
    """One dialogue to evaluate: its task, language and where its audio paths are relative to."""

    task: str
    dialogue: Dialogue
    audio_root: Path

    @property
    def lang(self) -> str:
        return self.dialogue.lang


def _task_from_file(path: Path) -> str | None:
    match = FILE_TASK.search(path.stem)
    if not match:
        return None
    if match.group(1):
        return f"T{match.group(1)}"
    return f"T{int(match.group(2)) - 1}"  # the train set's old numbering: task2 = trajectory, task3 = reasoning


def _lang_from_path(path: Path) -> str | None:
    return next((part for part in reversed(path.parts[:-1]) if part in ("zh", "en")), None)


def load_entries(data: Path) -> list[Entry]:
    """Every dialogue in a HumDial file or folder (recursively), with its task from the id or the file name."""
    files = sorted(data.rglob("*.jsonl")) if data.is_dir() else [data]
    if data.is_dir() and not files:
        raise DataError(f"{data}: no .jsonl dialogue files in this folder")
    entries = []
    for file in files:
        for dialogue in read_dialogues(file):
            task = dialogue.task or _task_from_file(file)
            if task not in TASKS:
                raise DataError(f"{file}: cannot tell the task of '{dialogue.dialogue_id}'; put T1/T2/T3 in its id "
                                "or name the file HD-Track1-T1.jsonl (T2, T3)")
            lang = _lang_from_path(file)
            if lang and dialogue.lang != lang and not re.search(r"(?:^|_)(zh|en)(?:_|$)", dialogue.dialogue_id):
                dialogue = replace(dialogue, dialogue_id=f"{lang}_{dialogue.dialogue_id}")
            entries.append(Entry(task, dialogue, file.parent))
    return entries


def ensure_audio(entries: list[Entry], voices: Path, voice: bool = False) -> list[Entry]:
    """Check every turn's audio exists, or (``voice``) speak the user turns with TTS instead, as the
    demo does for the text-only examples; turns without any audio path are always voiced."""
    from emoslm.voicing import voice_dialogues

    if not voice:
        for entry in entries:
            for turn in entry.dialogue.turns:
                if turn.split_audio_file and not (entry.audio_root / turn.split_audio_file).exists():
                    raise DataError(f"{entry.dialogue.dialogue_id} turn {turn.turn_id}: audio file "
                                    f"{entry.audio_root / turn.split_audio_file} does not exist "
                                    "(use --voice to speak text-only dialogues with TTS)")
    textual = [e for e in entries if voice or not all(t.split_audio_file for t in e.dialogue.turns)]
    if textual:
        voiced = {d.dialogue_id: d for d in voice_dialogues([e.dialogue for e in textual], voices)}
        entries = [replace(e, dialogue=voiced[e.dialogue.dialogue_id], audio_root=voices)
                   if e.dialogue.dialogue_id in voiced else e for e in entries]
    return entries


@dataclass
class PlayedTurn:
    """What the runner measured for one turn (the objective metrics use it; the judge does not)."""

    turn_id: int
    response_text: str
    think: str = ""
    think_leaked: bool = False
    response_audio: str = ""  # relative to the language folder of the submission
    user_audio_s: float = 0.0
    reply_audio_s: float = 0.0
    first_audio_s: float | None = None
    total_s: float = 0.0
    detected_emotion: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def play_entry(agent: Agent, entry: Entry, lang_dir: Path) -> list[PlayedTurn]:
    """Run one dialogue through ``agent`` in a Conversation; T3 reply audio goes to ``lang_dir/HD-Track1-T3/``."""
    conversation = Conversation(agent, entry.lang)
    played = []
    for turn in entry.dialogue.turns:
        audio = load_audio(entry.audio_root / turn.split_audio_file)
        reply = conversation.respond(audio)
        record = PlayedTurn(turn.turn_id, strip_think(reply.text), reply.think, think_leaked(reply.text),
                            user_audio_s=round(len(audio) / SAMPLE_RATE, 3),
                            first_audio_s=_round(reply.timings.get("first_audio")),
                            total_s=round(reply.timings.get("total", 0.0), 3), timings=reply.timings,
                            detected_emotion=reply.perceived or "")
        if entry.task == "T3" and reply.audio is not None:
            rel = f"{task_file('T3')}/{entry.dialogue.dialogue_id}_{turn.turn_id}_response.wav"
            save_audio(lang_dir / rel, reply.audio, reply.sample_rate)
            record.response_audio, record.reply_audio_s = rel, round(len(reply.audio) / reply.sample_rate, 3)
        played.append(record)
    return played


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def play(agent: Agent, entries: list[Entry], out: Path, progress: Start = silent) -> dict[str, list[PlayedTurn]]:
    """Play every entry (resuming finished ones from ``out/.parts``); returns the turns per dialogue id."""
    parts = out / ".parts"
    results: dict[str, list[PlayedTurn]] = {}
    advance = progress("playing dialogues", len(entries))
    for entry in entries:
        part = parts / f"{entry.dialogue.dialogue_id}.json"
        if part.exists():
            results[entry.dialogue.dialogue_id] = [PlayedTurn(**t) for t in json.loads(part.read_text())]
        else:
            played = play_entry(agent, entry, out / "submission" / entry.lang)
            with atomic_file(part) as tmp:
                tmp.write_text(json.dumps([asdict(t) for t in played], ensure_ascii=False))
            results[entry.dialogue.dialogue_id] = played
        advance()
    return results


def answered(entry: Entry, played: list[PlayedTurn]) -> Dialogue:
    """The dialogue with ``response_text`` (and T3 ``response_audio``) filled in, audio paths as given."""
    by_id = {t.turn_id: t for t in played}
    turns = [replace(t, response_text=by_id[t.turn_id].response_text, response_audio=by_id[t.turn_id].response_audio)
             for t in entry.dialogue.turns]
    return replace(entry.dialogue, turns=turns)


def write_submission(out: Path, entries: list[Entry], results: dict[str, list[PlayedTurn]]) -> Path:
    """``out/submission/{lang}/HD-Track1-T{n}.jsonl`` for every language and task present."""
    root = out / "submission"
    for lang, task in sorted({(e.lang, e.task) for e in entries}):
        dialogues = [answered(e, results[e.dialogue.dialogue_id]) for e in entries
                     if e.lang == lang and e.task == task]
        write_dialogues(root / lang / f"{task_file(task)}.jsonl", dialogues)
    return root


def read_submission(root: Path) -> Iterator[tuple[Entry, list[PlayedTurn]]]:
    """An existing submission (ours or a peer's) as entries, with what can be known without timings."""
    found = sorted(root.glob("*/HD-Track1-T[123].jsonl"))
    if not found:
        raise DataError(f"{root}: no {{zh,en}}/HD-Track1-T{{1,2,3}}.jsonl files; is this a submission folder?")
    for entry in [e for f in found for e in load_entries(f)]:
        played = []
        for t in entry.dialogue.turns:
            reply_s = 0.0
            if t.response_audio:
                path = entry.audio_root / t.response_audio
                if not path.exists():
                    raise DataError(f"{entry.dialogue.dialogue_id} turn {t.turn_id}: response_audio {path} is missing")
                reply_s = round(len(load_audio(path)) / SAMPLE_RATE, 3)
            played.append(PlayedTurn(t.turn_id, strip_think(t.response_text),
                                     think_leaked=think_leaked(t.response_text), response_audio=t.response_audio,
                                     reply_audio_s=reply_s))
        yield entry, played
