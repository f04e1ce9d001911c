"""llama.cpp backend: the embedded default (GGUF on CPU, no torch needed).

Every llama.cpp call of the process runs on one thread of its own (``LLAMA_THREAD``). llama.cpp
computes with an OpenMP team per calling thread, and on 2 cores a second live thread that has called
it slows generation on the first from ~95 to ~58 tokens/s (measured), even while idle; a live agent,
a next-turn prefill and a server's workers would otherwise call it from many threads. Deltas cross
back over a queue, which costs nothing measurable.
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from emoslm.atomic import atomic_file
from emoslm.config import settings
from emoslm.errors import BackendError, MissingPackageError
from emoslm.llm.base import LLM, ChatTemplate, Message, Sampling, StreamEnd
from emoslm.store import resolve
from emoslm.streams import on_thread
from emoslm.threads import lanes as threads_now

LLAMA_THREAD = ThreadPoolExecutor(1, thread_name_prefix="emoslm-llama")


class LlamaCppLLM(LLM):
    """A GGUF model run in-process by llama-cpp-python.

    ``model`` is a registry name, a path to a ``.gguf`` file, or a hub repo id (then the Q4_K_M file
    of that repo is fetched by llama-cpp-python, for users who have a hub).

    ``reuse_prefix`` keeps the KV cache of the previous prompt and evaluates only what differs (a
    live agent's system prompt and history are not prefilled again: ~0.4 s per 130 tokens on 2
    cores). The price: a prompt evaluated partly from the cache can give a slightly different greedy
    continuation than the same prompt evaluated whole, so output then depends on the call before.
    ``reuse_prefix=False`` evaluates every prompt from scratch: the same prompt always gives the same text.

    ``keep_prefix`` computes a prompt head once (a system prompt with worked examples), saves the KV state of
    it, on disk too, and restores it whenever a prompt starts with that head but the cache holds something
    else: the examples then cost no prefill, not even on a new process's first turn.
    ``lora`` is a GGUF LoRA adapter (``emoslm train replies``) applied at load time; ``"auto"`` is the reply
    adapter shipped for this model, where there is one (``SHIPPED_LORA``), and None the bare model.
    """

    backend = "llama-cpp"

    def __init__(self, model: str = "smollm2-135m-instruct", n_ctx: int = 4096, threads: int | None = None,
                 seed: int = 0, reuse_prefix: bool = True, lora: str | None = "auto") -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise MissingPackageError("llama-cpp-python", "the llama.cpp LLM backend", "emoslm[llm]") from None
        resolved = resolve(model)
        threads = threads or settings().threads
        common = dict(n_ctx=n_ctx, n_threads=threads, seed=seed, verbose=False)
        if lora == "auto":
            lora = shipped_lora(resolved.name)
        if lora:
            if not Path(lora).is_file():
                raise BackendError(f"LoRA adapter {lora} does not exist; train one with `emoslm train replies`")
            common["lora_path"] = str(lora)
        try:
            if resolved.is_local:
                load = lambda: Llama(model_path=str(resolved.require_path()), **common)  # noqa: E731
            else:
                load = lambda: Llama.from_pretrained(repo_id=resolved.hub_id, filename="*q4_k_m.gguf", **common)  # noqa: E731
            self.llm = LLAMA_THREAD.submit(_quietly, load, bool(lora)).result()
        except ValueError as exc:
            raise BackendError(f"{model}: llama.cpp cannot load it ({exc}); is it a GGUF file?") from None
        self.name = resolved.name + (f"+{Path(lora).stem}" if lora else "")
        self.adapter = str(lora) if lora else None
        self._kept: list[KeptPrefix] = []
        self.template = template_from_llama(self.llm, model)
        self.reuse_prefix = reuse_prefix
        self._beside, self.lanes = 0, threads_now(0, most=threads)

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        return self.template.render(messages, add_generation_prompt=add_generation_prompt)

    def native_think(self) -> bool:
        return self.count_tokens("<think>") == 1

    def count_tokens(self, text: str) -> int:
        if self.llm is None:
            raise BackendError(f"{self.name}: the model was closed")
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _stream(self, prompt: str, s: Sampling) -> Generator[str, None, StreamEnd]:
        return (yield from on_thread(self._generate(prompt, s), LLAMA_THREAD))

    def _generate(self, prompt: str, s: Sampling) -> Generator[str, None, StreamEnd]:
        n_prompt = self.count_tokens(prompt)
        if n_prompt + 1 >= self.llm.n_ctx():
            raise BackendError(
                f"{self.name}: the prompt has {n_prompt} tokens, over the context of {self.llm.n_ctx()}; "
                "shorten the history or raise n_ctx"
            )
        self._fit_threads()
        if not self.reuse_prefix:
            self.llm.reset()
        else:
            self._restore_for(prompt)
        chunks = self.llm.create_completion(
            prompt,
            max_tokens=min(s.max_tokens, self.llm.n_ctx() - n_prompt - 1),
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            repeat_penalty=s.repeat_penalty,
            seed=s.seed,
            stop=list(s.stop) or None,
            grammar=_grammar(s.json_schema),
            stream=True,
        )
        text, finish = [], "stop"
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                text.append(choice["text"])
                finish = choice.get("finish_reason") or finish
                yield choice["text"]
        finally:
            chunks.close()  # an abandoned stream stops llama.cpp's loop and frees the context
        return StreamEnd(n_prompt, self.count_tokens("".join(text)), finish)

    def keep_prefix(self, text: str) -> None:
        """Compute ``text``'s KV state once (or read it from disk) and restore it for prompts that start with it."""
        if not self.reuse_prefix or any(k.text == text for k in self._kept):
            return
        self._kept.append(LLAMA_THREAD.submit(KeptPrefix.make, self.llm, text, self.name).result())

    def _restore_for(self, prompt: str) -> None:
        """Load a kept head's state when the prompt starts with it and the cache shares less of it."""
        for kept in self._kept:
            if prompt.startswith(kept.text):
                cached = self.llm.input_ids[: self.llm.n_tokens]
                same = int(np.argmin(np.append(cached[: len(kept.tokens)] == kept.tokens[: len(cached)], False)))
                if same < len(kept.tokens):
                    kept.restore(self.llm)
                return

    def prefill(self, text: str) -> None:
        if self.reuse_prefix:
            self.complete(text, Sampling(max_tokens=1, temperature=0.0))

    def share_cpu(self, beside: int = 1) -> None:
        """Generate beside ``beside`` busy lanes of this process from now on (a voice speaking the previous
        clause); 0: nothing beside. The thread counts themselves come from ``emoslm.threads.lanes`` at the
        start of every generation, so a core another process takes is left to it."""
        self._beside = beside
        LLAMA_THREAD.submit(self._fit_threads).result()

    def _fit_threads(self) -> None:
        """Runs on ``LLAMA_THREAD``, before each generation (``threads.py``: why it must follow the load)."""
        import llama_cpp

        lanes = threads_now(self._beside, most=self.llm.n_threads)
        llama_cpp.llama_set_n_threads(self.llm.ctx, lanes.decode, lanes.batch)
        self.lanes = lanes

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            LLAMA_THREAD.submit(llm.close).result()
            self.llm = None


def _quietly(load: Any, quiet: bool) -> Any:
    """llama.cpp logs every adapted tensor of a LoRA on stderr even when ``verbose=False``: hide that."""
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=not quiet):
        return load()


SHIPPED_DIR = Path(__file__).with_name("shipped")
# The reply adapter `emoslm train replies recipes/replies.yaml` made, per registry model.
SHIPPED_LORA = {"qwen2.5-coder-1.5b-instruct": "reply-lora-qwen2.5-coder-1.5b.gguf"}


def shipped_lora(model: str) -> str | None:
    """The shipped reply adapter of a registry model (None when it has none)."""
    name = SHIPPED_LORA.get(model)
    return str(SHIPPED_DIR / name) if name and (SHIPPED_DIR / name).is_file() else None


class KeptPrefix:
    """A prompt head's tokens and the KV state of sequence 0 after evaluating them (``LlamaCppLLM.keep_prefix``).

    Only the sequence's KV cells are saved (llama-cpp-python's own ``save_state`` also copies a logits buffer
    of n_batch × vocabulary floats: 311 MB for Qwen); on disk under the cache folder, keyed by the model and
    the text, so a new process restores instead of computing.
    """

    def __init__(self, text: str, tokens: np.ndarray, state: bytes) -> None:
        self.text, self.tokens, self.state = text, tokens, state

    @classmethod
    def make(cls, llm: Any, text: str, model_name: str) -> KeptPrefix:
        import llama_cpp

        tokens = np.array(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True), dtype=np.intc)
        key = hashlib.sha256(f"{model_name}|{llm.model_path}|{llm.n_ctx()}|{text}".encode()).hexdigest()[:24]
        path = settings().cache_dir / "prefix-states" / f"{key}.bin"
        if path.exists():
            return cls(text, tokens, path.read_bytes())
        llm.reset()
        llm.eval(tokens.tolist())
        size = llama_cpp.llama_state_seq_get_size(llm.ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(llm.ctx, buffer, size, 0)
        state = bytes(buffer[:written])
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_bytes(state)
        return cls(text, tokens, state)

    def restore(self, llm: Any) -> None:
        import llama_cpp

        llm._ctx.kv_cache_clear()
        buffer = (ctypes.c_uint8 * len(self.state)).from_buffer_copy(self.state)
        if llama_cpp.llama_state_seq_set_data(llm.ctx, buffer, len(self.state), 0) == 0:
            llm.reset()  # a state of another build: evaluate the prompt whole instead
            return
        llm.input_ids[: len(self.tokens)] = self.tokens
        llm.n_tokens = len(self.tokens)
        llm._requires_eval = True


def template_from_llama(llm: object, name: str) -> ChatTemplate:
    """The chat template and special tokens stored in a loaded GGUF's metadata."""
    meta = llm.metadata

    def token(kind: str) -> str:
        token_id = meta.get(f"tokenizer.ggml.{kind}_token_id")
        if token_id is None:
            return ""
        return llm.detokenize([int(token_id)], special=True).decode("utf-8", errors="ignore")

    source = meta.get("tokenizer.chat_template")
    if not source:
        raise BackendError(f"{name}: the GGUF file has no chat template; use a chat/instruct model")
    return ChatTemplate(source, bos_token=token("bos"), eos_token=token("eos"))


def gguf_template(path: object) -> ChatTemplate:
    """Read the template from a GGUF file's metadata without loading the weights."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise MissingPackageError("llama-cpp-python", "reading a GGUF chat template", "emoslm[llm]") from None
    vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return template_from_llama(vocab, str(path))
    finally:
        vocab.close()


def _grammar(schema: dict | None) -> object:
    """A GBNF grammar that only admits JSON of ``schema`` (None: unconstrained)."""
    if schema is None:
        return None
    import json

    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
