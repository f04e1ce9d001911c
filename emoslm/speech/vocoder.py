"""Mel spectrogram ↔ waveform with the packaged 16 kHz HiFi-GAN (TorchScript).

The speech branch of the unified model will predict mels or units that end here. The vocoder's
mel settings are undocumented; the ones below gave the lowest resynthesis error when measured
(n_fft 512, window 400, hop 160, 80 Slaney mels over 0–8 kHz, natural log clamped at 1e-5).
"""

from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from emoslm.audio import SAMPLE_RATE
from emoslm.errors import MissingPackageError
from emoslm.store import resolve

N_FFT, WIN, HOP, N_MELS = 512, 400, 160, 80


@lru_cache(maxsize=4)
def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Slaney-style triangular filters with area normalisation, shape (n_mels, n_fft // 2 + 1) (librosa's)."""
    import librosa

    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=sr / 2, htk=False,
                               norm="slaney").astype(np.float32)


def log_mel(audio: np.ndarray) -> np.ndarray:
    """(80, frames) natural-log mel of 16 kHz audio, one frame per 10 ms."""
    import librosa

    magnitude = np.abs(librosa.stft(audio.astype(np.float32), n_fft=N_FFT, hop_length=HOP, win_length=WIN,
                                    window="hann", center=True, pad_mode="reflect"))
    return np.log(np.maximum(mel_filterbank() @ magnitude, 1e-5)).astype(np.float32)


class HifiGanVocoder:
    """``mel_to_audio``: the packaged TorchScript HiFi-GAN, run by onnxruntime where it can be.

    The same network exported once to ONNX (from the packaged weights, on this machine, cached under
    ``$EMOSLM_HOME/cache/vocoder``) ran 1.18x faster than TorchScript on this 2-core CPU, with the same
    samples (``benchmarks/results/units.md``); ``runtime="torch"`` keeps TorchScript."""

    def __init__(self, model: str = "hifigan-16k", runtime: str = "auto") -> None:
        try:
            import torch
        except ImportError:
            raise MissingPackageError("torch", "the HiFi-GAN vocoder", "torch==2.13.0") from None
        # Load the TorchScript file directly: the package's own vocoder.py calls .cuda() at import.
        path = resolve(model).require_path()
        self.model = torch.jit.load(str(path), map_location="cpu").eval()
        self.session = _onnx_session(path, self.model) if runtime in ("auto", "onnx") else None

    def audio_to_mel(self, audio: np.ndarray) -> np.ndarray:
        return log_mel(audio)

    def mel_to_audio(self, mel: np.ndarray) -> np.ndarray:
        mel = np.ascontiguousarray(mel, dtype=np.float32)
        if self.session is not None:
            return self.session.run(None, {"mel": mel[None]})[0].reshape(-1).astype(np.float32)
        import torch

        with torch.inference_mode():
            wav = self.model(torch.from_numpy(mel)[None])
        return wav.reshape(-1).numpy().astype(np.float32)


def _onnx_session(path: Path, model: Any) -> Any:
    """An onnxruntime session of the TorchScript vocoder (exported once per weights file), or None."""
    try:
        import onnxruntime
        import torch
    except ImportError:
        return None
    from emoslm.atomic import atomic_file
    from emoslm.config import settings

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    onnx_path = settings().home / "cache" / "vocoder" / f"{path.stem}-{digest}.onnx"
    if not onnx_path.exists():
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_file(onnx_path, suffix=".onnx") as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (torch.zeros(1, N_MELS, 32),), str(tmp), input_names=["mel"],
                                  output_names=["audio"], dynamic_axes={"mel": {2: "frames"}, "audio": {2: "samples"}},
                                  opset_version=17, dynamo=False)
        except Exception:  # an exporter that cannot take this TorchScript: keep running it in torch
            return None
    return onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
