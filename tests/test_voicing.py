import numpy as np

from emoslm.audio import load_audio
from emoslm.dialogues import examples_dir, read_dialogues
from emoslm.voicing import voice_dialogues


def test_voice_examples_writes_audio_and_resumes(tmp_path, piper):
    from emoslm.speech.tts import EspeakTTS

    dialogues = [d for d in read_dialogues(examples_dir()) if d.dialogue_id in ("en_T2_01", "zh_T3_01")]
    engines = {"en": piper, "zh": EspeakTTS("zh")}
    voiced = voice_dialogues(dialogues, tmp_path, tts_for=engines.__getitem__)
    paths = [tmp_path / t.split_audio_file for d in voiced for t in d.turns]
    assert len(paths) == 6 and all(p.exists() for p in paths)
    assert {p.name for p in tmp_path.glob("*.jsonl")} == {"en.jsonl", "zh.jsonl"}
    sad = load_audio(tmp_path / "en/en_T2_01_2.wav")
    happy = load_audio(tmp_path / "en/en_T2_01_1.wav")
    assert np.sqrt(np.mean(sad**2)) < np.sqrt(np.mean(happy**2))  # sad is voiced softer than happy

    before = [p.stat().st_mtime_ns for p in paths]
    voice_dialogues(dialogues, tmp_path, tts_for=engines.__getitem__)
    assert [p.stat().st_mtime_ns for p in paths] == before  # nothing re-synthesised
    from emoslm.speech.tts import FliteTTS

    engines["en"] = FliteTTS("kal16")  # another voice: its clips are spoken again, the other language's kept
    zh_before = [p.stat().st_mtime_ns for p in paths if "/zh/" in str(p)]
    voice_dialogues(dialogues, tmp_path, tts_for=engines.__getitem__)
    assert [p.stat().st_mtime_ns for p in paths if "/zh/" in str(p)] == zh_before
    assert all(p.stat().st_mtime_ns != b for p, b in zip(paths, before, strict=True) if "/en/" in str(p))
    assert (tmp_path / "en" / "VOICE").read_text().strip() == "flite:kal16"
