"""Listen: Whisper encoder frames → 8× fewer frames → a small transformer → the LLM's embedding space;
and the two pieces that keep the paralinguistics on the way (``LayerMix``, ``EmotionHead``).

The shape follows GOAT-SLM's public code: three Conv1d layers (kernel 5, stride 2, GLU) divide the 50
frames per second of Whisper by eight, a two-layer transformer adapter lets neighbouring frames agree,
and a LayerNorm + projection puts them in the LLM's embedding space, where they replace a stretch of the
user turn's token embeddings.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Subsampler(nn.Module):
    """3 × (Conv1d kernel 5, stride 2, GLU): (batch, frames, d_in) → (batch, ~frames/8, d_out)."""

    def __init__(self, d_in: int, d_out: int, layers: int = 3, kernel: int = 5) -> None:
        super().__init__()
        dims = [d_in] + [d_out] * layers
        self.convs = nn.ModuleList(nn.Conv1d(dims[i], 2 * dims[i + 1], kernel, stride=2, padding=kernel // 2)
                                   for i in range(layers))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        hidden = frames.transpose(1, 2)
        for conv in self.convs:
            hidden = nn.functional.glu(conv(hidden), dim=1)
        return hidden.transpose(1, 2)

    @staticmethod
    def out_length(frames: int, layers: int = 3) -> int:
        for _ in range(layers):
            frames = (frames - 1) // 2 + 1
        return frames


class Adapter(nn.Module):
    """A small pre-norm transformer over the subsampled frames, then LayerNorm and a projection."""

    def __init__(self, d_model: int, d_llm: int, layers: int = 2, heads: int = 8) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.project = nn.Linear(d_model, d_llm)

    def forward(self, hidden: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(self.norm(self.blocks(hidden, src_key_padding_mask=padding)))


class LayerMix(nn.Module):
    """A learned weighted sum of an encoder's layers (SUPERB's recipe): (batch, layers, frames, d) → (batch,
    frames, d). Emotion and speaker sit in the middle layers of speech encoders more than in the last one,
    which a reader of the last layer alone never sees. Starts as the plain mean."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(layers))

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.einsum("l,blfd->bfd", self.weights.to(states.dtype), states)


class EmotionHead(nn.Module):
    """Attention pooling over frames, then a linear layer: (batch, frames, d) + padding → (batch, tags) logits.

    Trained with a cross-entropy on the acted (or labelled) emotion next to the text loss, it makes the
    frames it reads keep what the emotion needs; alone, on the frozen encoder, it measures what is there.

    With ``prosody_dim`` it also reads the clip's prosodic functionals (``prosody_vector``: pitch and loudness
    statistics), standardised by the training clips' mean and spread (``fit_prosody``, saved
    as buffers with the model) and added as a second linear term. Whisper-tiny's frames separate the training
    voices more than the emotions (a head on them fell to 0.28 on unheard voices, reports/hearing-encoder); pitch
    and loudness statistics carry the acted emotion across voices."""

    def __init__(self, d_in: int, tags: int, mix_layers: int | None = None, hidden: int = 256,
                 prosody_dim: int = 0, frame_dropout: float = 0.0) -> None:
        super().__init__()
        self.mix = LayerMix(mix_layers) if mix_layers else None
        self.norm = nn.LayerNorm(d_in)
        self.score = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.dropout = nn.Dropout(min(frame_dropout, 0.99))
        # 1.0: the head reads the prosody alone (whisper-tiny's frames named the training voices: a head on frames
        # and prosody scored 0.26 on unheard voices where prosody alone scored 0.39)
        self.reads_frames = frame_dropout < 1.0 or not prosody_dim
        self.classify = nn.Linear(2 * d_in, tags)
        self.prosody_dim = prosody_dim
        if prosody_dim:
            self.register_buffer("prosody_mean", torch.zeros(prosody_dim))
            self.register_buffer("prosody_scale", torch.ones(prosody_dim))
            self.prosody = nn.Linear(prosody_dim, tags)

    @torch.no_grad()
    def fit_prosody(self, vectors: torch.Tensor) -> None:
        """Standardise the prosody input by these (training) clips' statistics: (clips, prosody_dim)."""
        self.prosody_mean.copy_(vectors.mean(0))
        self.prosody_scale.copy_(vectors.std(0).clamp_min(1e-4))

    def forward(self, frames: torch.Tensor, padding: torch.Tensor | None = None,
                prosody: torch.Tensor | None = None) -> torch.Tensor:
        if not self.reads_frames:
            return self._prosody(prosody, frames.new_zeros(frames.shape[0], self.classify.out_features))
        if self.mix is not None:
            frames = self.mix(frames)
        frames = self.norm(frames)
        scores = self.score(frames).squeeze(-1)
        if padding is not None:
            scores = scores.masked_fill(padding, float("-inf"))
        weights = torch.softmax(scores, dim=1)[..., None]
        mean = (weights * frames).sum(1)
        spread = (weights * (frames - mean[:, None]) ** 2).sum(1).clamp_min(1e-6).sqrt()
        return self._prosody(prosody, self.classify(self.dropout(torch.cat([mean, spread], dim=-1))))

    def _prosody(self, prosody: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` plus the prosody term (for a head that reads prosody)."""
        if not self.prosody_dim:
            return logits
        if prosody is None:
            raise ValueError("this emotion head reads the clip's prosody: give prosody (prosody_vector(audio))")
        standard = (prosody.to(logits.dtype) - self.prosody_mean) / self.prosody_scale
        return logits + self.prosody(standard.clamp(-8, 8))


# The pitch and loudness functionals (f0 mean/spread/percentiles/range/slope/delta, jitter, loudness
# mean/spread/percentiles/range/delta, shimmer, peak): the part of the recogniser's prosodic vector that carries
# the acted emotion across voices. On the corpus's unheard voices a linear classifier on these 18 scored 0.41
# (same-sentence set 0.43), on all 67 (with MFCC and spectral shape, which also name the voice) 0.29.
PROSODY_FEATURES = 18


def prosody_vector(audio: np.ndarray) -> torch.Tensor:
    """The prosodic functionals an emotion head with ``prosody_dim`` reads, of 16 kHz mono audio."""
    from emoslm.perception.features import prosodic_features

    return torch.from_numpy(prosodic_features(audio)[:PROSODY_FEATURES].copy())


def prosody_size() -> int:
    return PROSODY_FEATURES
