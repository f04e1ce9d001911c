"""Mel spectrogram ↔ waveform with the packaged 16 kHz HiFi-GAN (TorchScript).

The speech branch of the unified model will predict mels or units that end here. The vocoder's
mel settings are undocumented; the ones below gave the lowest resynthesis error when measured
(n_fft 512, window 400, hop 160, 80 Slaney mels over 0–8 kHz, natural log clamped at 1e-5).
"""

from __future__ import annotations

from functools import lru_cache

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
    def __init__(self, model: str = "hifigan-16k") -> None:
        try:
            import torch
        except ImportError:
            raise MissingPackageError("torch", "the HiFi-GAN vocoder", "torch==2.13.0") from None
        # Load the TorchScript file directly: the package's own vocoder.py calls .cuda() at import.
        self.model = torch.jit.load(str(resolve(model).require_path()), map_location="cpu").eval()

    def audio_to_mel(self, audio: np.ndarray) -> np.ndarray:
        return log_mel(audio)

    def mel_to_audio(self, mel: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            wav = self.model(torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[None])
        return wav.reshape(-1).numpy().astype(np.float32)
