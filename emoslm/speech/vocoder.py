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


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    linear = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, linear)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


@lru_cache(maxsize=4)
def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Slaney-style triangular filters with area normalisation, shape (n_mels, n_fft // 2 + 1)."""
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    lower = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - freqs[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def log_mel(audio: np.ndarray) -> np.ndarray:
    """(80, frames) natural-log mel of 16 kHz audio, one frame per 10 ms."""
    window = np.zeros(N_FFT, np.float32)
    offset = (N_FFT - WIN) // 2
    window[offset:offset + WIN] = np.hanning(WIN + 1)[:-1]
    padded = np.pad(audio.astype(np.float32), (N_FFT // 2, N_FFT // 2), mode="reflect")
    frames = 1 + (len(padded) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(frames)[:, None]
    magnitude = np.abs(np.fft.rfft(padded[idx] * window, axis=1))
    return np.log(np.maximum(mel_filterbank() @ magnitude.T, 1e-5)).astype(np.float32)


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
