"""The unified model's text stream through llama.cpp: a ``TokenLoop`` that llama.cpp computes.

PyTorch decodes SmolLM2-135M at ~12 tokens/s on 2 CPU cores (fp32 weights read once per token); llama.cpp
runs the same model, exported to GGUF (``gguf_export``), several times faster. Two things the unified model
needs are outside the high-level ``llama_cpp.Llama`` class, so this uses the C API llama-cpp-python binds:

- **speech embeddings in**: the prompt's input embeddings (text tokens and the user's speech) go in as a
  float batch (``llama_batch_init(n, n_embd, 1)`` + ``llama_decode``); later tokens go in as ids.
- **a hidden state out**: the speech branch reads the text model's state at layer n for the newest token.
  llama.cpp names each layer's output ``l_out-<i>``; an eval callback (``cb_eval``) asks the scheduler to
  hand over only that tensor and copies its last row (``ggml_backend_tensor_get``).

``LlamaText`` owns the model and one context; ``loop()`` starts a fresh generation on it (one at a time).
The loop's interface is ``TokenLoop``'s (``feed``, ``sample``, ``logits``, ``hidden``), and both sample
with the one ``Sampler``, so ``generate_stream`` takes either.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoslm.config import settings
from emoslm.errors import BackendError, MissingPackageError
from emoslm.llm.base import Sampling
from emoslm.llm.decoding import Sampler
from emoslm.threads import lanes as threads_now

_BACKEND = threading.Lock()
_READY = False


def _llama() -> Any:
    global _READY
    try:
        import llama_cpp
    except ImportError:
        raise MissingPackageError("llama-cpp-python", "the llama.cpp text stream", "emoslm[llm]") from None
    with _BACKEND:
        if not _READY:
            from llama_cpp._logger import set_verbose

            set_verbose(False)  # llama.cpp's load and context messages go to stderr otherwise
            llama_cpp.llama_backend_init()
            _READY = True
    return llama_cpp


def _ggml() -> Any:
    """The few ggml functions the eval callback needs, typed (libggml-base ships with llama-cpp-python)."""
    from llama_cpp._ggml import libggml

    libggml.ggml_get_name.restype = ctypes.c_char_p
    libggml.ggml_get_name.argtypes = [ctypes.c_void_p]
    for name in ("ggml_nbytes", "ggml_element_size"):
        getattr(libggml, name).restype = ctypes.c_size_t
        getattr(libggml, name).argtypes = [ctypes.c_void_p]
    libggml.ggml_nrows.restype = ctypes.c_int64
    libggml.ggml_nrows.argtypes = [ctypes.c_void_p]
    libggml.ggml_backend_tensor_get.restype = None
    libggml.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return libggml


class LlamaText:
    """A GGUF causal LM in llama.cpp with one context, for ``LlamaLoop``s that keep layer ``hidden_layer``."""

    def __init__(self, gguf: str | Path, hidden_layer: int | None = None, n_ctx: int = 4096,
                 threads: int | None = None, n_batch: int = 512, sequences: int = 1) -> None:
        """``sequences``: sequence ids the context serves at once, ``n_ctx`` positions each (its KV split)."""
        llama = _llama()
        self.api, self.hidden_layer, self.n_batch = llama, hidden_layer, n_batch
        params = llama.llama_model_default_params()
        self.model = llama.llama_model_load_from_file(str(gguf).encode(), params)
        if not self.model:
            raise BackendError(f"{gguf}: llama.cpp cannot load it")
        self.vocab = llama.llama_model_get_vocab(self.model)
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        self.n_embd = llama.llama_model_n_embd(self.model)
        self.captured: np.ndarray | None = None
        self.generation = 0  # loops started on this context; only the newest may feed it
        self._want = f"l_out-{hidden_layer - 1}".encode() if hidden_layer else None  # HF's hidden_states[n]
        self._ggml = _ggml() if self._want else None
        self._callback = llama.ggml_backend_sched_eval_callback(self._observe)  # kept alive with the context
        context = llama.llama_context_default_params()
        context.n_ctx, context.n_batch, context.n_ubatch = n_ctx * sequences, n_batch, n_batch
        context.n_seq_max = sequences
        self.threads = threads or settings().threads
        context.n_threads = context.n_threads_batch = self.threads
        context.no_perf = True
        if self._want:
            context.cb_eval, context.cb_eval_user_data = self._callback, None
        self.ctx = llama.llama_init_from_model(self.model, context)
        if not self.ctx:
            llama.llama_model_free(self.model)
            raise BackendError(f"{gguf}: llama.cpp could not make a context of {sequences} x {n_ctx} positions")
        self.n_ctx = n_ctx

    def _observe(self, tensor: int, ask: bool, _: Any) -> bool:
        """The scheduler asks which tensors to show (``ask``), then shows each one it was asked for."""
        ggml = self._ggml
        if ggml.ggml_get_name(tensor) != self._want:
            return not ask  # not ours: do not split the graph for it (and never cancel the compute)
        if ask:
            return True
        if ggml.ggml_element_size(tensor) != 4:
            return True  # not f32: left unread, ``hidden`` stays None and the caller fails loudly
        size = ggml.ggml_nbytes(tensor)
        rows = np.empty(size // 4, np.float32)
        ggml.ggml_backend_tensor_get(tensor, rows.ctypes.data, 0, size)
        self.captured = rows.reshape(int(ggml.ggml_nrows(tensor)), -1)[-1]
        return True

    def loop(self, sampling: Sampling) -> LlamaLoop:
        """A fresh generation: the context's memory is cleared, so an older loop on it can no longer feed."""
        self.api.llama_memory_clear(self.api.llama_get_memory(self.ctx), True)
        now = threads_now(0, most=self.threads)  # the cores nobody else is using now (emoslm.threads)
        self.api.llama_set_n_threads(self.ctx, now.decode, now.batch)
        self.captured = None
        self.generation += 1
        return LlamaLoop(self, sampling)

    def decode_embeddings(self, rows: np.ndarray, start: int) -> None:
        """Append (n, n_embd) float input embeddings at positions ``start``…; logits of the last one only."""
        llama = self.api
        for offset in range(0, len(rows), self.n_batch):
            part = np.ascontiguousarray(rows[offset:offset + self.n_batch], np.float32)
            n = len(part)
            batch = llama.llama_batch_init(n, self.n_embd, 1)
            try:
                ctypes.memmove(batch.embd, part.ctypes.data, part.nbytes)
                for i in range(n):
                    batch.pos[i] = start + offset + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = offset + i == len(rows) - 1
                batch.n_tokens = n
                self._decode(batch)
            finally:
                llama.llama_batch_free(batch)

    def decode_tokens(self, ids: list[int]) -> None:
        """Append token ids after what is in the context; logits of the last one only."""
        llama = self.api
        for offset in range(0, len(ids), self.n_batch):
            part = ids[offset:offset + self.n_batch]
            tokens = (llama.llama_token * len(part))(*part)
            self._decode(llama.llama_batch_get_one(tokens, len(part)))

    def _decode(self, batch: Any) -> None:
        code = self.api.llama_decode(self.ctx, batch)
        if code != 0:
            raise BackendError(f"llama.cpp could not decode (code {code}; the context holds {self.n_ctx} positions)")

    def last_logits(self) -> np.ndarray:
        pointer = self.api.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.api.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.api.llama_model_free(self.model)
            self.model = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit llama_cpp may be torn down first
            self.close()


class LlamaLoop:
    """``TokenLoop``'s interface on a ``LlamaText`` context: ``feed`` ids or embeddings, ``sample``,
    ``logits`` (1, vocab) and ``hidden`` (1, hidden size) at the text's ``hidden_layer``."""

    def __init__(self, text: LlamaText, sampling: Sampling) -> None:
        self.text, self.sampler = text, Sampler(sampling)
        self.generation = text.generation
        self.length = 0
        self.seen: list[int] = []
        self.logits: torch.Tensor | None = None
        self.hidden: torch.Tensor | None = None

    def feed(self, ids: list[int] | None = None, embeds: torch.Tensor | None = None) -> None:
        """Append token ids, or (batch 1) input embeddings, and compute the next logits (and layer state)."""
        if self.generation != self.text.generation:  # one context: a second loop cleared this one's tokens
            raise BackendError("another generation started on this llama.cpp context; it runs one at a time "
                               "(give each concurrent user an agent of its own)")
        if embeds is None:
            if not ids:
                return
            self.text.decode_tokens(list(ids))
            self.seen.extend(ids)
            n = len(ids)
        else:
            rows = embeds.detach().float().cpu().numpy().reshape(-1, embeds.shape[-1])
            self.text.decode_embeddings(rows, self.length)
            n = len(rows)
        self.length += n
        self.logits = torch.from_numpy(self.text.last_logits())[None]
        if self.text.hidden_layer is not None:
            if self.text.captured is None:
                raise BackendError(f"llama.cpp did not show layer {self.text.hidden_layer}'s output")
            self.hidden = torch.from_numpy(self.text.captured.copy())[None]

    def sample(self) -> int:
        assert self.logits is not None, "feed a prompt first"
        return self.sampler(self.logits, self.seen)
