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
