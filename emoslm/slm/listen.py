"""Listen: Whisper encoder frames → 8× fewer frames → a small transformer → the LLM's embedding space;
and the two pieces that keep the paralinguistics on the way (``LayerMix``, ``EmotionHead``).

The shape follows GOAT-SLM's public code: three Conv1d layers (kernel 5, stride 2, GLU) divide the 50
frames per second of Whisper by eight, a two-layer transformer adapter lets neighbouring frames agree,
and a LayerNorm + projection puts them in the LLM's embedding space, where they replace a stretch of the
user turn's token embeddings.
"""

from __future__ import annotations

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
    frames it reads keep what the emotion needs; alone, on the frozen encoder, it measures what is there."""

    def __init__(self, d_in: int, tags: int, mix_layers: int | None = None, hidden: int = 256) -> None:
        super().__init__()
        self.mix = LayerMix(mix_layers) if mix_layers else None
        self.norm = nn.LayerNorm(d_in)
        self.score = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.classify = nn.Linear(2 * d_in, tags)

    def forward(self, frames: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        if self.mix is not None:
            frames = self.mix(frames)
        frames = self.norm(frames)
        scores = self.score(frames).squeeze(-1)
        if padding is not None:
            scores = scores.masked_fill(padding, float("-inf"))
        weights = torch.softmax(scores, dim=1)[..., None]
        mean = (weights * frames).sum(1)
        spread = (weights * (frames - mean[:, None]) ** 2).sum(1).clamp_min(1e-6).sqrt()
        return self.classify(torch.cat([mean, spread], dim=-1))
