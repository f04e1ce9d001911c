"""The cheap reply checks (issue 32): each fault the example dialogues' replies showed is caught, a good reply
passes, in both languages; MiniLM sees a paraphrase of an earlier reply as a near-copy and a new reply as not."""

import pytest

from emoslm.eval.checks import check_dialogue, check_reply, ends_on_sentence, minilm_similarity, summarise


@pytest.fixture(scope="module")
def similarity():
    return minilm_similarity()


def test_a_good_reply_passes_in_both_languages():
    assert check_reply("I'm so sorry about your dad. Finishing the marathon without him there must feel hollow.",
                       "en").ok
    assert check_reply("你爸爸没能看到你冲线，难怪你会觉得空落落的。你愿意说说他吗？", "zh").ok


@pytest.mark.parametrize("text, lang, problem", [
    ("The user's tone is quite intense and emotional, and you can hear it.", "en", "third person"),
    ("That's a very common way to express disappointment, especially in a leadership", "en", "cut off"),
    ("Marathons are hard. Training takes a year.", "en", "not second person"),
    ("用户的语气很激动，你一定很累。", "zh", "third person"),
    ("I hear you, and that sounds exhausting.", "zh", "wrong language"),
    ("You " + "really " * 100 + "did it.", "en", "over length budget"),
])
def test_each_fault_is_named(text, lang, problem):
    assert problem in check_reply(text, lang).problems


def test_sentence_ends_include_closing_quotes_and_chinese_marks():
    assert ends_on_sentence('You said "I did it!"') and ends_on_sentence("你做到了！") and ends_on_sentence("好的。")
    assert not ends_on_sentence("and then you") and not ends_on_sentence("   ")


def test_near_copies_and_the_trajectory_in_a_dialogue(similarity):
    replies = ["I'm so sorry about your father. It makes sense the marathon feels empty without him there.",
               "I'm so sorry about your dad. It's natural the marathon feels hollow without him.",
               "Your feelings went from anger to surprise, and then to a calmer, neutral place."]
    verdicts = check_dialogue(replies, "en", ["anger", "surprise", "neutral"], "T1", similarity)
    assert verdicts[0].ok and "near-copy of an earlier reply" in verdicts[1].problems
    assert verdicts[2].trajectory["exact"] and verdicts[2].ok
    wrong = check_dialogue(replies[:2] + ["You went from surprise to anger."], "en", ["anger", "surprise"], "T1",
                           similarity)
    assert "trajectory not exact" in wrong[2].problems
    counts = summarise(verdicts + wrong)
    assert counts["replies"] == 6 and counts["near-copy of an earlier reply"] == 2 and counts["ok"] == 3


def test_mandarin_repeats_are_near_copies_and_new_replies_are_not(similarity):
    first = "你爸爸不在了，跑完马拉松却觉得空落落的，这很正常。"
    assert similarity(first, first + "") >= 0.99
    assert check_reply(first, "zh", [first], similarity).near_copy
    assert not check_reply("恭喜你入选领导力项目，太棒了！", "zh", [first], similarity).near_copy
