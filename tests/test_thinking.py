import pytest

from emoslm.llm.thinking import language_of, strip_think, think_opening, think_then_answer, validate

MESSAGES = [{"role": "system", "content": "You are a warm assistant. Reply in English in two sentences."},
            {"role": "user", "content": "My cat has been sick all week and the vet says there isn't much left to do."}]


def test_opening_names_the_tag_the_evidence_and_leaves_the_cause_open():
    en = think_opening("sad", "en", "sad")
    assert "sad" in en and "quiet voice" in en and "words say the same" in en and en.endswith("is")
    conflict = think_opening("anger", "en", "neutral")
    assert "although their words sound neutral" in conflict
    zh = think_opening("fear", "zh")
    assert "fear" in zh and "害怕" in zh and zh.endswith("原因是")


def test_strip_think_handles_closed_open_and_missing_blocks():
    assert strip_think("<think>\nsad because…\n</think>\n\nI'm sorry.") == "I'm sorry."
    assert strip_think("Hello <think>unfinished") == "Hello"
    assert strip_think("Plain reply.") == "Plain reply."


def test_validation():
    assert validate("the emotion is sad because", "I'm so sorry.", "sad", "en") == []
    problems = validate("the user is upset", "", "sad", "en")
    assert any("does not name" in p for p in problems) and "empty reply" in problems
    assert any("language" in p for p in validate("sad", "我很抱歉。", "sad", "en"))
    assert language_of("我很抱歉，你还好吗？") == "zh" and language_of("I'm sorry.") == "en"


def test_think_then_answer_on_smollm2(llama):
    opening = think_opening("sad", "en", "sad")
    out = think_then_answer(llama, MESSAGES, opening, think_budget=40, reply_budget=40)
    assert not llama.native_think()  # SmolLM2: think markers are plain text, answer comes from notes
    assert out.think.startswith(opening) and len(out.think) > len(opening) + 10  # the model added the cause
    assert "<think>" not in out.reply and "</think>" not in out.reply
    assert 0 < out.think_tokens <= 40 and out.reply_tokens <= 40


def test_think_budget_closes_runaway_thinking(llama):
    out = think_then_answer(llama, MESSAGES, think_opening("sad"), think_budget=4, reply_budget=20)
    assert out.think_closed_by_budget and out.think_tokens == 4
    assert out.reply_tokens > 0  # the answer is still generated after the forced close


@pytest.mark.slow
def test_teacher_agent_runs_a_two_turn_dialogue(small_recogniser, monkeypatch, piper):
    from emoslm.agents.base import Turn
    from emoslm.agents.teacher import TeacherAgent
    from emoslm.perception.recognizer import EmotionRecognizer
    from emoslm.speech.prosody import acted

    monkeypatch.setenv("EMOSLM_HOME", str(small_recogniser[0]))
    agent = TeacherAgent(recognizer=EmotionRecognizer(), tts={"en": piper})
    first = agent.respond([], piper.synthesize(MESSAGES[1]["content"], acted("sad")).at(), "en")
    assert first.transcript and first.emotion is not None and first.emotion.tag in first.think
    assert first.text and "<think>" not in first.text and first.audio is not None
    assert {"vad", "asr", "emotion", "llm", "tts"} <= set(first.timings)
    history: list[Turn] = first.history_turns()
    assert history[1].text == first.text and first.think not in history[1].text  # think never kept
    second = agent.respond(history, piper.synthesize("I just sat with her for an hour.", acted("sad")).at(), "en")
    assert second.text and second.emotion is not None
    events = [e.kind for e in agent.stream(history, piper.synthesize("Thank you.").at(), "en")]
    assert events[0] == "transcript" and events[-1] == "done" and "think" in events
    agent.close()
