"""`emoslm models verify`: load every offline model and run a one-second job on it.

This is what a user runs first on a new machine: it proves the weights are installed, intact
and loadable, and shows what each costs to load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from emoslm.audio import SAMPLE_RATE
from emoslm.errors import EmoslmError
from emoslm.store import REGISTRY, ModelSpec, resolve, size_on_disk, verify_file


@dataclass
class Check:
    name: str
    role: str
    package: str
    size_mb: float
    status: str
    load_s: float
    smoke_s: float
    detail: str = ""


def test_tone(seconds: float = 1.0) -> np.ndarray:
    """A voiced-like harmonic tone: loud enough to pass the silence check, cheap to make."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.2 * sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 6))).astype(np.float32)


def _llm(name: str) -> tuple[object, Callable[[object], str]]:
    from emoslm.llm.base import Sampling
    from emoslm.llm.llama_cpp import LlamaCppLLM

    model = LlamaCppLLM(name, n_ctx=512)
    return model, lambda m: repr(m.complete("The capital of France is", Sampling(max_tokens=8, temperature=0)).text)


def _asr(name: str) -> tuple[object, Callable[[object], str]]:
    from emoslm.perception.asr import FasterWhisperASR

    model = FasterWhisperASR(name, vad_filter=False)
    return model, lambda m: f"{m.transcribe(test_tone(), language='en').rtf:.2f} RTF"


# registry name → the TTS spec that loads it (Kokoro's weights and its voices load together)
TTS_SPECS = {"kokoro-82m": "kokoro:jm_kumo", "kokoro-voices": "kokoro:jf_alpha", "hibari": "hibari"}


def _tts(name: str) -> tuple[object, Callable[[object], str]]:
    from emoslm.speech.tts import load_tts

    model = load_tts(TTS_SPECS.get(name, f"piper:{name}"))
    line = "你好，今天过得怎么样？" if name.startswith("kokoro") else "Hello there, how are you?"
    return model, lambda m: f"{m.synthesize(line).duration:.1f} s of speech"


def _vocoder(name: str) -> tuple[object, Callable[[object], str]]:
    from emoslm.speech.vocoder import HifiGanVocoder

    model = HifiGanVocoder(name)
    return model, lambda m: f"{len(m.mel_to_audio(m.audio_to_mel(test_tone()))) / SAMPLE_RATE:.1f} s resynthesised"


def _vad(name: str) -> tuple[object, Callable[[object], str]]:
    import onnxruntime

    path = resolve(name).require_path()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(sess: object) -> str:
        state = np.zeros((2, 1, 128), np.float32)
        audio, probs = test_tone(), []
        for start in range(0, len(audio) - 512 + 1, 512):
            out, state = sess.run(None, {"input": audio[None, start:start + 512], "state": state,
                                         "sr": np.array(SAMPLE_RATE, np.int64)})
            probs.append(float(out.ravel()[0]))
        return f"{len(probs)} frames scored"

    return session, run


def _embedding(name: str) -> tuple[object, Callable[[object], str]]:
    from emoslm.perception.text_emotion import load_sentence_model

    model = load_sentence_model(name)
    return model, lambda m: f"{m.encode(['I feel happy today.']).shape[1]}-d embedding"


SMOKE: dict[str, Callable[[str], tuple[object, Callable[[object], str]]]] = {
    "llm": _llm, "asr": _asr, "tts": _tts, "vocoder": _vocoder, "vad": _vad, "embedding": _embedding,
}


def check_model(spec: ModelSpec, rehash: bool = True) -> Check:
    """Locate, checksum, load and exercise one model; failures become a status, never an exception."""
    row = Check(spec.name, spec.role, spec.package, 0.0, "ok", 0.0, 0.0)
    try:
        path = resolve(spec.name).require_path()
        row.size_mb = size_on_disk(path) / 1e6
        if rehash and not verify_file(spec, path):
            row.status, row.detail = "corrupt", f"sha256 mismatch in {path}; delete it to reassemble"
            return row
        start = time.perf_counter()
        model, smoke = SMOKE[spec.role](spec.name)
        row.load_s = time.perf_counter() - start
        start = time.perf_counter()
        row.detail = smoke(model)
        row.smoke_s = time.perf_counter() - start
        close = getattr(model, "close", None)
        if callable(close):
            close()
    except EmoslmError as exc:
        row.status, row.detail = "missing" if "pip install" in str(exc) else "error", str(exc)
    except Exception as exc:  # a broken install must not stop the table
        row.status, row.detail = "error", f"{type(exc).__name__}: {exc}"
    return row


def verify(names: list[str] | None = None) -> list[Check]:
    unknown = [n for n in names or [] if n not in REGISTRY]
    if unknown:
        raise EmoslmError(f"unknown model(s) {', '.join(unknown)}; see `emoslm models list`")
    return [check_model(REGISTRY[n]) for n in (names or list(REGISTRY))]
