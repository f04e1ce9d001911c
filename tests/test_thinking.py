
from emoslm.think import language_of, strip_think, think_opening, think_then_answer, validate

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
    assert not llama.native_think()  # SmolLM2: think markers are plain text; the reply continues the context
    assert out.think.startswith(opening) and len(out.think) > len(opening) + 10  # the model added the cause
    assert "<think>" not in out.reply and "</think>" not in out.reply
    assert 0 < out.think_tokens <= 40 and out.reply_tokens <= 40


def test_think_budget_closes_runaway_thinking(llama):
    out = think_then_answer(llama, MESSAGES, think_opening("sad"), think_budget=4, reply_budget=20)
    assert out.think_closed_by_budget and out.think_tokens == 4
    assert out.reply_tokens > 0  # the answer is still generated after the forced close


def test_think_stream_pieces_join_to_the_blocking_result(llama):
    from emoslm.streams import drain
    from emoslm.think import think_stream

    pieces, result = [], None
    stream = think_stream(llama, MESSAGES, think_opening("sad"), think_budget=24, reply_budget=30)
    while result is None:
        try:
            pieces.append(next(stream))
        except StopIteration as end:
            result = end.value
    think = "".join(p.text for p in pieces if p.part == "think")
    reply = "".join(p.text for p in pieces if p.part == "reply")
    assert think == result.think and reply == result.reply and reply
    assert sum(1 for p in pieces if p.part == "reply" and p.text) > 1  # really streamed, not one lump
    again = drain(think_stream(llama, MESSAGES, think_opening("sad"), think_budget=24, reply_budget=30))
    blocking = think_then_answer(llama, MESSAGES, think_opening("sad"), think_budget=24, reply_budget=30)
    assert (again.think, again.reply) == (blocking.think, blocking.reply) == (result.think, result.reply)


def test_the_think_is_read_back_as_the_emotion_it_states():
    from emoslm.think import tag_in_think

    assert tag_in_think(think_opening("sad", "en", "anger") + " a loss.") == "sad"  # not the words' "anger"
    assert tag_in_think(think_opening("fear", "zh", "happy")) == "fear"
    assert tag_in_think("They sound happy, maybe a little surprise too.") == "happy"
    assert tag_in_think("No emotion words here.") is None


def test_trajectory_question_gets_the_perceived_path():
    from emoslm.dialogues import examples_dir, read_dialogues
    from emoslm.eval.metrics import trajectory_exact
    from emoslm.think import asks_trajectory, emotion_path, tag_in_think, think_opening, trajectory_reply

    for dialogue in read_dialogues(examples_dir()):  # only the last turn of the T1 dialogues asks
        asked = [asks_trajectory(t.text, dialogue.lang) for t in dialogue.turns]
        assert asked == [dialogue.task == "T1" and i == len(asked) - 1 for i in range(len(asked))], dialogue.dialogue_id
    assert asks_trajectory("你能總結一下我在這段對話裡經歷了哪些情緒變化嗎", "zh")  # Whisper's traditional characters
    assert emotion_path(["sad", "sad", None, "neutral", "happy"]) == ["sad", "neutral", "happy"]
    for path in (["anger", "surprise", "neutral"], ["fear", "neutral", "surprise", "happy", "neutral"], ["sad"]):
        for lang in ("en", "zh"):
            assert trajectory_exact(trajectory_reply(path, lang), path, lang)["exact"], (path, lang)
    opening = think_opening("neutral", "en", "neutral", ["anger", "surprise", "neutral"])
    assert "anger → surprise → neutral" in opening and tag_in_think(opening) == "neutral"
    assert think_opening("sad", "en") == ("The user speaks with a slow, quiet voice with a falling pitch, so the "
                                          "emotion I hear is sad. The most likely reason they feel sad is")


def test_sentence_stop_ends_a_reply_after_its_last_allowed_sentence():
    from emoslm.think import SentenceStop

    stop = SentenceStop(2)
    kept = [stop.feed(d) for d in ["That is 3.5 times", " more. Wow... really", "! And then", " more."]]
    assert "".join(k for k, _ in kept) == "That is 3.5 times more. Wow... really!" and kept[2][1]
    zh = SentenceStop(1)
    assert zh.feed("你好。你") == ("你好。", True)


def test_a_reply_cut_by_its_budget_ends_on_a_sentence_boundary(llama):
    from emoslm.eval.checks import ends_on_sentence
    from emoslm.think import _ended

    assert _ended("One. Two is cut", "One.", "en") == "One."
    assert _ended("One. Two is cut", "One. Two is", "en") == "One. Two is."  # already spoken: closed, not dropped
    assert _ended("没有句号", "没有", "zh") == "没有。"
    for budget in (6, 12, 20):
        out = think_then_answer(llama, MESSAGES, think_opening("sad"), think_budget=16, reply_budget=budget)
        assert ends_on_sentence(out.reply), out.reply


def test_the_reply_stops_after_the_sentences_it_may_have(llama):
    import re

    from emoslm.streams import drain
    from emoslm.think import think_stream

    out = drain(think_stream(llama, MESSAGES, think_opening("sad"), think_budget=16, reply_budget=120,
                             sentences=1))
    assert len(re.findall(r"[.!?](?=\s|$)", out.reply)) <= 1 and out.reply
