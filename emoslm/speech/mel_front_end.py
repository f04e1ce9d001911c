"""The unified model's mel front end, saved with every checkpoint so training and serving cannot disagree.

It is Hugging Face's ``WhisperFeatureExtractor`` (log-mel, 10 ms hop, the bins the encoder was
trained on), stored as ``preprocessor_config.json`` beside the model: the collator that trains the
model and the agent that runs it both load it from the checkpoint folder (or build it from the
model's encoder config for a fresh model). Frames are cut to an even count, the encoder's stride.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoslm.audio import SAMPLE_RATE

FILE = "preprocessor_config.json"


class MelFrontEnd:
    """Audio (16 kHz float32) → log-mel (n_mels, even number of frames), as the encoder expects."""

    def __init__(self, extractor: Any) -> None:
        self.extractor = extractor

    @classmethod
    def for_mels(cls, n_mels: int) -> MelFrontEnd:
        from transformers import WhisperFeatureExtractor

        return cls(WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLE_RATE))

    @classmethod
    def from_pretrained(cls, folder: str | Path, n_mels: int | None = None) -> MelFrontEnd:
        """The front end saved in ``folder``; checkpoints from before it was saved get one for ``n_mels``."""
        from transformers import WhisperFeatureExtractor

        if (Path(folder) / FILE).exists():
            return cls(WhisperFeatureExtractor.from_pretrained(str(folder)))
        if n_mels is None:
            raise FileNotFoundError(f"{folder}: no {FILE}")
        return cls.for_mels(n_mels)

    def save_pretrained(self, folder: str | Path) -> None:
        self.extractor.save_pretrained(str(folder))

    @property
    def n_mels(self) -> int:
        return int(self.extractor.feature_size)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        mel = self.extractor(np.asarray(audio, dtype=np.float32), sampling_rate=SAMPLE_RATE, padding="longest",
                             return_tensors="np").input_features[0]
        return mel[:, : mel.shape[1] - mel.shape[1] % 2].astype(np.float32)

    def tensor(self, audio: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self(audio))
