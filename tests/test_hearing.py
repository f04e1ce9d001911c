"""The pieces that keep the paralinguistics on the listening path (issue 33): every encoder layer's frames,
a learned layer mix, an attention-pooled emotion head — on the real Whisper tiny.en encoder."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emoslm.slm.listen import EmotionHead, LayerMix  # noqa: E402


@pytest.fixture(scope="module")
def whisper():
    from emoslm.speech.mel_front_end import MelFrontEnd
    from emoslm.speech.whisper_ct2 import load_whisper_encoder

    encoder = load_whisper_encoder("whisper-tiny.en").eval()
    return encoder, MelFrontEnd.for_mels(encoder.config.num_mel_bins)


def test_encode_layers_ends_with_the_frames_encode_gives(whisper, spoken_sentence):
    from emoslm.speech.whisper_ct2 import encode, encode_layers

    encoder, front_end = whisper
    mel = front_end.tensor(spoken_sentence)[None]
    with torch.no_grad():
        states, last = encode_layers(encoder, mel), encode(encoder, mel)
    assert states.shape == (1, encoder.config.encoder_layers + 1, last.shape[1], encoder.config.d_model)
    assert torch.allclose(states[:, -1], last, atol=1e-5)
    assert not torch.allclose(states[:, 2], last, atol=1e-2)  # the middle layers are other frames


def test_layer_mix_starts_as_the_mean_and_learns_which_layer_matters():
    torch.manual_seed(0)
    mix = LayerMix(3)
    states = torch.randn(8, 3, 5, 4)
    assert torch.allclose(mix(states), states.mean(1), atol=1e-6)
    assert torch.isclose(mix.weights.sum(), torch.tensor(1.0))
    optimiser = torch.optim.Adam(mix.parameters(), lr=0.1)
    for _ in range(100):  # the target is layer 1 alone
        loss = ((mix(states) - states[:, 1]) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    weights = mix.weights.detach()
    assert int(weights.argmax()) == 1 and float(weights[1]) > 0.9


def test_emotion_head_ignores_padding_and_learns_a_tag_carried_by_one_layer():
    torch.manual_seed(0)
    head = EmotionHead(4, 7).eval()
    frames = torch.randn(1, 6, 4)
    padded = torch.cat([frames, 100 * torch.ones(1, 3, 4)], dim=1)
    mask = torch.tensor([[False] * 6 + [True] * 3])
    with torch.no_grad():
        assert torch.allclose(head(frames), head(padded, mask), atol=1e-5)

    # the tag is written in layer 2's frames only; the head with a mix finds it on clips it never saw
    def clips(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        tags = torch.randint(0, 7, (n,), generator=g)
        states = torch.randn(n, 4, 10, 8, generator=g)
        states[:, 2, :, :7] += 3 * torch.nn.functional.one_hot(tags, 7)[:, None].float()
        return states, tags

    head = EmotionHead(8, 7, mix_layers=4)
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-2)
    train, tags = clips(256, 0)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(head(train), tags)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    test, truth = clips(128, 1)
    with torch.no_grad():
        accuracy = float((head(test).argmax(-1) == truth).float().mean())
    assert accuracy > 0.9 and int(head.mix.weights.argmax()) == 2, (accuracy, head.mix.weights)


def test_fit_head_and_predict_on_layer_stacks_of_different_lengths():
    from emoslm.emotions import TAGS
    from emoslm.train.hearing import fit_head, pooled, predict

    rng = np.random.default_rng(0)
    tags = [TAGS[i % 2] for i in range(40)]
    stacks = [rng.normal(size=(3, int(rng.integers(5, 12)), 6)).astype(np.float16) for _ in tags]
    for stack, tag in zip(stacks, tags, strict=True):
        stack[1, :, 0] += 4 if tag == TAGS[0] else -4
    head = fit_head(stacks, tags, mix=True, seed=0, epochs=40, lr=1e-2, batch_size=8)
    assert predict(head, stacks) == tags
    assert pooled(stacks[0]).shape == (3, 12)


def test_a_prosody_head_standardises_by_its_training_clips_and_can_ignore_the_frames():
    """The head that opens the think reads the clip's pitch and loudness functionals (standardised by the training
    clips' statistics, which travel as buffers); with frame_dropout 1.0 the frames cannot move its answer."""
    from emoslm.slm.listen import prosody_size, prosody_vector

    torch.manual_seed(0)
    head = EmotionHead(4, 7, prosody_dim=prosody_size(), frame_dropout=1.0).eval()
    vectors = torch.randn(50, prosody_size()) * 5 + 3
    head.fit_prosody(vectors)
    assert torch.allclose(head.prosody_mean, vectors.mean(0)) and torch.allclose(head.prosody_scale, vectors.std(0))
    assert {"prosody_mean", "prosody_scale"} <= set(head.state_dict())
    frames, other = torch.randn(2, 6, 4), 100 * torch.randn(2, 6, 4)
    with torch.no_grad():
        assert torch.equal(head(frames, prosody=vectors[:2]), head(other, prosody=vectors[:2]))
        assert not torch.equal(head(frames, prosody=vectors[:2]), head(frames, prosody=vectors[2:4]))
    with pytest.raises(ValueError, match="prosody"):
        head(frames)
    both = EmotionHead(4, 7, prosody_dim=prosody_size()).eval()  # frames and prosody: both move the answer
    with torch.no_grad():
        assert not torch.equal(both(frames, prosody=vectors[:2]), both(other, prosody=vectors[:2]))

    rng = np.random.default_rng(0)
    tone = np.sin(2 * np.pi * 220 * np.arange(16000) / 16000).astype(np.float32) * 0.3
    loud, quiet = prosody_vector(tone + rng.normal(0, 1e-3, 16000).astype(np.float32)), prosody_vector(tone * 0.03)
    assert loud.shape == (prosody_size(),) and float(loud[9] - quiet[9]) > 20  # loudness mean, in dB
    assert abs(float(loud[0] - quiet[0])) < 1  # the same pitch (semitones)


def test_the_hearing_report_sets_the_think_beside_the_references(tmp_path):
    from emoslm.eval.hearing import markdown, plot

    row = {"title": "same sentence, every emotion", "clips": 7, "think": 0.43, "recogniser_fused": 0.43,
           "recogniser_acoustic": 0.46, "encoder_head": None, "commonest": 0.14, "chance": 0.14,
           "think_follows_words": 0.14, "confusion": {t: {t: 1} for t in ("neutral", "happy", "sad", "anger", "fear",
                                                                           "surprise", "disgust")},
           "samples": [{"acted": "sad", "voice": "flite-awb", "text": "The bus is at six.",
                        "think": "The user speaks with a low, slow voice, so the emotion I hear is sad.",
                        "reply": "Oh."}]}
    results = {"model": {"checkpoint": "runs/x/final", "injects_emotion": True, "head_reads_prosody": True,
                         "encoder_mix": True}, "sets": {"same": row}}
    text = markdown(results)
    assert "| same sentence, every emotion | 7 | **0.430** | 0.430 | 0.460 | — | 0.140 | 0.140 |" in text
    assert "emotion-in-think is the head's accuracy" in text and "| sad | 0 | 1 | 0 |" in text
    assert "reading the adapter's output + the clip's pitch and loudness functionals" in text
    plot(results, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
