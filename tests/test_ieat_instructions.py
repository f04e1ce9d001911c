"""Instruction drafts: cleaning and filtering (the teacher's drafts are noisy on small models)."""

from emoslm.ieat.instructions import SEEDS, clean_line, keep


def test_clean_line_drops_numbering_bullets_and_lead_ins():
    assert clean_line('A user might ask: "Why do you think I feel this way?"') == "Why do you think I feel this way?"
    assert clean_line('A user might ask: "Why do I feel so') == "Why do I feel so"
    assert clean_line("3. What emotions did I feel?") == "What emotions did I feel?"
    assert clean_line("- “我为什么难过？”") == "我为什么难过？"


def test_keep_wants_the_user_asking_about_themselves_without_the_answer():
    assert keep("Why do I feel this way?", "en", 3, 20)
    assert not keep("Why does the user feel this way?", "en", 3, 20)  # not first person
    assert not keep("Why am I so sad today?", "en", 3, 20)  # names an emotion tag
    assert not keep("Why?", "en", 3, 20)  # too short
    assert not keep("我为什么会有这种感觉？", "en", 3, 20)  # wrong language
    assert keep("我为什么会有这种感觉？", "zh", 3, 20)
    assert not keep("你为什么会有这种感觉？", "zh", 3, 20)


def test_every_seed_passes_its_own_filter():
    for task in SEEDS.values():
        for lang, lines in task.items():
            assert all(keep(line, lang, 3, 20) for line in lines), lang
