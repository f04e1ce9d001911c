"""`transformers` backend (PyTorch): the path training and the unified model build on.

It loads the same GGUF files as llama.cpp. Dequantising a GGUF takes tens of seconds and the
result cannot be saved directly ("quantized with gguf"), so the first load rebuilds the model
from its config, copies the weights and writes a plain safetensors checkpoint into the cache;
later loads take well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emoslm.atomic import atomic_dir
from emoslm.config import settings
from emoslm.errors import BackendError, MissingPackageError
from emoslm.llm.base import LLM, ChatTemplate, Completion, Message, Sampling, Stopwatch
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
    """A causal LM in PyTorch; generation uses the KV cache of ``generate``."""

    backend = "transformers"

    def __init__(self, model: str = "smollm2-135m-instruct", dtype: str = "float32", device: str = "cpu",
                 threads: int | None = None) -> None:
        transformers = _require_transformers()
        import torch

        torch.set_num_threads(threads or settings().threads)
        checkpoint = hf_checkpoint(model)
        self.name = resolve(model).name
        self.device = device
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            checkpoint, dtype=getattr(torch, dtype)
        ).to(device).eval()
        if not self.tokenizer.chat_template:
            raise BackendError(f"{model}: the tokenizer has no chat template; use a chat/instruct model")
        self.template = ChatTemplate(
            self.tokenizer.chat_template,
            bos_token=self.tokenizer.bos_token or "",
            eos_token=self.tokenizer.eos_token or "",
        )

    def native_think(self) -> bool:
        return len(self.tokenizer("<think>", add_special_tokens=False).input_ids) == 1

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        return self.template.render(messages, add_generation_prompt=add_generation_prompt)

    def complete(self, prompt: str, sampling: Sampling | None = None) -> Completion:
        import torch

        s = sampling or Sampling()
        clock = Stopwatch()
        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(self.device)
        if s.seed is not None:
            torch.manual_seed(s.seed)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=s.max_tokens,
            do_sample=not s.greedy,
            repetition_penalty=s.repeat_penalty,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        if not s.greedy:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
        if s.stop:
            kwargs.update(stop_strings=list(s.stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        new = out[0, ids.shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        finish = "length" if len(new) >= s.max_tokens else "stop"
        for stop in s.stop:  # generate keeps the stop string; the other backends drop it
            if stop in text:
                text = text[: text.index(stop)]
                finish = "stop"
        return Completion(text, ids.shape[1], len(new), finish, clock.elapsed)
