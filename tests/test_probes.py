"""Linear probes along the listening path, on real espeak clips and the real Whisper tiny.en + SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from emoslm.errors import DataError  # noqa: E402

SENTENCES = ["The train leaves at seven in the morning.", "I put the keys on the kitchen table.",
             "We walked along the river after lunch.", "The library closes early on Sundays.",
             "She painted the fence a pale shade of green.", "There are three chairs in the hall."]
VOICES = ("en-us+m1", "en-us+f2", "en-gb+m3")
EMOTIONS = ("sad", "anger", "surprise")  # acted far apart: slow, low and quiet · fast and loud · high


def voiced_build(root: Path) -> Path:
    """A build whose plain sentences are acted with three emotions by three espeak voices (the words never
    carry the emotion, so only how they are spoken can)."""
    from emoslm.audio import save_audio
    from emoslm.speech.prosody import acted
    from emoslm.speech.tts import EspeakTTS

    s11, s12 = [], []
    for voice in VOICES:
        tts = EspeakTTS(voice)
        for i, text in enumerate(SENTENCES):
            for emotion in EMOTIONS:
                key = f"{voice}-{i}-{emotion}"
                rel = f"audio/clips/{key}.wav"
                save_audio(root / rel, tts.synthesize(text, acted(emotion)).at())
                s11.append({"id": key, "lang": "en", "audio": rel, "transcript": text, "response": "Okay.",
                            "provenance": {"voiced_by": f"espeak:{voice}", "acted_emotion": emotion}})
                s12.append({"id": key, "task": "empathy", "lang": "en", "emotion": emotion, "think": "t",
                            "response": "r", "provenance": {},
                            "turns": [{"role": "user", "audio": rel, "text": text},
                                      {"role": "assistant", "think": "t", "text": "r"}]})
    (root / "recipe.json").write_text("{}")
    (root / "stage1_1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in s11))
    (root / "stage1_2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in s12))
    (root / "multiturn.jsonl").write_text("")
    return root


def test_probes_read_the_acted_emotion_on_an_unheard_voice(tmp_path):
    from emoslm.slm.generate import from_parts
    from emoslm.train.probes import build_clips, representations, run_probes

    build = voiced_build(tmp_path / "build")
    model, _ = from_parts(adapter_dim=64)
    clips = build_clips(build)
    assert len(clips) == 54 and {c.acted for c in clips} == set(EMOTIONS)
    features = representations(model, clips[:2], llm_layers=(1, 30))
    assert list(features) == ["encoder", "subsampler", "adapter", "llm layer 1", "llm layer 30"]
    assert features["encoder"].shape == (2, 2 * 384) and features["adapter"].shape == (2, 2 * 576)

    summary = run_probes({"untrained": model}, build, ("espeak:en-gb+m3",), tmp_path / "out")
    assert summary["held_out_clips"] == 18 and summary["fit_clips"] == 36
    assert summary["references"]["recogniser"] == 1.0  # the labels here are the acted tags themselves
    # acted sad / anger / surprise are far apart: the frozen encoder's frames and the prosodic features
    # tell them apart on a voice the probe never saw (chance 1/3)
    assert summary["models"]["untrained"]["encoder"]["held_out_accuracy"] >= 0.7
    assert summary["prosody"]["held_out_accuracy"] >= 0.6
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"probes-build.json", "probes-build.md",
                                                               "probes-build.png"}
    assert "| untrained |" in (tmp_path / "out" / "probes-build.md").read_text()

    with pytest.raises(DataError, match="held-out voices"):
        run_probes({"untrained": model}, build, ("espeak:nobody",), tmp_path / "none")
    with pytest.raises(DataError, match="use build or corpus"):
        run_probes({"untrained": model}, build, ("espeak:en-gb+m3",), tmp_path / "none", fit_on="words")
