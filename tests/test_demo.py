import json

import pytest
from rich.console import Console

from emoslm.demo import run_demo
from emoslm.dialogues import read_dialogues
from emoslm.perception.labels import TAGS


@pytest.mark.slow
def test_demo_runs_a_dialogue_per_language_end_to_end(tmp_path, small_recogniser, monkeypatch):
    monkeypatch.setenv("EMOSLM_HOME", str(small_recogniser[0]))
    console = Console(file=open(tmp_path / "log.txt", "w"), width=120)
    results = run_demo("auto", ["en", "zh"], limit=1, out=tmp_path, console=console)
    assert {r.lang for r in results} == {"en", "zh"}
    assert all(r.reply for r in results)
    assert all(r.detected in TAGS and r.voice_says in TAGS for r in results)
    en = [r for r in results if r.lang == "en"]
    assert sum(r.error_rate for r in en) / len(en) <= 0.15
    answered = read_dialogues(tmp_path / "responses_en.jsonl")
    assert answered[0].turns[-1].response_text == en[-1].reply
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["en"]["turns"] == len(en) and summary["zh"]["llm_tokens_per_s"] > 0
    assert "gold emotion" in (tmp_path / "log.txt").read_text()
    assert 0 <= summary["en"]["emotion_accuracy"] <= 1
