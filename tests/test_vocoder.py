import pytest

from emoslm.speech.vocoder import HifiGanVocoder, log_mel
from emoslm.textnorm import error_rate
from tests.conftest import SENTENCE


@pytest.mark.slow
def test_hifigan_resynthesis_is_intelligible(spoken_sentence, asr_en):
    vocoder = HifiGanVocoder()
    mel = log_mel(spoken_sentence)
    assert mel.shape[0] == 80 and abs(mel.shape[1] - len(spoken_sentence) / 160) <= 2
    audio = vocoder.mel_to_audio(mel)
    assert abs(len(audio) - len(spoken_sentence)) <= 320
    assert error_rate(SENTENCE, asr_en.transcribe(audio).text) <= 0.15
