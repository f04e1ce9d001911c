import json

import pytest
from rich.console import Console

from emoslm.demo import pick_dialogues, run_demo
from emoslm.dialogues import examples_dir, read_dialogues
from emoslm.emotions import TAGS


def test_pick_dialogues_takes_tasks_in_turn():
    picked = pick_dialogues(read_dialogues(examples_dir()), ["en", "zh"], 3)
    assert [(d.lang, d.task) for d in picked] == [("en", "T1"), ("en", "T2"), ("en", "T3"),
                                                  ("zh", "T1"), ("zh", "T2"), ("zh", "T3")]
    assert len(pick_dialogues(read_dialogues(examples_dir()), ["en"], 0)) == 12


@pytest.mark.slow
def test_demo_runs_the_teacher_per_language_end_to_end(tmp_path, recogniser_home, monkeypatch):
    monkeypatch.setenv("EMOSLM_HOME", str(recogniser_home))
    console = Console(file=open(tmp_path / "log.txt", "w"), width=120)
    results = run_demo("auto", ["en", "zh"], limit=1, out=tmp_path, console=console, ieat_limit=2)
    assert {r.lang for r in results} == {"en", "zh"}
    assert all(r.reply for r in results)
    assert all(r.detected in TAGS and r.voice_says in TAGS for r in results)
    assert all(r.detected in r.think for r in results)  # the injected think names the detected emotion
    assert all((tmp_path / "replies").exists() and r.reply_audio for r in results)
    en = [r for r in results if r.lang == "en"]
    assert sum(r.error_rate for r in en) / len(en) <= 0.15
    zh = [r for r in results if r.lang == "zh"]
    assert sum(r.error_rate for r in zh) / len(zh) <= 0.25  # Kokoro's Mandarin (espeak-ng's gave ~70 %)
    answered = read_dialogues(tmp_path / "responses_en.jsonl")
    assert answered[0].turns[-1].response_text == en[-1].reply
    assert answered[0].turns[-1].response_audio == en[-1].reply_audio
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["en"]["turns"] == len(en) and summary["zh"]["mean_seconds"]["think"] > 0
    assert 0 < summary["en"]["mean_seconds"]["first_audio"] < summary["en"]["mean_seconds"]["total"]
    assert 0 <= summary["en"]["emotion_accuracy"] <= 1
    assert (tmp_path / "trajectory.png").read_bytes()[:4] == b"\x89PNG"
    log = (tmp_path / "log.txt").read_text()
    assert "gold emotion" in log and "think :" in log and "IEAT data" in log
    ieat = json.loads((tmp_path / "ieat" / "summary.json").read_text())
    assert ieat["items"] == 2 and ieat["stage1_1"] >= 1


def test_demo_in_english_says_each_phase_and_its_time(tmp_path, recogniser_home, monkeypatch):
    """The main job end to end in the fast tier: one English dialogue (3 turns), no IEAT build."""
    monkeypatch.setenv("EMOSLM_HOME", str(recogniser_home))
    console = Console(file=open(tmp_path / "log.txt", "w"), width=160)
    results = run_demo("auto", ["en"], limit=1, out=tmp_path, console=console, ieat_limit=0)
    assert len(results) == 3 and all(r.reply and r.reply_audio for r in results)
    phases = json.loads((tmp_path / "phases.json").read_text())
    assert list(phases["phases_s"]) == ["voicing the example dialogues", "emotion recogniser",
                                        "loading the teacher agent", "playing 1 dialogues (3 turns)"]
    assert phases["total_s"] >= sum(phases["phases_s"].values())
    log = (tmp_path / "log.txt").read_text()
    assert sum(line.startswith("✓ ") for line in log.splitlines()) == 4  # one line per phase
    assert "demo finished in" in log and "dialogue 1/1" in log
