import pytest

from emoslm.errors import AudioError, EmoslmError
from emoslm.textnorm import error_rate
from tests.conftest import SENTENCE


def test_tiny_en_transcribes_piper_speech(asr_en, spoken_sentence):
    result = asr_en.transcribe(spoken_sentence)
    assert error_rate(SENTENCE, result.text) <= 0.10, result.text
    assert result.language == "en" and 0 < result.rtf < 2
    assert result.segments and result.segments[-1].end <= result.duration + 0.5


def test_english_model_refuses_other_languages(asr_en, spoken_sentence):
    with pytest.raises(EmoslmError, match="whisper-base"):
        asr_en.transcribe(spoken_sentence, language="zh")


def test_base_detects_english(asr_base, spoken_sentence):
    result = asr_base.transcribe(spoken_sentence)
    assert result.language == "en" and result.language_probability > 0.5
    assert error_rate(SENTENCE, result.text) <= 0.2


def test_pool_detects_the_language_then_hears_english_with_the_english_model(spoken_sentence):
    from emoslm.perception.asr import ASRPool

    pool = ASRPool()
    result = pool.transcribe(spoken_sentence)
    assert result.language == "en" and error_rate(SENTENCE, result.text) <= 0.10, result.text
    assert set(pool.loaded) == {"whisper-base", "whisper-tiny.en"}  # base only identified the language
    assert len(result.pieces) == len(result.segments) >= 1  # the text of each segment too


def test_detection_on_the_clips_own_frames_tells_english_from_mandarin(asr_base, spoken_sentence):
    from emoslm.speech.tts import load_tts

    mandarin = load_tts("kokoro:jf_alpha").synthesize("明天早上我要去做检查，我现在很紧张。").at()
    for audio, truth in ((spoken_sentence, "en"), (mandarin, "zh"), (spoken_sentence[:16_000], "en")):
        language, probability = asr_base.detect(audio)
        assert language == truth and probability > 0.5, (truth, language, probability)


def test_base_hears_mandarin():
    from emoslm.perception.asr import FasterWhisperASR
    from emoslm.speech.tts import EspeakTTS

    text = "明天早上我要去做检查，我现在很紧张。"
    audio = EspeakTTS("zh").synthesize(text).at()
    result = FasterWhisperASR("whisper-base").transcribe(audio, language="zh")
    # espeak-ng's Mandarin is robotic: expect recognisable, not perfect, text
    assert sum(ch in text for ch in result.text) >= 4, result.text


def test_silence_is_rejected_before_the_model(asr_en):
    import numpy as np

    with pytest.raises(AudioError, match="silent"):
        asr_en.transcribe(np.zeros(16_000, np.float32))


def test_a_turn_without_speech_has_no_words(asr_en):
    import numpy as np

    hiss = np.random.default_rng(0).normal(0, 0.01, 32_000).astype(np.float32)  # Whisper alone would invent words
    result = asr_en.transcribe(hiss)
    assert result.text == "" and result.segments == []


def test_a_turn_is_one_speech_span_and_subtitles_get_a_segment_per_phrase(asr_en, spoken_sentence):
    turn = asr_en.transcribe(spoken_sentence)
    assert len(turn.segments) == 1 and turn.pieces == [turn.text]
    assert 0 <= turn.segments[0].start < turn.segments[0].end <= turn.duration
    subtitled = asr_en.transcribe(spoken_sentence, timestamps=True)
    assert error_rate(turn.text, subtitled.text) <= 0.15 and len(subtitled.pieces) == len(subtitled.segments) >= 1
