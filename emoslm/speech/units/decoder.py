"""Units → speech: a small non-autoregressive unit-to-mel network and the packaged HiFi-GAN.

The units are frame-aligned (one per 20 ms at 50 Hz), so no duration model is needed: each unit's
embedding, plus a speaker vector and a small style vector, goes through a few ConvNeXt blocks at the unit
rate, is repeated up to the mel rate (100 frames/s) and through a few more, into the 80-bin log-mel the
packaged ``hifigan-16k`` vocoder expects (``emoslm.speech.vocoder``). Trained with an L1 mel loss
(``emoslm.train.units``), it is over-smoothed next to flow matching but small enough for this CPU.

- **speaker**: the mean normalised log-mel of a few clips of the voice (its spectral envelope), so an
  unheard voice can be enrolled from audio; named voices are stored in the folder.
- **style**: four numbers from a ``Prosody`` (log rate, pitch in octaves·3, log energy, log variability),
  so an emotion's prosody can be voiced; ``style_of`` estimates them from audio for resynthesis.

Streaming (``decode_stream``): the convolutions see ``context`` units on each side, so a chunk of units
computed with that much left context and look-ahead gives exactly the offline mel; the vocoder runs on
each new mel chunk with a left-context cache, and consecutive audio chunks are cross-faded over a short
overlap so they join without clicks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emoslm.speech.prosody import Prosody, acted
from emoslm.speech.units.tokenizer import CONFIG, WEIGHTS, _read_config
from emoslm.speech.vocoder import HOP, N_MELS, log_mel

MEL_RATE = 100.0  # vocoder frames per second (hop 160 at 16 kHz)
SPEAKERS = "speakers.json"
STYLE_DIM = 4


def style_vector(prosody: Prosody | None) -> np.ndarray:
    """The decoder's style input for a prosody (neutral prosody → zeros)."""
    p = prosody or Prosody()
    return np.array([math.log(p.rate), p.pitch / 4.0, math.log(p.energy), math.log(p.variability)], np.float32)


@dataclass
class DecoderConfig:
    codes: int = 1024
    unit_rate: float = 50.0
    channels: int = 256
    unit_blocks: int = 3
    mel_blocks: int = 3
    kernel: int = 5
    n_mels: int = N_MELS
    mel_mean: float = -6.0  # log-mel normalisation, measured on the training clips
    mel_std: float = 2.5
    vocoder: str = "hifigan-16k"
    default_speaker: str = ""
    tokenizer: str = ""  # the tokenizer folder whose units this decoder was trained on (provenance)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def upsample(self) -> int:
        return int(round(MEL_RATE / self.unit_rate))

    @property
    def context(self) -> int:
        """Units each output unit depends on, on either side (the convolutions' reach)."""
        half = self.kernel // 2
        return self.unit_blocks * half + math.ceil(self.mel_blocks * half / self.upsample)


class ConvNeXtBlock(nn.Module):
    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 3 * channels), nn.GELU(), nn.Linear(3 * channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, channels, time)
        y = self.norm(self.depthwise(x).transpose(1, 2))
        return x + self.mlp(y).transpose(1, 2)


class UnitToMel(nn.Module):
    """(codes (batch, units), speaker (batch, n_mels), style (batch, 4)) → normalised log-mel (batch, n_mels, mel)."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.embed = nn.Embedding(config.codes, c)
        self.speaker = nn.Linear(config.n_mels, c)
        self.style = nn.Linear(STYLE_DIM, c)
        self.unit_blocks = nn.Sequential(*[ConvNeXtBlock(c, config.kernel) for _ in range(config.unit_blocks)])
        self.mel_blocks = nn.Sequential(*[ConvNeXtBlock(c, config.kernel) for _ in range(config.mel_blocks)])
        self.out = nn.Conv1d(c, config.n_mels, 1)
        # style from audio (for resynthesis): the clip's mel statistics next to the speaker's
        self.style_head = nn.Sequential(nn.Linear(3 * config.n_mels, 128), nn.GELU(), nn.Linear(128, STYLE_DIM))

    def forward(self, codes: torch.Tensor, speaker: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = self.embed(codes) + (self.speaker(speaker) + self.style(style))[:, None, :]
        x = self.unit_blocks(x.transpose(1, 2))
        x = x.repeat_interleave(self.config.upsample, dim=2)
        return self.out(self.mel_blocks(x))

    def predict_style(self, mel: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        """Style (batch, 4) of normalised mels (batch, n_mels, frames) spoken by ``speaker``."""
        return self.style_head(torch.cat([mel.mean(2), mel.std(2), speaker], dim=1))


class UnitDecoder:
    """``decode(units, speaker, style) → audio`` and ``decode_stream(unit chunks) → audio chunks`` (16 kHz)."""

    sample_rate = 16_000

    def __init__(self, config: DecoderConfig, model: UnitToMel | None = None,
                 speakers: dict[str, np.ndarray] | None = None) -> None:
        self.config = config
        self.model = (model or UnitToMel(config)).eval()
        self.speakers = dict(speakers or {})

    @cached_property
    def vocoder(self) -> Any:
        from emoslm.speech.vocoder import HifiGanVocoder

        return HifiGanVocoder(self.config.vocoder)

    # ---- conditioning
    def normalise(self, mel: np.ndarray) -> np.ndarray:
        return (mel - self.config.mel_mean) / self.config.mel_std

    def speaker_of(self, audios: Iterable[np.ndarray]) -> np.ndarray:
        """Enrol a voice: the mean normalised log-mel over the voiced frames of its clips."""
        frames = []
        for audio in audios:
            mel = self.normalise(log_mel(np.asarray(audio, np.float32)))
            energy = mel.mean(0)
            frames.append(mel[:, energy > np.percentile(energy, 30)] if mel.shape[1] > 3 else mel)
        return np.concatenate(frames, axis=1).mean(1).astype(np.float32)

    def speaker_vector(self, speaker: str | np.ndarray | None) -> np.ndarray:
        if speaker is None or (isinstance(speaker, str) and not speaker):
            speaker = self.config.default_speaker or next(iter(self.speakers), "")
        if isinstance(speaker, str):
            if speaker not in self.speakers:
                from emoslm.errors import EmoslmError

                known = ", ".join(sorted(self.speakers)) or "none"
                raise EmoslmError(f"unknown speaker {speaker!r} for this decoder; known: {known} "
                                  "(or enrol one from audio with --speaker-audio)")
            return self.speakers[speaker]
        return np.asarray(speaker, np.float32)

    def style_vector(self, style: str | Prosody | np.ndarray | None) -> np.ndarray:
        if isinstance(style, str):
            return style_vector(acted(style))
        if isinstance(style, Prosody) or style is None:
            return style_vector(style)
        return np.asarray(style, np.float32)

    def style_of(self, audio: np.ndarray, speaker: str | np.ndarray | None = None) -> np.ndarray:
        """The style (4 numbers) an audio clip was spoken with, estimated for resynthesis."""
        mel = torch.from_numpy(self.normalise(log_mel(np.asarray(audio, np.float32))))[None]
        spk = torch.from_numpy(self.speaker_vector(speaker))[None]
        with torch.inference_mode():
            return self.model.predict_style(mel, spk)[0].numpy()

    # ---- decoding
    def mel(self, codes: np.ndarray, speaker: np.ndarray, style: np.ndarray) -> np.ndarray:
        """(n_mels, frames) log-mel for a run of units."""
        with torch.inference_mode():
            out = self.model(torch.as_tensor(np.asarray(codes, np.int64))[None],
                             torch.from_numpy(speaker)[None], torch.from_numpy(style)[None])[0].numpy()
        return out * self.config.mel_std + self.config.mel_mean

    def decode(self, units: Any, speaker: str | np.ndarray | None = None,
               style: str | Prosody | np.ndarray | None = None) -> np.ndarray:
        """Units (``Units`` or ints) → float32 16 kHz audio."""
        codes = np.asarray(getattr(units, "codes", units), np.int64)
        if codes.size == 0:
            return np.zeros(0, np.float32)
        mel = self.mel(codes, self.speaker_vector(speaker), self.style_vector(style))
        return self.vocoder.mel_to_audio(mel)[: mel.shape[1] * HOP]

    def decode_stream(self, chunks: Iterable[Any], speaker: str | np.ndarray | None = None,
                      style: str | Prosody | np.ndarray | None = None, chunk_units: int = 10,
                      max_chunk_units: int = 50, vocoder_context: int = 16, overlap: int = 4
                      ) -> Iterator[np.ndarray]:
        """Unit chunks in (any sizes, as a generator writes them), audio chunks out.

        A mel chunk is computed once ``context`` further units have arrived (or the stream ended), with
        ``context`` units of history: it equals the offline mel. The first chunk is ``chunk_units`` long
        (first audio early), each next one twice the last up to ``max_chunk_units`` (fewer vocoder calls,
        as CosyVoice's growing hops). Its audio comes from the vocoder run on the chunk with
        ``vocoder_context`` mel frames of history; the last ``overlap`` frames are held back and
        cross-faded with the next chunk's rendering of them."""
        streamer = self.streamer(speaker, style, chunk_units, max_chunk_units, vocoder_context, overlap)
        for chunk in chunks:
            yield from streamer.feed(getattr(chunk, "codes", chunk))
        yield from streamer.flush()

    def streamer(self, speaker: str | np.ndarray | None = None, style: str | Prosody | np.ndarray | None = None,
                 chunk_units: int = 10, max_chunk_units: int = 50, vocoder_context: int = 16, overlap: int = 4
                 ) -> UnitStreamer:
        """``decode_stream`` as a push object, for a caller that interleaves units with other work (the unified
        model writes text and units in lock-step): ``feed(codes)`` and ``flush()`` return ready audio chunks."""
        return UnitStreamer(_MelStream(self, self.speaker_vector(speaker), self.style_vector(style), chunk_units,
                                       max_chunk_units), _AudioJoiner(self.vocoder, vocoder_context, overlap))

    # ---- folders
    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        from emoslm.atomic import atomic_dir

        with atomic_dir(Path(folder)) as tmp:
            (tmp / CONFIG).write_text(json.dumps({"type": "emoslm-unit-decoder", **asdict(self.config)}, indent=1))
            (tmp / SPEAKERS).write_text(json.dumps({k: [round(float(x), 5) for x in v]
                                                    for k, v in self.speakers.items()}, indent=1))
            save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                      str(tmp / WEIGHTS))

    @staticmethod
    def config_of(folder: str | Path) -> DecoderConfig:
        return DecoderConfig(**_read_config(Path(folder), "emoslm-unit-decoder", "a unit decoder (emoslm units train)"))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> UnitDecoder:
        from safetensors.torch import load_file

        folder = Path(folder)
        config = cls.config_of(folder)
        model = UnitToMel(config)
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
        speakers = {k: np.asarray(v, np.float32) for k, v in json.loads((folder / SPEAKERS).read_text()).items()} \
            if (folder / SPEAKERS).exists() else {}
        return cls(config, model, speakers)


class UnitStreamer:
    """Units pushed in pieces → audio chunks as soon as each is ready (see ``UnitDecoder.decode_stream``)."""

    def __init__(self, mels: _MelStream, joiner: _AudioJoiner) -> None:
        self.mels, self.joiner = mels, joiner

    def feed(self, codes: Any) -> list[np.ndarray]:
        return self._audio(self.mels.feed(np.asarray(codes, np.int64).reshape(-1)))

    def flush(self) -> list[np.ndarray]:
        chunks = self._audio(self.mels.flush())
        if (tail := self.joiner.flush()).size:
            chunks.append(tail)
        return chunks

    def _audio(self, mels: Iterator[np.ndarray]) -> list[np.ndarray]:
        return [audio for mel in mels if (audio := self.joiner.feed(mel)).size]


class _MelStream:
    """Units arriving in pieces → exact mel chunks (each waits for ``context`` units of look-ahead)."""

    def __init__(self, decoder: UnitDecoder, speaker: np.ndarray, style: np.ndarray, chunk: int,
                 max_chunk: int | None = None) -> None:
        self.decoder, self.speaker, self.style = decoder, speaker, style
        self.chunk, self.context = max(1, chunk), decoder.config.context
        self.max_chunk = max(self.chunk, max_chunk or self.chunk)
        self.codes = np.zeros(0, np.int64)
        self.done = 0  # units whose mel has been given out

    def feed(self, codes: np.ndarray) -> Iterator[np.ndarray]:
        self.codes = np.concatenate([self.codes, codes])
        while len(self.codes) - self.done >= self.chunk + self.context:
            yield self._emit(self.done + self.chunk, final=False)

    def flush(self) -> Iterator[np.ndarray]:
        while self.done < len(self.codes):
            yield self._emit(min(len(self.codes), self.done + self.chunk), final=True)

    def _emit(self, end: int, final: bool) -> np.ndarray:
        start = max(0, self.done - self.context)
        stop = len(self.codes) if final else min(len(self.codes), end + self.context)
        mel = self.decoder.mel(self.codes[start:stop], self.speaker, self.style)
        up = self.decoder.config.upsample
        piece = mel[:, (self.done - start) * up:(end - start) * up]
        self.done = end
        self.chunk = min(self.max_chunk, 2 * self.chunk)
        return piece


class _AudioJoiner:
    """Mel chunks → audio chunks: vocoder with a left-context cache, Hann cross-fade over ``overlap`` frames."""

    def __init__(self, vocoder: Any, context: int, overlap: int) -> None:
        self.vocoder, self.context, self.overlap = vocoder, max(context, overlap), overlap
        self.history = np.zeros((N_MELS, 0), np.float32)  # mel already rendered (its last frames are context)
        self.held = np.zeros(0, np.float32)  # audio of the last ``overlap`` frames, not yet given out

    def feed(self, mel: np.ndarray) -> np.ndarray:
        left = self.history[:, max(0, self.history.shape[1] - self.context):]
        rendered = self.vocoder.mel_to_audio(np.concatenate([left, mel], axis=1))
        n_left = left.shape[1]
        audio = rendered[n_left * HOP:(n_left + mel.shape[1]) * HOP]
        if self.held.size:  # the previous chunk's tail, rendered again here with more context: cross-fade
            redo = rendered[n_left * HOP - len(self.held):n_left * HOP]
            fade = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, len(redo), dtype=np.float32))
            audio = np.concatenate([self.held * (1 - fade) + redo * fade, audio])
        self.history = np.concatenate([self.history, mel], axis=1)[:, -max(self.context, 1):]  # context >= overlap
        keep = min(self.overlap * HOP, len(audio))
        out, self.held = audio[: len(audio) - keep], audio[len(audio) - keep:]
        return out.astype(np.float32)

    def flush(self) -> np.ndarray:
        out, self.held = self.held, np.zeros(0, np.float32)
        return out.astype(np.float32)
