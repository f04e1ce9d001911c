"""The learning run's data (chat + corpus turns voiced, the LLM's own replies), its steps and its report."""

from __future__ import annotations

import json
from collections import Counter

import pytest

pytest.importorskip("torch")

from emoslm.emotions import TAGS  # noqa: E402
from emoslm.train import learn_data  # noqa: E402


def test_held_out_texts_are_spoken_only_by_held_out_voices_and_every_voice_acts_every_emotion():
    from emoslm.perception.corpus import VOICES

    texts = [(f"t{i}", f"text {i}", "") for i in range(400)]
    clips = learn_data.plan_clips(texts, voices_per_text=1)
    test_voices = {v.name for v in VOICES if v.lang == "en" and v.split == "test"}
    for clip in clips:
        assert (clip.voice in test_voices) == learn_data.held(clip.script_id)
    held = [c for c in clips if learn_data.held(c.script_id)]
    assert len(held) == 4 * len({c.script_id for c in held})  # every held-out voice says every held-out text
    trained = Counter((c.voice, c.emotion) for c in clips if not learn_data.held(c.script_id))
    train_voices = {v.name for v in VOICES if v.lang == "en" and v.split == "train"}
    assert {v for v, _ in trained} == train_voices and {e for _, e in trained} == set(TAGS)
    assert min(trained.values()) >= 0.5 * max(trained.values())  # voices × emotions about evenly
    fixed = learn_data.plan_clips([("k", "I lost my keys.", "sad")], voices_per_text=3)
    assert {c.emotion for c in fixed} == {"sad"} and len({c.voice for c in fixed}) == len(fixed)


def test_chat_turns_never_include_the_hearing_evaluation_s():
    from emoslm.train.hearing import chitchat_plan

    used = {text for _, text in learn_data.chat_turns(480)}
    assert len(used) > 400 and not used & {clip.text for clip in chitchat_plan()}


def test_the_build_voices_turns_and_writes_own_replies_and_corpus_targets(tmp_path):
    counts = learn_data.build(tmp_path, chat=3, voices_per_turn=1, corpus_limit=4)
    s11 = [json.loads(line) for line in (tmp_path / "stage1_1.jsonl").read_text().splitlines()]
    s12 = [json.loads(line) for line in (tmp_path / "stage1_2.jsonl").read_text().splitlines()]
    assert counts["clips"] == len(s11) and all((tmp_path / r["audio"]).stat().st_size > 1000 for r in s11)
    own = {r["key"]: r["reply"] for r in map(json.loads, (tmp_path / "own.jsonl").read_text().splitlines())}
    for row in s11:  # self-distillation: the LLM's reply to the words, or (a seeded share) the words themselves
        key = row["provenance"]["text"]
        expected = row["transcript"] if learn_data.says_words(key) or not own[key] else own[key]
        assert row["response"] == expected and row["provenance"]["acted_emotion"] in TAGS
    assert any(r["response"] != r["transcript"] for r in s11)
    corpus = {t["key"]: t for t in learn_data.corpus_turns()[:4]}
    assert {r["provenance"]["members"][0].split(".")[1] for r in s12} <= set(corpus)
    for row in s12:  # the think opens with the acted emotion and gives the corpus's cause; the reply is the corpus's
        turn = corpus[row["id"].split(".")[1]]
        assert f"the emotion I hear is {row['emotion']}." in row["think"] and row["think"] == turn["think"]
        assert row["response"] == turn["reply"] and row["turns"][-2]["audio"].startswith("audio/")
    lines = (tmp_path / "own.jsonl").read_text()
    learn_data.build(tmp_path, chat=3, voices_per_turn=1, corpus_limit=4)  # resumes: nothing rewritten
    assert (tmp_path / "own.jsonl").read_text() == lines


def test_replies_that_ignore_the_words_and_third_person_replies_are_counted():
    from emoslm.eval.learning import mismatched, third_person
    from emoslm.train.data import Example

    examples = [Example(f"c{i}", f"c{i}", None, target, teacher_reply=f"reply {i}")
                for i, target in enumerate(["a", "a", "b", "c"])]
    assert mismatched(examples) == ["reply 2", "reply 2", "reply 3", "reply 0"]  # never the same words
    assert third_person("I think the user is sad.") and third_person("The user's day was long")
    assert not third_person("You sound sad, and that makes sense.")


def test_distinct_2_per_voice_does_not_count_a_text_said_by_every_voice_as_repetition():
    from emoslm.eval.learning import per_voice_distinct
    from emoslm.train.data import Example

    examples = [Example(f"{v}{t}", f"t{t}", None, "x", voice=v) for v in "ab" for t in range(2)]
    different = ["you lost your job today", "the cat came home safe"] * 2  # each voice: two different answers
    assert per_voice_distinct(examples, different) == 1.0
    assert per_voice_distinct(examples, ["that sounds hard for you"] * 4) == 0.5  # alike within a voice


def test_the_report_puts_the_targets_beside_the_measurements(tmp_path):
    from emoslm.eval.learning_report import write_report

    model = {"reply_relevance": 0.41, "relevance_other_clip": 0.22, "distinct_2": 0.6, "reply_repeats_think": 0.0,
             "third_person": 0.1, "think_vs_acted": 0.4, "distinct_2_per_voice": 0.7,
             "teacher_distinct_2_per_voice": 0.9, "samples": [
                 {"voice": "flite-awb", "acted": "sad", "words": "I lost my job.", "reply": "That is hard.",
                  "teacher": "Losing your job hurts."}]}
    (tmp_path / "replies.json").write_text(json.dumps({"clips": 8, "texts": 2, "voices": ["flite-awb"],
                                                       "models": {"stage 1-1": model, "stage 1-2": model}}))
    (tmp_path / "hearing").mkdir()
    (tmp_path / "hearing" / "hearing-think.json").write_text(json.dumps({"sets": {"same": {
        "title": "same sentence", "clips": 7, "think": 0.4, "recogniser_fused": 0.3, "recogniser_acoustic": 0.3,
        "encoder_head": None, "commonest": 0.14}}}))
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "timings.jsonl").write_text('{"step": "build", "seconds": 600}\n{"step": "1-1", "seconds": 1200}\n')
    text = write_report(runs, tmp_path).read_text()
    assert "total 30.0 min" in text and "| stage 1-2 | **0.410** | 0.220 | 0.600 | 0.700 |" in text
    assert "the teacher's own replies score 0.900" in text
    assert "\"I lost my job.\"" in text and "| same sentence | 7 | **0.400** |" in text
    assert (tmp_path / "replies.png").stat().st_size > 1000


LEARN_RECIPE = """
name: learn-test
seed: 0
train:
  data: build
  out: runs
  llm: smollm2-135m-instruct
  encoder: whisper-tiny.en
  adapter_dim: 64
  encoder_mix: true
  emotion_head: true
  emotion_prosody: true
  emotion_frame_dropout: 1.0
  emotion_lr: 1.0e-2
  inject_emotion: true
  batch_size: 2
  held_out: 0.3
  held_out_voices: ["espeak-en-us-f3", "flite-awb", "flite-slt", "kokoro-en-jf-nezumi"]
  save_every: 2
  stages:
    "1-1": {max_steps: 3, lr: 1.0e-3}
    "1-2": {max_steps: 3, lr: 1.0e-4, lora_lr: 2.0e-5, listen_clips: 2}
"""


@pytest.mark.slow
def test_make_learn_runs_every_step_once_and_reports_them(tmp_path):
    from emoslm.eval.learning import STEPS, learn, sweep

    recipe = tmp_path / "learn.yaml"
    recipe.write_text(LEARN_RECIPE)
    out = tmp_path / "report"
    spent = learn(recipe, out, chat=30, voices=1, corpus_limit=6, per_set=2, encoder_head=False)
    assert list(spent) == list(STEPS) and all(seconds > 0 for seconds in spent.values())
    replies = json.loads((out / "replies.json").read_text())
    assert list(replies["models"]) == ["untrained adapter", "stage 1-1", "stage 1-2"] and replies["clips"] >= 1
    for scored in replies["models"].values():
        assert 0 <= scored["distinct_2"] <= 1 and -1 <= scored["reply_relevance"] <= 1
        assert scored["relevance_other_clip"] is not None and scored["samples"]
    text = (out / "report.md").read_text()
    assert "## Replies" in text and "## Hearing" in text and "Minutes per step" in text
    assert (out / "probes-build.md").exists() and (out / "hearing" / "hearing-think.json").exists()
    lines = (tmp_path / "runs" / "timings.jsonl").read_text()
    learn(recipe, out, chat=30, voices=1, corpus_limit=6, per_set=2, encoder_head=False)  # all done: nothing reruns
    assert (tmp_path / "runs" / "timings.jsonl").read_text() == lines

    result = sweep(recipe, out, [2e-5, 1e-3], steps=2, clips=2)
    assert [r["lora_lr"] for r in result["rows"]] == [2e-5, 1e-3] and all(r["steps"] == 2 for r in result["rows"])
    assert "| 2e-05 |" in (out / "sweep.md").read_text()
