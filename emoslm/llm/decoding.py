"""One token loop for every PyTorch model emoslm generates with: the transformers LLM and UnifiedSLM.

``generate`` cannot stream without a second thread and cannot keep its KV cache across a think and
the reply, so emoslm steps the model itself: ``TokenLoop`` owns the cache, ``feed`` appends token ids
(or embeddings) to it, ``sample`` draws the next token with the same processors ``generate`` applies
(repetition penalty, then temperature, top-k, top-p), from a private ``torch.Generator`` so that no
call reseeds the global RNG. ``Detokenizer`` turns ids into text deltas without splitting a UTF-8
character. Greedy decoding here gives the same tokens as ``generate(do_sample=False)`` (tested).
"""

from __future__ import annotations

from typing import Any

import torch

from emoslm.llm.base import Sampling
from emoslm.llm.lean import lean_llm


class TokenLoop:
    """A causal LM stepped one token at a time over one growing KV cache."""

    def __init__(self, model: Any, sampling: Sampling, device: str | torch.device = "cpu",
                 hidden_layer: int | None = None, lean: bool = True) -> None:
        from transformers import DynamicCache

        self.model, self.device = model, torch.device(device)
        self.cache_arg = cache_arg(model)
        self.cache = DynamicCache()
        # the lean path (``lean.py``) for Llama-family stacks: the same arithmetic without transformers' per-call
        # overhead (identical logits, tested); anything else keeps the transformers forward
        self.lean = lean_llm(model) if lean else None
        self.length = 0  # positions in the cache
        self.seen: list[int] = []  # ids the repetition penalty looks at (prompt ids + generated)
        self.logits: torch.Tensor | None = None  # next-token logits after the last feed
        self.hidden_layer = hidden_layer  # keep this layer's hidden state of the last fed token (speech branch)
        self.hidden: torch.Tensor | None = None  # (1, hidden size)
        self.sampler = Sampler(sampling, self.device)

    @torch.inference_mode()
    def feed(self, ids: list[int] | None = None, embeds: torch.Tensor | None = None) -> None:
        """Append token ids, or (batch 1) input embeddings, to the cache and compute the next logits."""
        if embeds is None:
            if not ids:
                return
            embeds = self.model.get_input_embeddings()(torch.tensor([ids], device=self.device))
            self.seen.extend(ids)
        n = embeds.shape[1]
        if self.lean is not None:
            keep = (self.hidden_layer,) if self.hidden_layer is not None else ()
            last, kept = self.lean.step(embeds, keep)
            self.length += n
            self.logits = self.model.lm_head(last[:, -1:])[:, -1, :].float()
            if self.hidden_layer is not None:
                self.hidden = kept[self.hidden_layer][:, -1]
            return
        positions = torch.arange(self.length, self.length + n, device=self.device)[None]
        out = self.model(inputs_embeds=embeds, **{self.cache_arg: self.cache}, use_cache=True,
                         attention_mask=torch.ones((1, self.length + n), dtype=torch.long, device=self.device),
                         position_ids=positions, cache_position=positions[0],
                         output_hidden_states=self.hidden_layer is not None)
        self.length += n  # the DynamicCache grew in place
        self.logits = out.logits[:, -1, :].float()
        if self.hidden_layer is not None:
            self.hidden = out.hidden_states[self.hidden_layer][:, -1]

    def sample(self) -> int:
        """The next token after what was fed (not yet fed itself: ``feed([token])`` to go on)."""
        assert self.logits is not None, "feed a prompt first"
        return self.sampler(self.logits, self.seen)


class Sampler:
    """The next token from logits, with the processors ``generate`` applies (repetition penalty, then
    temperature, top-k, top-p), drawn from a private ``torch.Generator``: one rule for every token loop."""

    def __init__(self, sampling: Sampling, device: str | torch.device = "cpu") -> None:
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.device = torch.device(device)
        self.penalty = (RepetitionPenaltyLogitsProcessor(sampling.repeat_penalty)
                        if sampling.repeat_penalty and sampling.repeat_penalty != 1.0 else None)
        steps = LogitsProcessorList()
        self.greedy = sampling.greedy
        if not self.greedy:
            steps.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k:
                steps.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1.0:
                steps.append(TopPLogitsWarper(sampling.top_p))
        self.steps = steps
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0 if sampling.seed is None else int(sampling.seed))

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seen: list[int]) -> int:
        """A token for (1, vocab) ``logits`` after the ids ``seen`` so far."""
        history = torch.tensor([seen], dtype=torch.long, device=self.device)
        scores = logits.clone()
        if self.penalty is not None and seen:
            scores = self.penalty(history, scores)
        if self.greedy:
            return int(scores.argmax(dim=-1))
        scores = self.steps(history, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


class Detokenizer:
    """Token ids in, text deltas out; holds back a delta that ends inside a multi-byte character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.ids, self.sent = tokenizer, [], 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        delta, self.sent = text[self.sent:], len(text)
        return delta

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)


def cache_arg(model: Any) -> str:
    """The keyword a causal LM takes its KV cache by: transformers 5.2x renamed ``past_key_values`` to
    ``cache``. A PEFT wrapper forwards keywords to the model it wraps, so that model's signature decides."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def end_ids(tokenizer: Any) -> set[int]:
    """Token ids that end a turn: eos plus the chat-format end tokens the vocabulary has."""
    ends = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ends.add(token_id)
    return {i for i in ends if i is not None}
