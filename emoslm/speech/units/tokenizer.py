"""Speech → discrete units: a vector-quantiser bottleneck on the frozen Whisper encoder.

The paper's model speaks in CosyVoice's "supervised semantic tokens": an ASR encoder whose frames are
quantised so that the tokens keep what recognition needs. No such tokenizer can be installed here, so
emoslm makes its own the same way (as WhisperSpeech did): Whisper base's encoder frames (50 Hz) go
through a small MLP into a cosine vector quantiser (EMA codebook, dead-code restarts), and the chosen
codes come back through a projection, a positional embedding and one transformer layer into the frozen
Whisper *decoder*, whose transcript loss trains the bottleneck (``emoslm.train.units``). Only what the
decoder needs to write the words survives the bottleneck; some tempo and pitch survive too.

``kind: kmeans`` is the baseline the literature warns about: k-means centroids of the L2-normalised
frames, no training signal from the text. How the frames are compared matters more than the quantiser: in
Whisper base's last layer five of 512 dimensions hold 31 % of the squared norm and the constant mean 27 %
(in its 4th layer five hold 76 %), so a cosine k-means mostly sorts frames by those. Standardising each
dimension first (``standardise: true``) cut the resynthesis WER on unheard voices and texts from 0.76 to
0.43, and the 4th layer's frames (``layers: 4``) to 0.39 (``reports/units-decoder``). Both kinds share
this class, the folder format (``config.json`` + ``model.safetensors``; the encoder is named, not copied)
and ``encode``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emoslm.errors import EmoslmError

ENCODER_RATE = 50.0  # Whisper encoder frames per second
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class Units:
    """Discrete speech units and their frame rate (frames per second)."""

    codes: np.ndarray  # int64, (frames,)
    rate: float

    @property
    def seconds(self) -> float:
        return len(self.codes) / self.rate


@dataclass
class TokenizerConfig:
    kind: str = "vq"  # vq | kmeans
    encoder: str = "whisper-base"  # registry name of the (CTranslate2) Whisper whose encoder is frozen here
    codes: int = 1024
    pool: int = 1  # frames averaged per unit: 1 → 50 Hz, 2 → 25 Hz
    code_dim: int = 64  # the quantiser works in this (small) space, by cosine similarity
    width: int = 512  # the encoder's d_model
    decay: float = 0.99  # EMA of the codebook
    commitment: float = 0.25
    dead_below: float = 0.1  # a code whose EMA use per batch falls below this is restarted on a live frame
    layers: int = 0  # encoder layers run (0: all, with the final LayerNorm; 4: Whisper base's 4th layer's output)
    standardise: bool = False  # kmeans: each dimension less its training mean, over its training std, first

    @property
    def rate(self) -> float:
        return ENCODER_RATE / self.pool


class CosineEMAQuantizer(nn.Module):
    """Nearest code by cosine similarity; the codebook follows the assigned vectors by EMA (no gradient),
    the input gets a straight-through gradient plus a commitment loss. Usage is tracked per code so that
    dead codes can be restarted on live vectors (the common cure for a collapsing codebook)."""

    def __init__(self, codes: int, dim: int, decay: float = 0.99) -> None:
        super().__init__()
        self.decay = decay
        init = nn.functional.normalize(torch.randn(codes, dim), dim=-1)
        self.register_buffer("codebook", init)
        self.register_buffer("embed_sum", init.clone())
        self.register_buffer("usage", torch.zeros(codes))  # all dead: the first restart seeds codes from data

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        return (nn.functional.normalize(x, dim=-1) @ self.codebook.T).argmax(-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(quantised x with straight-through gradient, codes, commitment loss) for x (batch, frames, dim)."""
        x = nn.functional.normalize(x, dim=-1)
        codes = (x @ self.codebook.T).argmax(-1)
        quantised = self.codebook[codes]
        keep = mask.unsqueeze(-1).to(x.dtype)
        commit = (((x - quantised.detach()) ** 2) * keep).sum() / keep.sum().clamp(min=1) / x.shape[-1]
        if self.training:
            self._update(x.detach(), codes, mask)
        return x + (quantised - x).detach(), codes, commit

    @torch.no_grad()
    def _update(self, x: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> None:
        flat, chosen = x[mask.bool()].float(), codes[mask.bool()]
        onehot = nn.functional.one_hot(chosen, self.codebook.shape[0]).float()
        counts, sums = onehot.sum(0), onehot.T @ flat
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)  # every rank moves the codebook the same way
            torch.distributed.all_reduce(sums)
        self.usage.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.codebook.copy_(nn.functional.normalize(self.embed_sum, dim=-1))

    @torch.no_grad()
    def restart_dead(self, x: torch.Tensor, mask: torch.Tensor, below: float, generator: torch.Generator) -> int:
        """Move codes used less than ``below`` times per batch (EMA) onto random live vectors of this batch."""
        dead = (self.usage < below).nonzero().flatten()
        live = nn.functional.normalize(x[mask.bool()].detach().float(), dim=-1)
        if len(dead) == 0 or len(live) == 0:
            return 0
        picks = torch.randint(len(live), (len(dead),), generator=generator).to(live.device)
        picked = live[picks].contiguous()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(picked, 0)  # rank 0's choice, so every rank keeps one codebook
        self.codebook[dead] = picked.to(self.codebook.dtype)
        self.embed_sum[dead] = picked.to(self.codebook.dtype)
        self.usage[dead] = 2 * below  # a restarted code has a few batches to be chosen before it is dead again
        return int(len(dead))


class Bottleneck(nn.Module):
    """Encoder frames → units (``codes``) and units → frames for the Whisper decoder (``forward``)."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        d = config.width
        if config.kind == "kmeans":
            self.register_buffer("centroids", torch.zeros(config.codes, d))
            if config.standardise:  # a few dimensions (and the mean) otherwise decide the cosine
                self.register_buffer("mean", torch.zeros(d))
                self.register_buffer("std", torch.ones(d))
            return
        self.pre = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, config.code_dim))
        self.quantizer = CosineEMAQuantizer(config.codes, config.code_dim, config.decay)
        self.post = nn.Linear(config.code_dim, d)
        self.positions = nn.Parameter(torch.zeros(1500, d))
        self.mixer = nn.TransformerEncoderLayer(d, nhead=8, dim_feedforward=2 * d, dropout=0.0, batch_first=True,
                                                norm_first=True)

    def pool(self, frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.config.pool
        if p == 1:
            return frames, mask
        t = frames.shape[1] // p * p
        return frames[:, :t].unflatten(1, (-1, p)).mean(2), mask[:, :t].unflatten(1, (-1, p)).amin(2)

    def codes(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, units) codes of encoder frames (batch, frames, width)."""
        mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device) if mask is None else mask
        frames, mask = self.pool(frames, mask)
        if self.config.kind == "kmeans":
            return (self.kmeans_rows(frames) @ self.centroids.T).argmax(-1)
        return self.quantizer.nearest(self.pre(frames))

    def kmeans_rows(self, frames: torch.Tensor) -> torch.Tensor:
        """(Pooled) frames as k-means compares them: standardised where configured, then L2-normalised."""
        if self.config.standardise:
            frames = (frames - self.mean) / self.std
        return nn.functional.normalize(frames, dim=-1)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Quantise and rebuild decoder memory: {memory, memory_mask, codes, commit, latent}."""
        frames, mask = self.pool(frames, mask)
        latent = self.pre(frames)
        quantised, codes, commit = self.quantizer(latent, mask)
        memory, memory_mask = self._memory(quantised, mask)
        return {"memory": memory, "memory_mask": memory_mask, "codes": codes, "commit": commit, "latent": latent}

    def memory(self, codes: torch.Tensor) -> torch.Tensor:
        """What the Whisper decoder reads for (batch, units) codes: lets one hear what the units alone keep."""
        mask = torch.ones(codes.shape, dtype=torch.bool, device=codes.device)
        return self._memory(self.quantizer.codebook[codes], mask)[0]

    def _memory(self, quantised: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memory = self.post(quantised)
        memory = memory.repeat_interleave(self.config.pool, dim=1) if self.config.pool > 1 else memory
        memory_mask = mask.repeat_interleave(self.config.pool, dim=1) if self.config.pool > 1 else mask
        memory = memory + self.positions[: memory.shape[1]]
        return self.mixer(memory, src_key_padding_mask=~memory_mask.bool()), memory_mask


class SpeechTokenizer:
    """``encode(audio) → Units``; a ``save_pretrained`` / ``from_pretrained`` folder."""

    def __init__(self, config: TokenizerConfig, bottleneck: Bottleneck | None = None) -> None:
        self.config = config
        self.bottleneck = (bottleneck or Bottleneck(config)).eval()

    @property
    def rate(self) -> float:
        return self.config.rate

    @cached_property
    def encoder(self) -> Any:
        from emoslm.speech.whisper_ct2 import load_whisper_encoder

        return load_whisper_encoder(self.config.encoder, self.config.layers)

    @cached_property
    def front_end(self) -> Any:
        from emoslm.speech.mel_front_end import MelFrontEnd

        return MelFrontEnd.for_mels(int(self.encoder.config.num_mel_bins))

    def frames(self, audio: np.ndarray) -> torch.Tensor:
        """(frames, width) frozen encoder output for 16 kHz audio, 30 s windows joined for longer audio."""
        from emoslm.speech.whisper_ct2 import encode

        window = 30 * 16_000
        parts = []
        with torch.inference_mode():
            for start in range(0, max(1, len(audio)), window):
                piece = audio[start:start + window]
                if len(piece) < 320:  # shorter than one encoder frame
                    break
                parts.append(encode(self.encoder, self.front_end.tensor(piece)[None])[0])
        return torch.cat(parts) if parts else torch.zeros(0, self.config.width)

    def encode_frames(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Units of already computed encoder frames (training caches them)."""
        with torch.inference_mode():
            x = torch.as_tensor(np.asarray(frames), dtype=torch.float32)[None]
            return self.bottleneck.codes(x)[0].numpy().astype(np.int64)

    def encode(self, audio: np.ndarray) -> Units:
        """16 kHz mono float32 audio → units at ``rate`` per second."""
        return Units(self.encode_frames(self.frames(np.asarray(audio, dtype=np.float32))), self.rate)

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        from emoslm.atomic import atomic_dir

        with atomic_dir(Path(folder)) as tmp:
            (tmp / CONFIG).write_text(json.dumps({"type": "emoslm-speech-tokenizer", **asdict(self.config)}, indent=1))
            state = {k: v.detach().cpu().contiguous() for k, v in self.bottleneck.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> SpeechTokenizer:
        from safetensors.torch import load_file

        config = _read_config(Path(folder), "emoslm-speech-tokenizer", "a speech tokenizer (emoslm units train)")
        bottleneck = Bottleneck(TokenizerConfig(**config))
        bottleneck.load_state_dict(load_file(str(Path(folder) / WEIGHTS)))
        return cls(bottleneck.config, bottleneck)


def _read_config(folder: Path, kind: str, what: str) -> dict[str, Any]:
    path = folder / CONFIG
    if not path.exists():
        raise EmoslmError(f"{folder}: not {what} folder (no {CONFIG})")
    config = json.loads(path.read_text())
    if config.pop("type", None) != kind:
        raise EmoslmError(f"{folder}: {CONFIG} is not {what}")
    return config


def codebook_stats(codes: torch.Tensor, size: int) -> dict[str, float]:
    """Codes used and perplexity (exp of the entropy of code use): how much of the codebook carries speech."""
    counts = torch.bincount(codes.flatten().cpu(), minlength=size).float()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codes_used": float((counts > 0).sum()), "perplexity": float(entropy.exp())}
