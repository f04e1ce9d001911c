from emoslm.textnorm import error_rate, tokens


def test_tokens_drop_tags_and_punctuation_and_split_cjk():
    assert tokens("I'm FINE. [sigh] Really!") == ["i", "m", "fine", "really"]
    assert tokens("我很好，谢谢！ok") == ["我", "很", "好", "谢", "谢", "ok"]


def test_error_rate():
    assert error_rate("the cat sat", "the cat sat") == 0
    assert error_rate("the cat sat", "the bat sat") == 1 / 3
    assert error_rate("the cat sat", "") == 1
    assert error_rate("我很好", "我很") == 1 / 3
    assert error_rate("", "") == 0


def test_chinese_is_compared_in_simplified_characters():
    from emoslm.textnorm import error_rate

    assert error_rate("明天早上我要去做检查", "明天早上我要去做檢查") == 0.0  # Whisper's traditional spelling
    assert error_rate("明天早上我要去做检查", "明天早上我要去做检") == 0.1
