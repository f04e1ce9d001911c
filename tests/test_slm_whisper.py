"""The CTranslate2 Whisper weights, converted to a transformers encoder, give CTranslate2's frames."""

import numpy as np
import pytest


def test_converted_encoder_matches_ctranslate2(spoken_sentence):
    torch = pytest.importorskip("torch")
    import ctranslate2

    from emoslm.speech.mel_front_end import MelFrontEnd
    from emoslm.speech.whisper_ct2 import encode, load_whisper_encoder
    from emoslm.store import resolve

    mel = MelFrontEnd.for_mels(80)(spoken_sentence)
    reference = ctranslate2.models.Whisper(str(resolve("whisper-tiny.en").require_path()), device="cpu",
                                           compute_type="float32")
    expected = np.asarray(reference.encode(ctranslate2.StorageView.from_array(
        np.ascontiguousarray(mel[None], dtype=np.float32)), to_cpu=True))[0]
    encoder = load_whisper_encoder("whisper-tiny.en")
    with torch.no_grad():
        got = encode(encoder, torch.from_numpy(mel[None].astype(np.float32)))[0].numpy()
    assert got.shape == expected.shape == (mel.shape[1] // 2, 384)
    cosine = (got * expected).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1))
    assert cosine.min() > 0.999 and np.abs(got - expected).max() < 0.05
