"""Frozen-encoder frames per clip, computed once and kept on disk.

Every stage keeps the Whisper encoder frozen, so its output for a clip never changes; running it on every
step of every epoch (and decoding the clip each time) was most of a CPU training step. A clip's frames are
stored under the hash of its bytes inside a folder named by the hash of the encoder's weights and the mel
front end's settings, so a different encoder or front end can never read another's frames, and a rebuilt
clip with new bytes gets new frames. Frames are computed on the model's device, one clip at a time and
unpadded: the same frames the model computes for one clip when it serves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoslm.atomic import atomic_file
from emoslm.audio import load_audio
from emoslm.config import settings
from emoslm.speech.mel_front_end import MelFrontEnd
from emoslm.speech.whisper_ct2 import encode, encode_layers


def encoder_digest(encoder: torch.nn.Module, front_end: MelFrontEnd) -> str:
    """Identifies the frames an encoder + front end produce: a hash of the weights and the mel settings."""
    digest = hashlib.sha256(json.dumps(front_end.extractor.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class ClipCache:
    """``cache(audio_path) → array``: from disk, or computed once (``compute``) and stored under the clip's hash
    in ``folder`` (which names what computes it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._keys: dict[Path, str] = {}

    def path(self, audio: Path) -> Path:
        if audio not in self._keys:  # clips in a build are written once (atomically), so one hash per process
            self._keys[audio] = hashlib.sha256(Path(audio).read_bytes()).hexdigest()[:32]
        key = self._keys[audio]
        return self.folder / key[:2] / f"{key}.npy"

    def __call__(self, audio: Path) -> np.ndarray:
        path = self.path(audio)
        if path.exists():
            return np.load(path)
        frames = self.compute(audio)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, suffix=".npy") as tmp:
            np.save(tmp, frames)
        return frames

    def shape(self, audio: Path) -> tuple[int, ...]:
        """A clip's array shape, read from the file's header (computed and stored first if missing)."""
        path = self.path(audio)
        if not path.exists():
            return self(audio).shape
        return np.load(path, mmap_mode="r").shape

    def compute(self, audio: Path) -> np.ndarray:
        raise NotImplementedError

    def fill(self, clips: Iterable[Path], progress: Callable[[int], None] | None = None) -> int:
        """Compute every missing clip (before training, so no step waits on it); returns how many."""
        made = 0
        for clip in dict.fromkeys(clips):
            if not self.path(clip).exists():
                self(clip)
                made += 1
            if progress:
                progress(1)
        return made


class FrameCache(ClipCache):
    """``cache(audio_path) → (frames, d_model)`` float32: the frozen encoder's frames of a clip; with ``layers``,
    ``(layers + 1, frames, d_model)`` float16: every layer's (for a model that mixes them)."""

    def __init__(self, encoder: torch.nn.Module, front_end: MelFrontEnd, root: Path | None = None,
                 max_seconds: float = 30.0, layers: bool = False) -> None:
        self.encoder, self.front_end, self.layers = encoder, front_end, layers
        self.max_samples = int(max_seconds * 16_000)
        kind = "encoder-layers" if layers else "encoder-frames"
        super().__init__((root or settings().home / "cache") / kind / encoder_digest(encoder, front_end))

    @classmethod
    def for_model(cls, model: Any, front_end: MelFrontEnd, root: Path | None = None) -> FrameCache:
        """The cache of what ``model`` reads: every layer when it mixes them, else the last."""
        return cls(model.encoder, front_end, root, layers=getattr(model, "layer_mix", None) is not None)

    def compute(self, audio: Path) -> np.ndarray:
        """Decode the clip, log-mel it with the model's own front end and run the encoder on it alone."""
        mel = self.front_end.tensor(load_audio(audio)[: self.max_samples])
        device = next(self.encoder.parameters()).device
        with torch.no_grad():
            mel = mel[None].to(device, next(self.encoder.parameters()).dtype)
            if self.layers:
                return encode_layers(self.encoder, mel)[0].float().cpu().numpy().astype(np.float16)
            frames = encode(self.encoder, mel)
        return frames[0].float().cpu().numpy()


class ProsodyCache(ClipCache):
    """``cache(audio_path) → (prosody_dim,)`` float32: a clip's prosodic functionals (what an emotion head with
    ``prosody_dim`` reads beside the adapter's output), computed once per clip."""

    def __init__(self, root: Path | None = None) -> None:
        from emoslm.slm.listen import prosody_size

        super().__init__((root or settings().home / "cache") / f"prosody-{prosody_size()}")

    def compute(self, audio: Path) -> np.ndarray:
        from emoslm.slm.listen import prosody_vector

        return prosody_vector(load_audio(audio)).numpy().astype(np.float32)


class UnitCache(ClipCache):
    """``cache(audio_path) → (units,)`` int64: a speech tokenizer's units of a clip (stage 2's speech targets),
    in a folder named by a hash of the tokenizer's files."""

    def __init__(self, tokenizer: Any, folder: Path, root: Path | None = None, files: list[Path] | None = None
                 ) -> None:
        digest = hashlib.sha256()
        for path in sorted(files or Path(folder).iterdir()):
            if path.is_file():
                digest.update(path.name.encode() + path.read_bytes())
        self.tokenizer = tokenizer
        super().__init__((root or settings().home / "cache" / "units") / digest.hexdigest()[:16])

    def compute(self, audio: Path) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(load_audio(audio)).codes, np.int64)


class PhonemeTargets:
    """Stage 2's speech targets for phoneme units: the reply's own words in Kokoro's symbols, tied to the tokens
    that wrote them (``emoslm.slm.speak.text_steps``), led by the style code of the emotion the think named (the
    prosody the teacher's TTS spoke the reply with). No audio: the units are a function of the text."""

    def __init__(self) -> None:
        from emoslm.speech.units.phonemes import PhonemeVocab

        self.vocab = PhonemeVocab.kokoro()
        self._words: dict[str, list[tuple[int, int, list[int]]]] = {}

    def words(self, reply: str) -> list[tuple[int, int, list[int]]]:
        """(start, end, codes) per word; every word after the first begins with the space symbol."""
        if reply not in self._words:
            from emoslm.speech.units.phonemes import word_phonemes

            space = self.vocab.encode(" ")
            out = []
            for start, end, phonemes in word_phonemes(reply):
                codes = self.vocab.encode(phonemes)
                if codes:
                    out.append((start, end, (space if out else []) + codes))
            self._words[reply] = out
        return self._words[reply]

    def fill(self, replies: list[str], advance: Any = None) -> None:
        for reply in replies:
            self.words(reply)
            if advance:
                advance()

    def steps(self, example: Any, tokenizer: Any, reply_tokens: int, spec: Any, max_steps: int = 0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from emoslm.slm.speak import text_steps

        reply = reply_text(example.target)
        offsets = tokenizer(reply, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        starts = [int(a) for a, _ in offsets[:reply_tokens]]
        cut = int(offsets[reply_tokens - 1][1]) if 0 < reply_tokens < len(offsets) else len(reply)
        words = [w for w in self.words(reply) if w[1] <= cut]
        return text_steps(words, starts, spec, [self.vocab.style(example.emotion or "neutral")], max_steps)


def reply_text(target: str) -> str:
    """The reply part of a stage 1-2 target (after the think and its closing bridge)."""
    from emoslm.think import THINK_CLOSE

    return target.rpartition(f"{THINK_CLOSE}\n\n")[2]
