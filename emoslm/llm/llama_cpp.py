"""llama.cpp backend: the embedded default (GGUF on CPU, no torch needed).

Every llama.cpp call of the process runs on one thread of its own (``LLAMA_THREAD``). llama.cpp
computes with an OpenMP team per calling thread, and on 2 cores a second live thread that has called
it slows generation on the first from ~95 to ~58 tokens/s (measured), even while idle; a live agent,
a next-turn prefill and a server's workers would otherwise call it from many threads. Deltas cross
back over a queue, which costs nothing measurable.
"""

from __future__ import annotations

from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor

from emoslm.config import settings
from emoslm.errors import BackendError, MissingPackageError
from emoslm.llm.base import LLM, ChatTemplate, Message, Sampling, StreamEnd
from emoslm.store import resolve
from emoslm.streams import on_thread

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
    """

    backend = "llama-cpp"

    def __init__(self, model: str = "smollm2-135m-instruct", n_ctx: int = 4096, threads: int | None = None,
                 seed: int = 0, reuse_prefix: bool = True) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise MissingPackageError("llama-cpp-python", "the llama.cpp LLM backend", "emoslm[llm]") from None
        resolved = resolve(model)
        threads = threads or settings().threads
        common = dict(n_ctx=n_ctx, n_threads=threads, seed=seed, verbose=False)
        try:
            if resolved.is_local:
                load = lambda: Llama(model_path=str(resolved.require_path()), **common)  # noqa: E731
            else:
                load = lambda: Llama.from_pretrained(repo_id=resolved.hub_id, filename="*q4_k_m.gguf", **common)  # noqa: E731
            self.llm = LLAMA_THREAD.submit(load).result()
        except ValueError as exc:
            raise BackendError(f"{model}: llama.cpp cannot load it ({exc}); is it a GGUF file?") from None
        self.name = resolved.name
        self.template = template_from_llama(self.llm, model)
        self.reuse_prefix = reuse_prefix

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
        if not self.reuse_prefix:
            self.llm.reset()
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

    def prefill(self, text: str) -> None:
        if self.reuse_prefix:
            self.complete(text, Sampling(max_tokens=1, temperature=0.0))

    def share_cpu(self, threads: int = 1) -> None:
        """On 2 cores, llama.cpp's spinning OpenMP threads and a voice's threads starve each other (measured:
        116 → 26 tokens/s while Piper speaks); one generation thread beside a one-thread voice keeps 74."""
        import llama_cpp

        LLAMA_THREAD.submit(llama_cpp.llama_set_n_threads, self.llm.ctx, threads, self.llm.n_threads_batch).result()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            LLAMA_THREAD.submit(llm.close).result()
            self.llm = None


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
