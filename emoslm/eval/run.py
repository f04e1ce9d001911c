"""`emoslm eval humdial`: play (or load) a submission, measure it, judge it, score it, report it.

The steps are separate so each can be rerun on its own results: playing writes the submission,
measuring needs only the submission and its audio, judging needs only the dialogues with their
replies. Judge results are kept per dialogue (``.parts/judge``), so an interrupted evaluation resumes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from emoslm.agents.base import Agent
from emoslm.atomic import atomic_file
from emoslm.audio import load_audio
from emoslm.eval.checks import check_dialogue, minilm_similarity
from emoslm.eval.humdial import Entry, PlayedTurn, answered, ensure_audio, play, read_submission, write_submission
from emoslm.eval.judge import DimensionScores, Judge, find_target_turn
from emoslm.eval.metrics import language_matches, reply_length, trajectory_exact
from emoslm.eval.scoring import TaskScores, aggregate, naturalness_standin, scoreboard, vocal_congruence_standin
from emoslm.progress import Start, silent
from emoslm.textnorm import error_rate


def judged_turn(entry: Entry) -> int | None:
    """The turn the challenge judges: the last for T1/T2, the second non-neutral one for T3."""
    return find_target_turn(entry.dialogue) if entry.task == "T3" else len(entry.dialogue.turns) - 1


def measure(entry: Entry, played: list[PlayedTurn], lang_dir: Path, listeners: dict[str, Any]) -> dict[str, Any]:
    """Objective metrics of one dialogue (no judge)."""
    index = judged_turn(entry)
    row: dict[str, Any] = {"dialogue_id": entry.dialogue.dialogue_id, "task": entry.task, "lang": entry.lang,
                           "judged_turn": None if index is None else entry.dialogue.turns[index].turn_id,
                           "language_match_all": all(language_matches(t.response_text, entry.lang) for t in played),
                           "think_leaked": any(t.think_leaked for t in played),
                           "reply_tokens": [reply_length(t.response_text) for t in played],
                           "latency": [{"first_audio_s": t.first_audio_s, "total_s": t.total_s,
                                        "rtf": round(t.total_s / t.reply_audio_s, 3) if t.reply_audio_s else None}
                                       for t in played if t.total_s]}
    verdicts = check_dialogue([t.response_text for t in played], entry.lang,
                              [t.detected_emotion for t in played], entry.task, listeners.get("similarity"))
    row["reply_checks"] = [v.problems for v in verdicts]  # per turn: the cheap checks that failed
    if index is None:
        return row
    target = played[index]
    row["language_match"] = language_matches(target.response_text, entry.lang)
    if entry.task == "T1":
        row["trajectory"] = trajectory_exact(target.response_text, [t.emotion for t in entry.dialogue.turns],
                                             entry.lang)
    if entry.task == "T3" and target.response_audio:
        audio = load_audio(lang_dir / target.response_audio)
        heard = listeners["asr"].transcribe(audio, entry.lang)
        voice = listeners["recognizer"].estimate(audio).tag  # acoustic only: how the reply *sounds*
        user_tag = entry.dialogue.turns[index].emotion
        row.update(speech_error_rate=round(error_rate(target.response_text, heard.text), 4), reply_voice=voice,
                   d2_standin=vocal_congruence_standin(user_tag, voice),
                   d3_standin=naturalness_standin(error_rate(target.response_text, heard.text)))
    return row


def judge_all(judge: Judge, entries: list[Entry], results: dict[str, list[PlayedTurn]], out: Path,
              progress: Start = silent) -> dict[str, DimensionScores]:
    parts = out / ".parts" / "judge"
    judged: dict[str, DimensionScores] = {}
    advance = progress("judging", len(entries))
    for entry in entries:
        key = entry.dialogue.dialogue_id
        part = parts / f"{key}.json"
        if part.exists():
            judged[key] = DimensionScores(**json.loads(part.read_text()))
        else:
            audio = None
            index = judged_turn(entry)
            played = results[key]
            if entry.task == "T3" and index is not None and played[index].response_audio:
                audio = load_audio(out / "submission" / entry.lang / played[index].response_audio)
            scores = judge.score(entry.task, answered(entry, played), audio)
            if scores is not None:
                with atomic_file(part) as tmp:
                    tmp.write_text(json.dumps(asdict(scores), ensure_ascii=False))
                judged[key] = scores
        advance()
    return judged


def evaluate(out: Path, judge: Judge | None, agent: Agent | None = None, entries: list[Entry] | None = None,
             submission: Path | None = None, progress: Start = silent, voice: bool = False) -> dict[str, Any]:
    """Run an agent over ``entries`` (or load ``submission``), then measure, judge, score and report."""
    from emoslm.eval.report import write_report
    from emoslm.perception.asr import ASRPool
    from emoslm.perception.recognizer import EmotionRecognizer

    out.mkdir(parents=True, exist_ok=True)
    if submission is not None:
        loaded = list(read_submission(submission))
        entries = [e for e, _ in loaded]
        results = {e.dialogue.dialogue_id: p for e, p in loaded}
        lang_root = submission
    else:
        assert agent is not None and entries is not None
        entries = ensure_audio(entries, out / "voices", voice)
        results = play(agent, entries, out, progress)
        lang_root = write_submission(out, entries, results)
    listeners = {"asr": ASRPool(), "recognizer": EmotionRecognizer(), "similarity": minilm_similarity()}
    metrics = [measure(e, results[e.dialogue.dialogue_id], lang_root / e.lang, listeners) for e in entries]
    judged = judge_all(judge, entries, results, out, progress) if judge else {}
    tasks = score_tasks(entries, metrics, judged, judge)
    board = scoreboard(tasks)
    summary = {"dialogues": len(entries), "judge": judge.spec if judge else None,
               "judge_hears_audio": bool(judge and judge.hears_audio), "judge_samples": judge.samples if judge else 0,
               "tasks": [{**asdict(t), "overall": t.overall} for t in tasks], "scoreboard": board}
    _write_json(out / "scores.json", summary)
    _write_json(out / "metrics.json", metrics)
    write_report(out, summary, metrics)
    return summary


def score_tasks(entries: list[Entry], metrics: list[dict[str, Any]], judged: dict[str, DimensionScores],
                judge: Judge | None) -> list[TaskScores]:
    tasks = []
    for lang, task in sorted({(e.lang, e.task) for e in entries}):
        ids = [e.dialogue.dialogue_id for e in entries if e.lang == lang and e.task == task]
        rows = [m for m in metrics if m["dialogue_id"] in ids]
        standins = {}
        if task == "T3":
            standins = {"d2_vocal_congruence": [m["d2_standin"] for m in rows if "d2_standin" in m],
                        "d3_audio_naturalness": [m["d3_standin"] for m in rows if "d3_standin" in m]}
        mismatched = {m["dialogue_id"] for m in rows if m.get("language_match") is False}
        scored = [language_rule(judged[i], judge) if i in mismatched else judged[i] for i in ids if i in judged]
        tasks.append(aggregate(task, lang, scored, len(ids), judge.spec if judge else "none", standins))
    return tasks


def language_rule(scores: DimensionScores, judge: Judge) -> DimensionScores:
    """The challenge's rule: a reply in another language than the user's gets the minimum, 1, everywhere."""
    return replace(scores, means={d: 1.0 for d in judge.dimensions(scores.task)},
                   spreads={d: 0.0 for d in judge.dimensions(scores.task)})


def _write_json(path: Path, obj: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
