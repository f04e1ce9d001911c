"""The small interface every LLM backend implements.

IEAT needs more than chat: it renders the chat template itself, appends an open ``<think>`` with
the injected emotion, and asks the model to *continue* that raw text. So each backend offers
``complete`` (raw continuation) next to ``chat``, and ``render`` gives the exact prompt text the
backend's chat template produces, so both paths see identical prompts.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

Message = dict[str, str]


@dataclass
class Sampling:
    """Decoding settings shared by all backends; ``max_tokens`` is the token budget."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1
    seed: int | None = 0
    stop: list[str] = field(default_factory=list)
    # Constrain the output to JSON of this schema where the backend can (llama.cpp grammar, vLLM
    # response_format); other backends ignore it and callers parse defensively.
    json_schema: dict[str, Any] | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Completion:
    """One generated continuation, with the counts needed for budgets and benchmarks."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end-of-turn or a stop string) or "length" (budget reached)
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


class ChatTemplate:
    """A Hugging Face style Jinja chat template, rendered the way ``apply_chat_template`` does."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source
        self._template = env.from_string(source)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[Message], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            **kwargs,
        )


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


class LLM(abc.ABC):
    """A causal language model that can chat and continue raw text."""

    name: str = "llm"
    backend: str = "base"

    @abc.abstractmethod
    def complete(self, prompt: str, sampling: Sampling | None = None) -> Completion:
        """Continue ``prompt`` verbatim (no template applied)."""

    @abc.abstractmethod
    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        """The prompt text this model's chat template makes of ``messages``."""

    def native_think(self) -> bool:
        """True when ``<think>`` is one of the model's own tokens (Qwen3-style thinking models)."""
        return False

    def chat(self, messages: list[Message], sampling: Sampling | None = None) -> Completion:
        """Answer the last user message; the same as continuing the rendered template."""
        return self.complete(self.render(messages), sampling)

    def close(self) -> None:
        """Release the model (servers, file handles); safe to call twice."""


class Stopwatch:
    """Seconds since construction; used for the ``seconds`` field of completions."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
