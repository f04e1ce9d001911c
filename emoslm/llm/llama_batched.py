"""Several generations in one llama.cpp context at once: a sequence id each, one ``llama_decode`` per step.

A server's sessions answer at the same moment; with one sequence per context they queue, and the last of
four waits for three whole turns. Here each generation is a *slot* (a sequence id of one context), and a
scheduler thread decodes every active slot's next token in one batch (continuous batching): a new prompt
is prefilled in the same steps as the others' tokens, a finished slot takes the next request at once.
On 2 cores a batch of 4 sequences gives ~1.3x the tokens/s of one (``reference/hearing-and-speed.md``),
so a turn's think is slower under load, but no session waits for another's whole turn.

A slot keeps its tokens after a generation: a request goes to the free slot whose tokens share the
longest prefix with its prompt (the system prompt, a session's history), and only the rest is prefilled,
as llama.cpp's own server does. Sampling is the project's one ``Sampler`` (greedy = argmax), so a
sequence's text does not depend on what else is in the batch beyond llama.cpp's own arithmetic.
"""

from __future__ import annotations

import codecs
import ctypes
import queue
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoslm.errors import BackendError
from emoslm.llm.base import LLM, Message, Sampling, StopMatcher, StreamEnd
from emoslm.llm.decoding import Sampler
from emoslm.llm.llama_cpp import gguf_template, shipped_lora
from emoslm.llm.llama_loop import LlamaText
from emoslm.store import resolve
from emoslm.threads import lanes as threads_now

_END = object()


@dataclass
class Request:
    tokens: list[int]
    sampling: Sampling
    out: queue.Queue = field(default_factory=queue.Queue)  # text deltas, then _END, or an exception
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0
    finish_reason: str = "length"


@dataclass
class Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)  # what its KV cells hold, in order
    request: Request | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    sampler: Sampler | None = None
    generated: list[int] = field(default_factory=list)
    text: Any = None  # an incremental UTF-8 decoder


class BatchedLlamaLLM(LLM):
    """A GGUF chat model serving up to ``slots`` generations at once from one context (``?slots=N``)."""

    backend = "llama-cpp"

    def __init__(self, model: str = "smollm2-135m-instruct", slots: int = 4, n_ctx: int = 4096,
                 threads: int | None = None, lora: str | None = "auto", n_batch: int = 512) -> None:
        resolved = resolve(model)
        path = resolved.require_path()
        self.text = LlamaText(path, n_ctx=n_ctx, threads=threads, n_batch=n_batch, sequences=slots)  # model + context
        llama, self.api, self.model, self.ctx = self.text.api, self.text.api, self.text.model, self.text.ctx
        self.vocab, self.n_vocab, self.n_batch, self.threads = (self.text.vocab, self.text.n_vocab, n_batch,
                                                                self.text.threads)
        lora = shipped_lora(resolved.name) if lora == "auto" else lora
        if lora:
            adapter = llama.llama_adapter_lora_init(self.model, str(lora).encode())
            if not adapter:
                raise BackendError(f"{lora}: llama.cpp cannot load this LoRA adapter")
            adapters, scales = (type(adapter) * 1)(adapter), (ctypes.c_float * 1)(1.0)
            llama.llama_set_adapters_lora(self.ctx, adapters, 1, scales)
        self.name = resolved.name + (f"+{Path(lora).stem}" if lora else "")
        self.adapter = str(lora) if lora else None
        self.n_ctx, self.slots = n_ctx, [Slot(i) for i in range(slots)]
        self.template = gguf_template(path)
        self._beside = 0
        self._requests: queue.Queue[Request | None] = queue.Queue()
        self._waiting: list[Request] = []
        self._worker = threading.Thread(target=self._run, name="emoslm-llama-batch", daemon=True)
        self._worker.start()

    # --- the LLM interface -----------------------------------------------------------------------------
    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        return self.template.render(messages, add_generation_prompt=add_generation_prompt)

    def native_think(self) -> bool:
        return self.count_tokens("<think>") == 1

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        room = len(data) + 16
        ids = (self.api.llama_token * room)()
        n = self.api.llama_tokenize(self.vocab, data, len(data), ids, room, False, True)
        if n < 0:
            raise BackendError(f"{self.name}: could not tokenize {len(data)} bytes")
        return list(ids[:n])

    def share_cpu(self, beside: int = 1) -> None:
        self._beside = beside

    def prefill(self, text: str) -> None:
        self.complete(text, Sampling(max_tokens=1, temperature=0.0))

    def _stream(self, prompt: str, s: Sampling) -> Generator[str, None, StreamEnd]:
        tokens = self.tokenize(prompt)
        if not tokens:
            raise BackendError(f"{self.name}: an empty prompt")
        if len(tokens) + 1 >= self.n_ctx:
            raise BackendError(f"{self.name}: the prompt has {len(tokens)} tokens, over the context of {self.n_ctx} "
                               "per sequence; shorten the history or raise n_ctx")
        request = Request(tokens, s)
        self._requests.put(request)
        stops = StopMatcher(s.stop)
        try:
            while (item := request.out.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                text, stopped = stops.feed(item)
                if text:
                    yield text
                if stopped:
                    request.finish_reason = "stop"
                    request.cancelled.set()
                    break
            else:
                if tail := stops.flush():
                    yield tail
        finally:
            request.cancelled.set()  # closed early: the scheduler frees the slot at its next step
        return StreamEnd(len(tokens), request.completion_tokens, request.finish_reason)

    def close(self) -> None:
        if getattr(self, "_worker", None) is not None and self._worker.is_alive():
            self._requests.put(None)
            self._worker.join()
        if getattr(self, "text", None) is not None:
            self.text.close()
            self.ctx = self.model = None

    # --- the scheduler ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            busy = [s for s in self.slots if s.request is not None]
            try:
                request = self._requests.get(block=not busy and not self._waiting)
                if request is None:
                    return
                self._waiting.append(request)
                while True:  # everything that arrived meanwhile
                    request = self._requests.get_nowait()
                    if request is None:
                        return
                    self._waiting.append(request)
            except queue.Empty:
                pass
            self._assign()
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - every waiting caller gets the error, the thread goes on
                for slot in self.slots:
                    if slot.request is not None:
                        slot.request.out.put(exc)
                        self._free(slot, keep=False)

    def _assign(self) -> None:
        """Waiting requests to free slots, each to the one whose cached tokens share its longest prefix."""
        while self._waiting and (free := [s for s in self.slots if s.request is None]):
            request = self._waiting.pop(0)
            if request.cancelled.is_set():
                request.out.put(_END)
                continue
            slot = max(free, key=lambda s: _common(s.tokens, request.tokens))
            keep = min(_common(slot.tokens, request.tokens), len(request.tokens) - 1)  # the last one gives logits
            memory = self.api.llama_get_memory(self.ctx)
            self.api.llama_memory_seq_rm(memory, slot.seq, keep, -1)
            slot.tokens, slot.pending = request.tokens[:keep], request.tokens[keep:]
            slot.request, slot.sampler, slot.generated = request, Sampler(request.sampling), []
            slot.text = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def _step(self) -> None:
        """One ``llama_decode``: every generating slot's newest token, and as much pending prompt as fits."""
        llama = self.api
        for slot in self.slots:
            if slot.request is not None and slot.request.cancelled.is_set():
                slot.request.out.put(_END)
                self._free(slot)
        active = [s for s in self.slots if s.request is not None]
        if not active:
            return
        entries: list[tuple[Slot, int, bool]] = []  # (slot, token, wants logits)
        room = self.n_batch
        for slot in active:
            if not slot.pending and slot.generated:
                entries.append((slot, slot.generated[-1], True))
                room -= 1
        for slot in active:
            if slot.pending and room > 0:
                part, slot.pending = slot.pending[:room], slot.pending[room:]
                room -= len(part)
                entries += [(slot, token, not slot.pending and i == len(part) - 1) for i, token in enumerate(part)]
        now = threads_now(self._beside, most=self.threads)
        prefilling = any(not want for _, _, want in entries)
        llama.llama_set_n_threads(self.ctx, now.batch if prefilling else now.decode, now.batch)
        batch = llama.llama_batch_init(len(entries), 0, 1)
        outputs: list[tuple[Slot, int]] = []
        try:
            for i, (slot, token, want) in enumerate(entries):
                batch.token[i] = token
                batch.pos[i] = len(slot.tokens)
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = slot.seq
                batch.logits[i] = want
                slot.tokens.append(token)
                if want:
                    outputs.append((slot, i))
            batch.n_tokens = len(entries)
            code = llama.llama_decode(self.ctx, batch)
            if code != 0:
                raise BackendError(f"llama.cpp could not decode a batch of {len(entries)} (code {code})")
        finally:
            llama.llama_batch_free(batch)
        for slot, index in outputs:
            pointer = llama.llama_get_logits_ith(self.ctx, index)
            logits = torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy())[None]
            self._emit(slot, slot.sampler(logits, slot.tokens))

    def _emit(self, slot: Slot, token: int) -> None:
        request = slot.request
        if self.api.llama_vocab_is_eog(self.vocab, token):
            request.finish_reason = "stop"
            if tail := slot.text.decode(b"", final=True):
                request.out.put(tail)
            request.out.put(_END)
            self._free(slot)
            return
        slot.generated.append(token)
        request.completion_tokens += 1
        if text := slot.text.decode(self._piece(token)):
            request.out.put(text)
        if request.completion_tokens >= request.sampling.max_tokens or len(slot.tokens) + 1 >= self.n_ctx:
            if tail := slot.text.decode(b"", final=True):
                request.out.put(tail)
            request.out.put(_END)
            self._free(slot)

    def _free(self, slot: Slot, keep: bool = True) -> None:
        """The slot takes the next request; its KV cells stay for a prompt that starts the same way."""
        if not keep:
            self.api.llama_memory_seq_rm(self.api.llama_get_memory(self.ctx), slot.seq, 0, -1)
            slot.tokens = []
        slot.request, slot.pending, slot.sampler = None, [], None

    def _piece(self, token: int) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        n = self.api.llama_token_to_piece(self.vocab, token, buffer, 64, 0, False)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self.api.llama_token_to_piece(self.vocab, token, buffer, -n, 0, False)
        return buffer.raw[:n]


def _common(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n
