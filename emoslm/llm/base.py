"""The small interface every LLM backend implements.

IEAT needs more than chat: it renders the chat template itself, appends an open ``<think>`` with
the injected emotion, and asks the model to *continue* that raw text. So each backend offers
``complete`` (raw continuation) next to ``chat``, and ``render`` gives the exact prompt text the
backend's chat template produces, so both paths see identical prompts.

Streaming is the primitive: a backend implements ``_stream`` (a generator of text deltas that
returns its ``StreamEnd``), ``stream``/``chat_stream`` wrap it in a ``TextStream``, and the blocking
``complete``/``chat`` only drain that stream, so what streams and what blocks cannot differ.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Generator, Iterator
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


@dataclass
class StreamEnd:
    """What a finished stream knows beyond its text: token counts and why it stopped."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class TextStream:
    """The text deltas of one generation; once iterated to the end, ``completion`` holds the whole.

    Closing it early (``close()``, or leaving a ``for`` loop and dropping it) stops the backend.
    """

    def __init__(self, deltas: Generator[str, None, StreamEnd]) -> None:
        self._deltas, self._parts = deltas, []
        self._clock = Stopwatch()
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                delta = next(self._deltas)
            except StopIteration as stop:
                end: StreamEnd = stop.value
                self.completion = Completion("".join(self._parts), end.prompt_tokens, end.completion_tokens,
                                             end.finish_reason, self._clock.elapsed)
                return
            if delta:
                self._parts.append(delta)
                yield delta

    def drain(self) -> Completion:
        """Read the stream to its end (the blocking call)."""
        for _ in self:
            pass
        assert self.completion is not None
        return self.completion

    def close(self) -> None:
        """Stop the backend; ``completion`` then holds the text so far (tokens counted as deltas)."""
        self._deltas.close()
        if self.completion is None:
            self.completion = Completion("".join(self._parts), 0, len(self._parts), "stop", self._clock.elapsed)


class StopMatcher:
    """Cuts streamed text at the first stop string, holding back a tail that may be a stop's beginning.

    For backends that do not stop on strings themselves (a token loop): ``feed`` returns the text that
    is safe to emit and whether a stop string was reached; ``flush`` releases the held tail at the end.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        text = self.held + delta
        hits = [text.index(s) for s in self.stops if s in text]
        if hits:
            self.held = ""
            return text[: min(hits)], True
        keep = max((n for s in self.stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


class ChatTemplate:
    """A Hugging Face style Jinja chat template, rendered the way ``apply_chat_template`` does."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source
        self._template = env.from_string(source)
        self.bos_token, self.eos_token = bos_token, eos_token

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ChatTemplate:
        """The template a Hugging Face tokenizer carries (teacher and student render with the same code)."""
        if not getattr(tokenizer, "chat_template", None):
            from emoslm.errors import BackendError

            raise BackendError(f"{tokenizer.name_or_path}: the tokenizer has no chat template; use a chat model")
        return cls(tokenizer.chat_template, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")

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
    adapter: str | None = None  # a LoRA adapter loaded on top of the weights (its prompts need no examples)

    @abc.abstractmethod
    def _stream(self, prompt: str, sampling: Sampling) -> Generator[str, None, StreamEnd]:
        """Yield the text deltas that continue ``prompt`` verbatim; return how it ended."""

    def stream(self, prompt: str, sampling: Sampling | None = None) -> TextStream:
        """Continue ``prompt`` verbatim (no template applied), delta by delta."""
        return TextStream(self._stream(prompt, sampling or Sampling()))

    def complete(self, prompt: str, sampling: Sampling | None = None) -> Completion:
        """Continue ``prompt`` verbatim: the stream, drained."""
        return self.stream(prompt, sampling).drain()

    def chat_stream(self, messages: list[Message], sampling: Sampling | None = None) -> TextStream:
        """Answer the last user message delta by delta; the same as continuing the rendered template."""
        return self.stream(self.render(messages), sampling)

    @abc.abstractmethod
    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        """The prompt text this model's chat template makes of ``messages``."""

    def native_think(self) -> bool:
        """True when ``<think>`` is one of the model's own tokens (Qwen3-style thinking models)."""
        return False

    def chat(self, messages: list[Message], sampling: Sampling | None = None) -> Completion:
        """Answer the last user message: ``chat_stream``, drained."""
        return self.chat_stream(messages, sampling).drain()

    def prefill(self, text: str) -> None:
        """Evaluate ``text`` into the KV cache ahead of a prompt that starts with it (where the backend
        keeps one; elsewhere a no-op). Live agents call it while the user is still talking."""

    def keep_prefix(self, text: str) -> None:
        """Keep the evaluated state of a prompt head that many prompts start with (a system prompt with worked
        examples), so that it is computed once; a no-op where the backend cannot."""

    def share_cpu(self, threads: int = 1) -> None:
        """Generate with ``threads`` threads from now on, leaving the other cores to a voice that speaks
        beside it (prompt prefill keeps every core); 0 gives every thread back. A no-op where the model runs
        elsewhere."""

    def close(self) -> None:
        """Release the model (servers, file handles); safe to call twice."""


class Stopwatch:
    """Seconds since construction; used for the ``seconds`` field of completions."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
