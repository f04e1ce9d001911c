"""Has the user finished their turn? Smart Turn v3.2 hears it in the voice, so a pause need not be long.

A fixed silence (0.4 s) is both too slow and too eager: every turn waits for it, and a speaker who
pauses mid-thought is cut off. Smart Turn (pipecat-ai, BSD-2; a Whisper-tiny encoder with a linear head,
8.7 MB ONNX shipped in the ``pipecat-ai`` wheel) reads the last 8 s of the utterance — intonation, a
trailing "and…", a question's rise — and says whether it sounds complete. ``TurnEnd`` asks it at the
first short pause and ends the turn there when the answer is yes; otherwise the turn stays open until
the user goes on (the same turn) or the silence reaches the eagerness's limit.

The weights are a file to us: only onnxruntime and Whisper's log-mel (faster-whisper's extractor, the
same numbers as Smart Turn's own) are used, never the pipecat package's code, so the wheel is installed
``--no-deps`` (``make setup``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emoslm.audio import SAMPLE_RATE
from emoslm.errors import MissingPackageError
from emoslm.store import resolve

WINDOW_S = 8  # the model hears at most the last 8 s, zero-padded at the start
MODEL = "smart-turn-v3.2"


class SmartTurn:
    """P(the utterance so far is a complete turn), from its audio alone; one onnxruntime thread."""

    def __init__(self, model: str = MODEL, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
            from faster_whisper.feature_extractor import FeatureExtractor
        except ImportError:
            raise MissingPackageError("onnxruntime", "turn detection", "emoslm[asr]") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # beside llama.cpp's pool
        self.session = ort.InferenceSession(str(resolve(model).require_path()), options,
                                            providers=["CPUExecutionProvider"])
        self.features = FeatureExtractor(feature_size=80)

    def complete(self, audio: np.ndarray) -> float:
        """The probability that the speaker has finished (16 kHz mono float32)."""
        window = np.asarray(audio, np.float32)[-WINDOW_S * SAMPLE_RATE:]
        window = np.pad(window, (WINDOW_S * SAMPLE_RATE - len(window), 0))
        window = (window - window.mean()) / np.sqrt(window.var() + 1e-7)  # as Whisper's do_normalize
        mel = self.features(window, padding=0)[:, : WINDOW_S * 100]
        return float(np.asarray(self.session.run(None, {"input_features": mel[None].astype(np.float32)})[0])[0, 0])


# eagerness (the OpenAI Realtime ``semantic_vad`` names) → seconds of silence after which a turn ends even
# when it does not sound finished. Short by default: an end of turn that came too soon costs nothing when the
# speaker goes on before the reply speaks (``LiveSession`` continues the turn), while every turn that Smart
# Turn misjudges as unfinished (Piper's flat sentence ends often are) waits the whole patience.
PATIENCE_S = {"low": 1.2, "medium": 0.6, "auto": 0.6, "high": 0.4}


@dataclass
class TurnEnd:
    """When a turn ends: at a ``pause_s`` pause that Smart Turn calls complete, else after ``patience_s``."""

    detector: Any  # SmartTurn (or anything with ``complete(audio) -> float``)
    pause_s: float = 0.2  # the silence after which the model is asked
    patience_s: float = PATIENCE_S["auto"]
    threshold: float = 0.5

    @classmethod
    def for_eagerness(cls, eagerness: str = "auto", detector: Any = None) -> TurnEnd:
        return cls(detector or SmartTurn(), patience_s=PATIENCE_S[eagerness])

    def finished(self, utterance: np.ndarray) -> bool:
        return self.detector.complete(utterance) >= self.threshold
