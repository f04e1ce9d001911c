"""Evaluation harness: target turns, judge parsing, metrics, scores, AQA, submissions, and a real run."""

from __future__ import annotations

import json

import pytest

from emoslm.dialogues import Dialogue, Turn, read_dialogues
from emoslm.errors import DataError
from emoslm.eval.humdial import Entry, PlayedTurn, ensure_audio, load_entries, read_submission, write_submission
from emoslm.eval.judge import DIMENSIONS, Judge, find_target_turn, history_lines, parse_judgement, snap_135
from emoslm.eval.metrics import trajectory_exact
from emoslm.eval.scoring import TaskScores, final_score, naturalness_standin, vocal_congruence_standin
from emoslm.eval.televal import aqa_score, exist_match, write_predictions


def dialogue(emotions: list[str], dialogue_id: str = "en_T3_01", replies: list[str] | None = None) -> Dialogue:
    replies = replies or [f"reply {i}" for i in range(len(emotions))]
    return Dialogue(dialogue_id, [Turn(i + 1, f"user says {i}", e, response_text=r)
                                  for i, (e, r) in enumerate(zip(emotions, replies, strict=True))])


def test_target_turn_is_the_second_non_neutral_one():
    assert find_target_turn(dialogue(["neutral", "sad", "neutral", "anger", "happy"])) == 3
    assert find_target_turn(dialogue(["sad", "sad"])) == 1
    assert find_target_turn(dialogue(["neutral", "happy", "neutral"])) is None


def test_snap_to_1_3_5():
    assert [snap_135(v) for v in (0, 1, 2, 3, 4, 5, 7)] == [1, 1, 1, 3, 3, 5, 5]


@pytest.mark.parametrize("text", [
    '```json\n{"scores": {"accuracy_completeness": 4, "depth_granularity": "2", "added_value": 5}}\n```',
    '<think>hmm</think>{"scores": {"accuracy_completeness": 4, "depth_granularity": 2.0, "added_value": 5},',
    'Sure! {"scores": {"accuracy_completeness": 4, "depth_granularity": 1, "added_value": 5,}}',
])
def test_judge_replies_that_are_fenced_truncated_or_sloppy_still_parse(text):
    judgement = parse_judgement(text, DIMENSIONS["T1"], "135")
    assert judgement.scores == {"accuracy_completeness": 3, "depth_granularity": 1, "added_value": 5}


@pytest.mark.parametrize("text, error", [
    ("I would give it a five.", "no JSON object"),
    ('{"scores": [5, 5, 5]}', "not an object"),
    ('{"scores": {"accuracy_completeness": "excellent", "depth_granularity": 3, "added_value": 3}}', "not a number"),
    ('{"scores": {"accuracy_completeness": 5}}', "depth_granularity"),
    ('{"scores": {"accuracy_completeness": true, "depth_granularity": 3, "added_value": 3}}', "not a number"),
])
def test_malformed_judge_output_is_a_recorded_failure(text, error):
    judgement = parse_judgement(text, DIMENSIONS["T1"], "135")
    assert judgement.scores is None and error in judgement.error and judgement.raw == text


def test_t3_scores_are_clamped_to_1_5():
    judgement = parse_judgement('{"scores": {"d1_text_empathy": 9}}', DIMENSIONS["T3"], "1-5")
    assert judgement.scores == {"d1_text_empathy": 5}


def test_judge_context_strips_think_and_hides_the_judged_reply():
    d = dialogue(["sad", "anger", "neutral"], replies=["<think>secret</think>I hear you.", "Oh no.", "final"])
    lines = history_lines(d, 1, include_last_reply=False)
    assert "secret" not in lines and "I hear you." in lines and "Oh no." not in lines
    assert "User (emotion: anger): user says 1" in lines


def test_the_judged_question_shows_its_emotion_tag_too():
    from emoslm.eval.judge import Judge

    d = dialogue(["sad", "anger", "neutral"], replies=["I hear you.", "Oh no.", "You went from sad to anger."])
    prompt = Judge(llm=object()).prompt("T1", d, 2)
    assert "(emotion: neutral) user says 2" in prompt and "User (emotion: anger): user says 1" in prompt


def test_trajectory_exactness():
    gold = ["anger", "surprise", "neutral"]
    assert trajectory_exact("First anger, then surprise, and finally you were neutral.", gold, "en")["exact"]
    missing = trajectory_exact("You felt anger and then surprise.", gold, "en")
    assert not missing["exact"] and missing["missing"] == ["neutral"]
    invented = trajectory_exact("Anger, surprise, then neutral, with some anxiety.", gold, "en")
    assert not invented["exact"] and invented["other_emotion_words"] == ["anxiety"]
    assert not trajectory_exact("Surprise, then anger, then neutral.", gold, "en")["in_order"]
    assert trajectory_exact("你先是愤怒，然后惊讶，最后平静下来。", gold, "zh")["exact"]
    assert trajectory_exact("sad then neutral", ["sad", "sad", "neutral"], "en")["exact"]  # repeats count once


def test_weighted_final_and_missing_parts():
    def task(name, dims):
        return TaskScores(name, "en", dimensions=dims)
    tasks = {"T1": task("T1", {d: 5.0 for d in DIMENSIONS["T1"]}), "T2": task("T2", {d: 3.0 for d in DIMENSIONS["T2"]}),
             "T3": task("T3", {"d1_text_empathy": 4.0, "d2_vocal_congruence": 2.0, "d3_audio_naturalness": 3.0})}
    final, missing = final_score(tasks)
    assert final == pytest.approx(0.2 * 5 + 0.2 * 3 + 0.1 * 4 + 0.25 * 2 + 0.25 * 3) and not missing
    del tasks["T2"]
    assert final_score(tasks) == (None, ["T2"])


def test_standins():
    assert vocal_congruence_standin("sad", "neutral") == 4
    assert vocal_congruence_standin("sad", "happy") == 1
    assert naturalness_standin(0.0) == 3 and naturalness_standin(0.5) == 1


def test_aqa_exact_match_on_hand_made_cases():
    assert exist_match("The capital of France is Paris.", ["paris"]) == 1
    assert exist_match("It is Lyon.", ["Paris", "paris city"]) == 0
    assert exist_match("Albert Einstein!", ["einstein"]) == 1
    assert exist_match("Einsteinium is an element", ["einstein"]) == 0  # whole tokens only
    assert exist_match("I think it's New York City", ["new york"]) == 1
    assert exist_match("York, New", ["new york"]) == 0  # contiguous and in order
    assert exist_match("北京是中国的首都。", ["首都北京", "北京"]) == 1
    assert exist_match("首都是上海", ["北京"]) == 0
    assert exist_match("Café Nero", ["cafe nero"]) == 0 and exist_match("CAFÉ nero", ["café Nero"]) == 1
    assert exist_match("Barack Obama was born in Hawaii", [("obama", "hawaii")]) == 1
    assert exist_match("Barack Obama", [("obama", "hawaii")]) == 0  # a tuple: all parts needed
    assert aqa_score(["Paris", "Rome", "北京"], [["paris"], ["milan"], ["北京"]]) == pytest.approx(200 / 3)


def test_aqa_follows_televal_tokenizer():
    # punctuation is dropped without joining what stands on either side
    assert exist_match("about 1,000 people", ["1 000"]) == 1 and exist_match("about 1,000 people", ["1000"]) == 0
    assert exist_match("the U.S.A. team", ["u s a"]) == 1 and exist_match("the U.S.A. team", ["usa"]) == 0
    assert exist_match("say hello-world now", ["hello world"]) == 1
    assert exist_match("say hello world now", ["hello-world"]) == 1
    # symbols stay tokens
    assert exist_match("it costs $5", ["$5"]) == 1 and exist_match("it costs 5", ["$5"]) == 0
    # an empty (or punctuation-only) reference matches any prediction
    assert exist_match("anything", [""]) == 1 and exist_match("anything", ["..."]) == 1
    # nested JSON lists are any-of at every depth
    assert exist_match("Barack Obama", [["obama", "hawaii"]]) == 1
    assert exist_match("Hawaii", [[["kenya"], ["hawaii"]]]) == 1 and exist_match("Ohio", [[["kenya"]]]) == 0
    # every CJK character is a token, accents survive as combining marks
    assert exist_match("我住在北京市", ["京市"]) == 1 and exist_match("Crème brûlée", ["creme"]) == 0


def test_televal_prediction_file(tmp_path):
    path = write_predictions(tmp_path / "prediction" / "emoslm" / "llamaqa-en.jsonl",
                             [{"key": "q1", "pred": "Paris", "ref": ["paris"]}])
    assert json.loads(path.read_text()) == {"key": "q1", "pred": "Paris", "ref": ["paris"]}
    with pytest.raises(ValueError):
        write_predictions(tmp_path / "x.jsonl", [{"key": "q1", "pred": "x"}])
    with pytest.raises(ValueError, match="any-of"):  # JSON has no all-of: refuse rather than change the meaning
        write_predictions(tmp_path / "x.jsonl", [{"key": "q1", "pred": "x", "ref": [("a", "b")]}])


def test_submission_round_trip_keeps_the_exact_fields(tmp_path):
    entries = [Entry("T3", dialogue(["neutral", "sad", "anger"]), tmp_path),
               Entry("T1", dialogue(["sad", "neutral"], "en_T1_02"), tmp_path)]
    audio = "HD-Track1-T3/en_T3_01_{}_response.wav"
    played = {"en_T3_01": [PlayedTurn(i + 1, f"answer {i}", response_audio=audio.format(i + 1)) for i in range(3)],
              "en_T1_02": [PlayedTurn(1, "one"), PlayedTurn(2, "two")]}
    from emoslm.audio import save_audio
    from tests.conftest import tone

    for turn in played["en_T3_01"]:
        save_audio(tmp_path / "submission" / "en" / turn.response_audio, tone(0.5))
    root = write_submission(tmp_path, entries, played)
    assert sorted(p.name for p in (root / "en").iterdir()) == ["HD-Track1-T1.jsonl", "HD-Track1-T3",
                                                               "HD-Track1-T3.jsonl"]
    raw = json.loads((root / "en" / "HD-Track1-T3.jsonl").read_text().splitlines()[0])
    assert set(raw) == {"dialogue_id", "turns"}
    assert set(raw["turns"][0]) == {"turn_id", "text", "emotion", "split_audio_file", "response_text", "response_audio"}
    loaded = {e.dialogue.dialogue_id: (e, p) for e, p in read_submission(root)}
    entry, turns = loaded["en_T3_01"]
    assert entry.task == "T3" and [t.response_text for t in turns] == ["answer 0", "answer 1", "answer 2"]
    assert turns[0].reply_audio_s == pytest.approx(0.5)
    assert loaded["en_T1_02"][0].task == "T1"
    (root / "en" / played["en_T3_01"][1].response_audio).unlink()
    with pytest.raises(DataError, match="en_T3_01_2_response.wav is missing"):
        list(read_submission(root))


def test_bad_dialogue_files_name_the_line_and_the_missing_audio(tmp_path):
    bad = tmp_path / "HD-Track1-T2.jsonl"
    bad.write_text('{"dialogue_id": "a", "turns": [{"text": "hi", "emotion": "sad"}]}\n{"dialogue_id": \n')
    with pytest.raises(DataError, match=r"HD-Track1-T2\.jsonl:2"):
        load_entries(bad)
    bad.write_text('{"dialogue_id": "a", "turns": [{"text": "hi", "emotion": "sad", "split_audio_file": "x.wav"}]}\n')
    entries = load_entries(bad)
    assert entries[0].task == "T2"  # from the file name
    with pytest.raises(DataError, match=r"x\.wav does not exist"):
        ensure_audio(entries, tmp_path / "voices")


def test_custom_rubric_dir_must_keep_the_placeholders(tmp_path):
    from emoslm.eval.judge import load_rubric

    (tmp_path / "t1.txt").write_text("Judge this: {response}")
    with pytest.raises(DataError, match="history"):
        load_rubric("T1", tmp_path)
    (tmp_path / "t1.txt").write_text("History {history}; answer {response}; question {question}. JSON please.")
    assert load_rubric("T1", tmp_path).startswith("History")
    assert "information_integration" in load_rubric("T2", tmp_path)  # no t2.txt there: the built-in one


@pytest.mark.slow
def test_eval_humdial_with_the_teacher_and_a_local_judge(tmp_path, recogniser_home, monkeypatch, llama):
    from emoslm.agents import load_agent
    from emoslm.dialogues import examples_dir
    from emoslm.eval.run import evaluate

    monkeypatch.setenv("EMOSLM_HOME", str(recogniser_home))
    entries = [e for e in load_entries(examples_dir() / "en.jsonl") if e.dialogue.dialogue_id in
               ("en_T1_01", "en_T2_01", "en_T3_01")]
    agent = load_agent("teacher", llm="llama-cpp:smollm2-135m-instruct")
    judge = Judge("llama-cpp:smollm2-135m-instruct", samples=2, llm=llama, max_tokens=200)
    summary = evaluate(tmp_path, judge, agent, entries, voice=True)
    agent.close()
    root = tmp_path / "submission" / "en"
    for task in ("T1", "T2", "T3"):
        (answered,) = read_dialogues(root / f"HD-Track1-{task}.jsonl")
        assert all(t.response_text and "<think>" not in t.response_text for t in answered.turns)
        assert all(bool(t.response_audio) == (task == "T3") for t in answered.turns)
    assert len(list((root / "HD-Track1-T3").glob("en_T3_01_*_response.wav"))) == 3
    tasks = {t["task"]: t for t in summary["tasks"]}
    assert set(tasks) == {"T1", "T2", "T3"}
    assert tasks["T3"]["sources"]["d2_vocal_congruence"].startswith("stand-in")
    assert all(1 <= v <= 5 for t in tasks.values() for v in t["dimensions"].values())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert any("trajectory" in m for m in metrics) and any("speech_error_rate" in m for m in metrics)
    report = (tmp_path / "report.md").read_text()
    assert "not comparable" in report and "stand-in" in report.lower()
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64") == 3
    # scoring a saved submission runs nothing and gives the same objective metrics
    again = evaluate(tmp_path / "rescored", None, submission=tmp_path / "submission")
    assert again["dialogues"] == 3
