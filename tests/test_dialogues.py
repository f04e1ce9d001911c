import json

import pytest

from emoslm.dialogues import examples_dir, parse_dialogue, read_dialogues, write_dialogues
from emoslm.emotions import TAGS
from emoslm.errors import DataError


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_example_dialogues_cover_the_benchmark(lang):
    dialogues = read_dialogues(examples_dir() / f"{lang}.jsonl")
    assert len(dialogues) >= 12
    assert all(3 <= len(d.turns) <= 5 and d.lang == lang for d in dialogues)
    assert {t.emotion for d in dialogues for t in d.turns} == set(TAGS)
    assert {d.task for d in dialogues} == {"T1", "T2", "T3"}
    assert any("[sigh]" in t.text or "[laughter]" in t.text for d in dialogues for t in d.turns)
    for d in dialogues:
        if d.task in ("T1", "T2"):
            assert d.turns[-1].emotion == "neutral"  # the closing question
        if d.task == "T3":  # the judge's target turn: the second non-neutral user turn
            assert sum(t.emotion != "neutral" for t in d.turns) >= 2


def test_malformed_line_is_reported_with_its_number(tmp_path):
    good = json.dumps({"dialogue_id": "a", "turns": [{"turn_id": 1, "text": "hi", "emotion": "happy"}]})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n\n" + '{"dialogue_id": "b", "turns": [\n')
    with pytest.raises(DataError, match=r"bad.jsonl:3: not valid JSON"):
        read_dialogues(path)
    path.write_text(good + "\n" + good + "\n")
    with pytest.raises(DataError, match=r":2: dialogue_id 'a' appears twice"):
        read_dialogues(path)


def test_validation_messages():
    with pytest.raises(DataError, match="emotion 'angry'"):
        parse_dialogue({"dialogue_id": "x", "turns": [{"text": "hi", "emotion": "angry"}]}, "f:1")
    with pytest.raises(DataError, match="non-empty 'turns'"):
        parse_dialogue({"dialogue_id": "x", "turns": []}, "f:1")
    with pytest.raises(DataError, match="no 'text'"):
        parse_dialogue({"dialogue_id": "x", "turns": [{"emotion": "sad"}]}, "f:1")


def test_aliases_and_roundtrip(tmp_path):
    d = parse_dialogue({"dialogue_id": "task2_4_en_0002_0014",
                        "turns": [{"turn_id": 1, "input_text": "I lost my keys.", "input_emotion": "sad"}]}, "f:1")
    assert d.turns[0].text == "I lost my keys." and d.turns[0].emotion == "sad"
    assert d.task == "T2" and d.lang == "en"
    write_dialogues(tmp_path / "out.jsonl", [d])
    again = read_dialogues(tmp_path / "out.jsonl")
    assert again == [d]
    assert set(json.loads((tmp_path / "out.jsonl").read_text())["turns"][0]) == {
        "turn_id", "text", "emotion", "split_audio_file", "response_text", "response_audio"}
