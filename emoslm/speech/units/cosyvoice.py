"""The paper's own units, for users who have CosyVoice's weights: its speech tokenizer (ONNX) and its
token2wav (flow matching + HiFT), loaded from a local model folder (e.g. ``CosyVoice2-0.5B``).

GOAT-SLM's speech branch predicts CosyVoice's supervised semantic tokens: v1 is 50 Hz with 4,096 codes,
v2 is 25 Hz with 6,561 (FSQ). The tokenizer is one ONNX file that only needs ``onnxruntime`` (an emoslm
dependency) and the 128-bin Whisper log-mel; token2wav needs the CosyVoice code itself (its model classes
are built from the folder's YAML), imported lazily. Nothing here downloads anything, and neither the
weights nor the CosyVoice package can be installed on the machines emoslm is developed on: this code was
written against the public sources and tested only up to the point where the weights are needed.
"""

from __future__ import annotations

import inspect
import uuid
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from emoslm.errors import EmoslmError
from emoslm.speech.units.tokenizer import Units

TOKENIZERS = {"speech_tokenizer_v2.onnx": (25.0, 6561), "speech_tokenizer_v1.onnx": (50.0, 4096)}
MAX_SECONDS = 30.0


def tokenizer_file(folder: str | Path) -> Path:
    """The folder's tokenizer ONNX (v2 preferred), or one line saying what is missing and where to get it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EmoslmError(f"{folder}: no such CosyVoice model folder (download e.g. FunAudioLLM/CosyVoice2-0.5B "
                          "where you have a model hub, then pass its path)")
    for name in TOKENIZERS:
        if (folder / name).exists():
            return folder / name
    raise EmoslmError(f"{folder}: no speech_tokenizer_v1.onnx or speech_tokenizer_v2.onnx here; "
                      "it is not a CosyVoice model folder")


class CosyVoiceTokenizer:
    """``encode(audio) → Units`` with CosyVoice's ONNX speech tokenizer (v1 50 Hz / 4096, v2 25 Hz / 6561)."""

    def __init__(self, folder: str | Path, threads: int = 1) -> None:
        self.path = tokenizer_file(folder)
        self.rate, self.codes = TOKENIZERS[self.path.name]
        self.threads = threads

    @cached_property
    def session(self) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        return onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    @cached_property
    def front_end(self) -> Any:
        from emoslm.speech.mel_front_end import MelFrontEnd

        return MelFrontEnd.for_mels(128)  # Whisper's log-mel with 128 bins, as CosyVoice computes it

    def features(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ONNX inputs: ``feats`` (1, 128, frames) float32 and ``feats_length`` (1,) int32."""
        audio = np.asarray(audio, np.float32)
        if len(audio) > MAX_SECONDS * 16_000:
            raise EmoslmError(f"CosyVoice's tokenizer takes at most {MAX_SECONDS:.0f} s of audio; "
                              f"this is {len(audio) / 16_000:.1f} s — cut it into turns first")
        mel = self.front_end(audio)[None]
        return mel.astype(np.float32), np.array([mel.shape[2]], np.int32)

    def encode(self, audio: np.ndarray) -> Units:
        feats, length = self.features(audio)
        names = [i.name for i in self.session.get_inputs()]
        tokens = self.session.run(None, dict(zip(names, (feats, length), strict=True)))[0]
        return Units(np.asarray(tokens, np.int64).reshape(-1), self.rate)


class CosyVoiceDecoder:
    """``decode(units, speaker) → audio`` with CosyVoice's token2wav (flow matching + HiFT), from the folder.

    ``speaker``: a name in the folder's ``spk2info.pt`` (SFT models) or a speaker embedding (CAM++, 192
    floats). Needs the CosyVoice code importable (its repository on ``PYTHONPATH``, with Matcha-TTS).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        tokenizer_file(self.folder)
        try:
            from cosyvoice.cli.cosyvoice import CosyVoice, CosyVoice2
        except ImportError:
            raise EmoslmError("CosyVoice's token2wav needs the CosyVoice code: clone FunAudioLLM/CosyVoice, install "
                              "its requirements and put it (and third_party/Matcha-TTS) on PYTHONPATH") from None
        is_v2 = (self.folder / "cosyvoice2.yaml").exists()
        self.cosyvoice = (CosyVoice2 if is_v2 else CosyVoice)(str(self.folder), load_jit=False, load_trt=False)
        self.sample_rate = int(self.cosyvoice.sample_rate)

    def embedding(self, speaker: str | np.ndarray | None) -> Any:
        import torch

        if speaker is None or isinstance(speaker, str):
            speakers = getattr(self.cosyvoice.frontend, "spk2info", {}) or {}
            name = speaker or next(iter(speakers), None)
            if name not in speakers:
                raise EmoslmError(f"speaker {name!r} is not in {self.folder}/spk2info.pt; pass a CAM++ embedding")
            info = speakers[name]
            return info.get("llm_embedding", info.get("embedding"))
        return torch.as_tensor(np.asarray(speaker, np.float32)).reshape(1, -1)

    def decode(self, units: Any, speaker: str | np.ndarray | None = None, speed: float = 1.0) -> np.ndarray:
        import torch

        model = self.cosyvoice.model
        codes = torch.as_tensor(np.asarray(getattr(units, "codes", units), np.int64)).reshape(1, -1)
        session = str(uuid.uuid4())
        for name, empty in (("hift_cache_dict", None), ("mel_overlap_dict", torch.zeros(1, 80, 0)),
                            ("flow_cache_dict", torch.zeros(1, 80, 0, 2))):
            if hasattr(model, name):
                getattr(model, name)[session] = empty
        arguments = {"token": codes, "prompt_token": torch.zeros(1, 0, dtype=torch.int32),
                     "prompt_feat": torch.zeros(1, 0, 80), "embedding": self.embedding(speaker), "uuid": session,
                     "token_offset": 0, "finalize": True, "speed": speed}
        accepted = inspect.signature(model.token2wav).parameters
        with torch.inference_mode():
            wav = model.token2wav(**{k: v for k, v in arguments.items() if k in accepted})
        for name in ("hift_cache_dict", "mel_overlap_dict", "flow_cache_dict"):
            getattr(model, name, {}).pop(session, None)
        return wav.reshape(-1).float().cpu().numpy()

    def streamer(self, speaker: str | np.ndarray | None = None, style: Any = None) -> _Whole:
        """Units pushed as a model writes them; token2wav runs once the speech has ended (not streamed here:
        CosyVoice's chunked token2wav needs its own caches, which were not built without the weights)."""
        return _Whole(self, speaker)


class _Whole:
    def __init__(self, decoder: CosyVoiceDecoder, speaker: str | np.ndarray | None) -> None:
        self.decoder, self.speaker, self.codes = decoder, speaker, []

    def feed(self, codes: Any) -> list[np.ndarray]:
        self.codes += [int(c) for c in np.asarray(codes).reshape(-1)]
        return []

    def flush(self) -> list[np.ndarray]:
        audio = self.decoder.decode(self.codes, self.speaker) if self.codes else np.zeros(0, np.float32)
        return [audio] if audio.size else []
