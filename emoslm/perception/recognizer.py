"""Emotion recognition for one user clip: acoustic evidence, textual evidence, learned fusion.

``EmotionRecognizer`` is what the rest of emoslm calls (IEAT labelling, the teacher agent, the
evaluation). Its acoustic part is either the built-in recogniser trained by
``emoslm perception train`` or emotion2vec through FunASR; its text part reads the transcript; a
fusion model learned on held-out predictions combines them. A clip with no words gets an
acoustic-only estimate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from emoslm.audio import SAMPLE_RATE, check_signal
from emoslm.config import settings
from emoslm.emotions import EMOTION2VEC_TO_TAG, TAGS, map_distribution
from emoslm.errors import EmoslmError, MissingPackageError
from emoslm.language import served
from emoslm.perception.classifier import LinearClassifier, load_classifier
from emoslm.perception.estimate import EmotionEstimate, Evidence, as_probs
from emoslm.perception.features import PROSODIC_NAMES, AcousticFeaturizer
from emoslm.perception.text_emotion import text_featurizer
from emoslm.textnorm import tokens

RECOGNISER_VERSION = "v6"  # v6: its corpus pitched by varispeed (v5: Kokoro's half-script takes + speed copies)


def recogniser_dir() -> Path:
    return settings().home / "perception" / f"recogniser-{RECOGNISER_VERSION}"


class AcousticModel(Protocol):
    source: str

    def acoustic(self, audio: np.ndarray) -> Evidence: ...


class BuiltinAcoustic:
    """The project-trained classifier over prosodic (+ Whisper-encoder) features."""

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        self.featurizer = AcousticFeaturizer(tuple(meta["acoustic_features"]))
        self.classifier = load_classifier(directory / "acoustic")
        self.source = "acoustic:builtin(" + "+".join(meta["acoustic_features"]) + ")"

    def acoustic(self, audio: np.ndarray) -> Evidence:
        vector = self.featurizer(audio)
        probs = self.classifier.predict_proba(vector)[0]
        named = dict(zip(PROSODIC_NAMES, vector[: len(PROSODIC_NAMES)].tolist(), strict=False))
        cues = {"f0_hz": round(27.5 * 2 ** (named.get("f0_mean", 0.0) / 12), 1) if named.get("f0_mean") else 0.0,
                "f0_range_st": round(named.get("f0_range", 0.0), 2),
                "loudness_db": round(named.get("loud_mean", 0.0), 1),
                "syllable_rate": round(named.get("syllable_rate", 0.0), 2)}
        return Evidence(self.source, as_probs(probs), cues)


class Emotion2VecAcoustic:
    """emotion2vec (plus) through FunASR, from a local model directory or a hub id.

    Needs ``pip install funasr`` and the model files; neither is installable offline on the
    machines emoslm is built on, so this path is untested here and says so when missing.
    """

    def __init__(self, model: str = "iic/emotion2vec_plus_large", hub: str = "hf") -> None:
        try:
            from funasr import AutoModel
        except ImportError:
            raise MissingPackageError("funasr", "the emotion2vec recogniser", "emoslm[emotion2vec]") from None
        local = Path(model).expanduser()
        try:
            self.model = AutoModel(model=str(local) if local.exists() else model, hub=hub, disable_update=True)
        except Exception as exc:  # FunASR raises bare exceptions for missing files and failed downloads
            raise EmoslmError(f"emotion2vec '{model}' could not be loaded ({type(exc).__name__}: {exc}); "
                              "pass a local model directory") from None
        self.source = f"acoustic:emotion2vec({model})"

    def acoustic(self, audio: np.ndarray) -> Evidence:
        result = self.model.generate(audio, granularity="utterance", extract_embedding=False)[0]
        # labels look like "生气/angry"; keep the English half
        scores = {str(label).split("/")[-1]: float(s) for label, s in zip(result["labels"], result["scores"],
                                                                          strict=True)}
        return Evidence(self.source, map_distribution(scores, EMOTION2VEC_TO_TAG), {"raw": scores})


class TextModel:
    """Per-language classifier over the text features of ``text_emotion``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.loaded: dict[str, tuple[Any, LinearClassifier]] = {}

    def textual(self, text: str, lang: str) -> Evidence | None:
        if not tokens(text):
            return None
        lang = served(lang)
        if lang not in self.loaded:
            path = self.directory / f"text_{lang}.npz"
            if not path.exists():
                return None
            self.loaded[lang] = (text_featurizer(lang), LinearClassifier.load(path))
        featurizer, classifier = self.loaded[lang]
        features = featurizer([text])
        probs = classifier.predict_proba(features)[0]
        cues = {name: round(float(v), 3) for name, v in zip(featurizer.names, features[0], strict=True) if v}
        return Evidence(f"text:{lang}", as_probs(probs), cues)


def fusion_input(acoustic: np.ndarray, textual: np.ndarray) -> np.ndarray:
    """Log-probabilities of both parts side by side: the fusion model learns how much each counts."""
    return np.concatenate([np.log(np.clip(acoustic, 1e-4, 1)), np.log(np.clip(textual, 1e-4, 1))], axis=-1)


class EmotionRecognizer:
    """Acoustic + textual evidence → one ``EmotionEstimate``."""

    def __init__(self, directory: Path | None = None, acoustic: str = "builtin") -> None:
        self.directory = directory or recogniser_dir()
        meta_path = self.directory / "meta.json"
        if not meta_path.exists() and directory is None:
            from emoslm.perception import shipped

            shipped.install(self.directory)  # the default recogniser: the shipped copy, where this install can load it
        if not meta_path.exists():
            raise EmoslmError(
                f"no trained emotion recogniser in {self.directory}; run `emoslm perception train` (a few minutes)"
            )
        self.meta = json.loads(meta_path.read_text())
        if acoustic == "builtin":
            self.acoustic_model: AcousticModel = BuiltinAcoustic(self.directory, self.meta)
        elif acoustic.startswith("emotion2vec"):
            _, _, model = acoustic.partition(":")
            self.acoustic_model = Emotion2VecAcoustic(model or "iic/emotion2vec_plus_large")
        else:
            raise EmoslmError(f"unknown acoustic backend '{acoustic}'; use builtin or emotion2vec[:MODEL]")
        self.text_model = TextModel(self.directory)
        self.fusion = LinearClassifier.load(self.directory / "fusion.npz")

    def estimate(self, audio: np.ndarray, transcript: str = "", lang: str = "en",
                 acoustic: Evidence | None = None) -> EmotionEstimate:
        """Fuse voice and words; ``acoustic`` is the voice's evidence when it was already computed
        (a live agent hears the voice while ASR runs)."""
        check_signal(audio, SAMPLE_RATE, "audio")
        acoustic = acoustic or self.acoustic_model.acoustic(audio)
        textual = self.text_model.textual(transcript, lang) if transcript else None
        if textual is None:
            return EmotionEstimate.from_probs(acoustic.probs, acoustic=acoustic, transcript=transcript)
        a = np.array([acoustic.probs[t] for t in TAGS])
        t = np.array([textual.probs[t] for t in TAGS])
        fused = self.fusion.predict_proba(fusion_input(a, t))[0]
        return EmotionEstimate.from_probs(fused, acoustic=acoustic, textual=textual, transcript=transcript)
