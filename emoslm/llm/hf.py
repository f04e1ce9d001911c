"""`transformers` backend (PyTorch): the path training and the unified model build on.

It loads the same GGUF files as llama.cpp. Dequantising a GGUF takes tens of seconds and the
result cannot be saved directly ("quantized with gguf"), so the first load rebuilds the model
from its config, copies the weights and writes a plain safetensors checkpoint into the cache;
later loads take well under a second.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

from emoslm.atomic import atomic_dir
from emoslm.config import settings
from emoslm.errors import BackendError, MissingPackageError
from emoslm.llm.base import LLM, ChatTemplate, Message, Sampling, StopMatcher, StreamEnd
from emoslm.store import resolve

_READY = "emoslm-converted.ok"


def _require_transformers() -> Any:
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError:
        raise MissingPackageError("transformers", "the transformers LLM backend", "emoslm[torch]") from None
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


def hf_checkpoint(model: str) -> str:
    """A directory (or hub id) ``from_pretrained`` can load; GGUF files are converted once into the cache."""
    resolved = resolve(model)
    if resolved.path is None:
        return str(resolved.hub_id)
    if resolved.path.is_dir():
        return str(resolved.path)
    if resolved.path.suffix != ".gguf":
        raise BackendError(f"{model}: expected a GGUF file or a model directory, got {resolved.path.name}")
    out = settings().cache_dir / "hf" / resolved.path.stem
    if not (out / _READY).exists():
        _convert_gguf(resolved.path, out)
    return str(out)


def _convert_gguf(gguf: Path, out: Path) -> None:
    transformers = _require_transformers()
    import torch

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    with atomic_dir(out) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _READY).write_text(f"converted from {gguf}\n")


class TransformersLLM(LLM):
    """A causal LM in PyTorch, stepped token by token over one KV cache (``emoslm.llm.decoding``)."""

    backend = "transformers"

    def __init__(self, model: str = "smollm2-135m-instruct", dtype: str = "float32", device: str = "cpu") -> None:
        transformers = _require_transformers()
        import torch

        checkpoint = hf_checkpoint(model)
        self.name = resolve(model).name
        self.device = device
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            checkpoint, dtype=getattr(torch, dtype)
        ).to(device).eval()
        self.template = ChatTemplate.from_tokenizer(self.tokenizer)

    def native_think(self) -> bool:
        return len(self.tokenizer("<think>", add_special_tokens=False).input_ids) == 1

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        return self.template.render(messages, add_generation_prompt=add_generation_prompt)

    def _stream(self, prompt: str, s: Sampling) -> Generator[str, None, StreamEnd]:
        from emoslm.llm.decoding import Detokenizer, TokenLoop, end_ids

        ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        loop, text, stops = TokenLoop(self.model, s, self.device), Detokenizer(self.tokenizer), StopMatcher(s.stop)
        ends = end_ids(self.tokenizer)
        loop.feed(ids)
        for count in range(1, s.max_tokens + 1):
            token = loop.sample()
            if token in ends:
                break
            safe, stopped = stops.feed(text.add(token))
            yield safe
            if stopped:
                return StreamEnd(len(ids), count, "stop")
            loop.feed([token])
        else:
            yield stops.flush()
            return StreamEnd(len(ids), s.max_tokens, "length")
        yield stops.flush()
        return StreamEnd(len(ids), count - 1, "stop")
