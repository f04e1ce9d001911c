"""LLM backends behind one interface (see ``base.LLM``), chosen by a short spec string.

Spec strings, as used on the command line and in recipes:

- ``llama-cpp:smollm2-135m-instruct`` (default) or ``llama-cpp:/path/model.gguf``; options after ``?``:
  ``reuse_prefix=0`` (every prompt evaluated whole: reproducible), ``n_ctx=8192``, ``lora=/path/adapter.gguf``
  (``lora=none``: without the shipped reply adapter), ``slots=4`` (one context serving 4 generations at once,
  batched: a server's sessions then answer together instead of in turn)
- ``transformers:smollm2-135m-instruct`` or ``transformers:Qwen/Qwen3-8B``
- ``http://host:8000/v1`` with ``model=`` and ``template=`` options:
  ``http://localhost:8000/v1?model=Qwen/Qwen3-8B&template=Qwen/Qwen3-8B``
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit, urlunsplit

from emoslm.errors import EmoslmError
from emoslm.language import served
from emoslm.llm.base import LLM, ChatTemplate, Completion, Message, Sampling

DEFAULT_LLM = "llama-cpp:smollm2-135m-instruct"

__all__ = ["LLM", "ChatTemplate", "Completion", "Message", "Sampling", "DEFAULT_LLM", "LLMPool", "load_llm"]

# The reply model per language, chosen on the example dialogues (benchmarks/results/replies.md): Qwen2.5-Coder-
# 1.5B-Instruct with the shipped reply adapter in both. SmolLM2-135M (the tests' model) wrote the user in the
# third person and copied its prompt; Qwen2.5-Coder-0.5B copied the worked examples.
AUTO_LLM = {"en": "llama-cpp:qwen2.5-coder-1.5b-instruct", "zh": "llama-cpp:qwen2.5-coder-1.5b-instruct"}


def load_llm(spec: str = DEFAULT_LLM, **kwargs: object) -> LLM:
    """Build the backend a spec string names."""
    if spec.startswith(("http://", "https://")):
        from emoslm.llm.openai_http import OpenAIHTTPLLM

        parts = urlsplit(spec)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        api_key = query.get("api_key") or os.environ.get("OPENAI_API_KEY")
        return OpenAIHTTPLLM(base, model=query.get("model", "default"), api_key=api_key,
                             template=query.get("template"), **kwargs)
    backend, _, model = spec.partition(":")
    if backend == "llama-cpp":
        from emoslm.llm.llama_cpp import LlamaCppLLM

        model, _, options = model.partition("?")
        for key, value in parse_qs(options).items():
            if key == "reuse_prefix":
                kwargs.setdefault(key, value[-1] not in ("0", "false", "no"))
            elif key == "n_ctx":
                kwargs.setdefault(key, int(value[-1]))
            elif key == "lora":
                kwargs.setdefault(key, None if value[-1] in ("none", "") else value[-1])
            elif key == "slots" and value[-1].isdigit() and int(value[-1]) >= 1:
                kwargs.setdefault(key, int(value[-1]))
            else:
                raise EmoslmError(f"unknown llama-cpp option '{key}={value[-1]}' in '{spec}'; use reuse_prefix, "
                                  "n_ctx, lora or slots (a count)")
        if kwargs.get("slots", 1) > 1:
            from emoslm.llm.llama_batched import BatchedLlamaLLM

            kwargs.pop("reuse_prefix", None)  # a slot always reuses what its cells hold
            return BatchedLlamaLLM(model or "smollm2-135m-instruct", **kwargs)
        kwargs.pop("slots", None)
        return LlamaCppLLM(model or "smollm2-135m-instruct", **kwargs)
    if backend == "transformers":
        from emoslm.llm.hf import TransformersLLM

        return TransformersLLM(model or "smollm2-135m-instruct", **kwargs)
    raise EmoslmError(
        f"unknown LLM spec '{spec}'; use llama-cpp:MODEL, transformers:MODEL or an http(s):// endpoint URL"
    )


class LLMPool:
    """One LLM for every language (an explicit spec), or per language with ``auto``."""

    def __init__(self, spec: str = "auto", slots: int = 1) -> None:
        self.spec, self.loaded, self.slots = spec, {}, slots

    def for_lang(self, lang: str | None) -> LLM:
        spec = AUTO_LLM[served(lang)] if self.spec == "auto" else self.spec
        if self.slots > 1 and spec.startswith("llama-cpp:") and "slots=" not in spec:
            spec += f"{'&' if '?' in spec else '?'}slots={self.slots}"  # one context, a sequence per turn
        if spec not in self.loaded:
            self.loaded[spec] = load_llm(spec)
        return self.loaded[spec]

    def close(self) -> None:
        for llm in self.loaded.values():
            llm.close()
