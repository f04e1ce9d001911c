import numpy as np
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


def test_onnx_runtime_vocoder_gives_the_torchscript_samples():
    onnx = HifiGanVocoder(runtime="auto")
    script = HifiGanVocoder(runtime="torch")
    assert onnx.session is not None and script.session is None
    mel = np.random.default_rng(0).normal(-6, 2, (80, 57)).astype(np.float32)
    a, b = onnx.mel_to_audio(mel), script.mel_to_audio(mel)
    assert a.shape == b.shape == (57 * 160,) and np.max(np.abs(a - b)) < 1e-4
