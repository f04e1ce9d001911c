"""Train a small recogniser on a subset of voices, in a private EMOSLM_HOME, and use it."""

import json

import numpy as np
import pytest

from emoslm.errors import AudioError, EmoslmError
from emoslm.perception.recognizer import RECOGNISER_VERSION
from emoslm.progress import silent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(small_recogniser):
    return small_recogniser


def test_training_writes_a_small_complete_recogniser(trained):
    from emoslm.perception.recognizer import recogniser_dir

    home, _, meta = trained
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOSLM_HOME", str(home))
        files = {p.name for p in recogniser_dir().iterdir()}
    assert {"acoustic.joblib", "fusion.npz", "text_en.npz", "text_zh.npz", "meta.json"} <= files
    assert meta["test_voices"] == ["espeak-cmn-f3", "espeak-en-us-f3"]
    assert set(meta["train_voices"]).isdisjoint(meta["test_voices"])
    assert meta["out_of_fold_accuracy"]["acoustic"] > 0.2  # chance is 1/7; one zh voice per fold here


def test_training_is_reproducible(trained, tmp_path):
    from emoslm.perception.training import train

    home, config, meta = trained
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOSLM_HOME", str(home))
        again = train(config, silent, out=tmp_path / "again")
    assert again["out_of_fold_accuracy"] == meta["out_of_fold_accuracy"]
    first = json.loads((home / "perception" / f"recogniser-{RECOGNISER_VERSION}" / "meta.json").read_text())
    assert first["n_train_clips"] == again["n_train_clips"]


def test_evaluate_reports_all_parts_and_plots(trained, tmp_path):
    from emoslm.perception.evaluation import evaluate

    home, _, _ = trained
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOSLM_HOME", str(home))
        report = evaluate(tmp_path, silent)
    for part in ("acoustic", "text", "fused"):
        assert 0 <= report["test"][part]["accuracy"] <= 1 and "macro_f1" in report["test"][part]
        assert {"follows_voice", "follows_words"} <= set(report["conflict"][part])
    assert report["test"]["acoustic"]["accuracy"] > 1 / 7  # unseen voices, above chance
    assert set(report["test"]["by_voice"]) == {"espeak-cmn-f3", "espeak-en-us-f3"}
    assert (tmp_path / "confusion.png").stat().st_size > 10_000
    assert "| fused |" in (tmp_path / "report.md").read_text()


def test_recogniser_estimates_a_clip(trained, piper):
    from emoslm.perception.recognizer import EmotionRecognizer
    from emoslm.speech.prosody import acted

    home, _, _ = trained
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOSLM_HOME", str(home))
        recognizer = EmotionRecognizer()
    audio = piper.synthesize("I lost my job today and I feel hopeless.", acted("sad")).at()
    with_words = recognizer.estimate(audio, "I lost my job today and I feel hopeless.", "en")
    assert with_words.textual is not None and abs(sum(with_words.probs.values()) - 1) < 1e-5
    no_words = recognizer.estimate(audio, "", "en")  # a clip with no words still gets an estimate
    assert no_words.textual is None
    assert no_words.probs == pytest.approx(no_words.acoustic.probs)
    assert recognizer.estimate(audio, "[sigh]", "en").textual is None
    with pytest.raises(AudioError, match="silent"):
        recognizer.estimate(np.zeros(16_000, np.float32))


def test_missing_recogniser_says_how_to_build_it(tmp_path, monkeypatch):
    from emoslm.perception.recognizer import EmotionRecognizer

    monkeypatch.setenv("EMOSLM_HOME", str(tmp_path))
    with pytest.raises(EmoslmError, match="emoslm perception train"):
        EmotionRecognizer()
