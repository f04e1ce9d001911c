"""Speak: the unified model's speech branch (GOAT-SLM's top-k copy with multi-token prediction).

The branch is a copy of the LLM's top ``layers`` decoder layers and its final norm. Its input at each
speech step is the text model's hidden state at layer n = L - layers (the input of the first copied
layer) for the newest text token, plus the summed embeddings of the previous group of units; ``group``
linear heads then emit the next ``group`` units at once (multi-token prediction), so one text token
carries ``group`` units (4 units at 50 Hz = 80 ms of speech per step). The unit vocabulary is the
tokenizer's codes plus two markers: ``BOS`` (the "previous group" of the first step) and ``EOS``
(end of speech). Speech starts after ``</think>`` and the blank line — the think is never spoken —
and the branch keeps going after the text ends, reading the hidden state of the end-of-turn token.

Why a copy of the top layers rather than a fresh network: the copied layers already read the LLM's
hidden states, so the branch starts from a model that understands the text it must say, and the text
model itself (bottom n frozen) keeps writing exactly as before.

The branch body is the LLM's own base-model class built with ``layers`` layers and a unit-sized
vocabulary, so its embedding table *is* the unit embedding and rotary positions, masks and the KV
cache are the LLM library's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers.utils import ModelOutput

from emoslm.llm.decoding import cache_arg


@dataclass
class SpeechSpec:
    """What a checkpoint's speech branch is: saved in ``UnifiedSLMConfig.speech``."""

    units: int  # codes of the speech tokenizer
    layers: int = 4  # top-k LLM layers copied into the branch
    group: int = 4  # units per step (heads)
    rate: float = 50.0  # units per second (nominal for phoneme units, which are not frame-aligned)
    decoder: str = ""  # the UnitDecoder folder that voices the units (it names its tokenizer), or ``kokoro:VOICE``
    hold: int = -1  # a code meaning "nothing more in this step" (phoneme units, ``text_steps``); -1: none

    @property
    def bos(self) -> int:
        return self.units

    @property
    def eos(self) -> int:
        return self.units + 1

    @property
    def vocab(self) -> int:
        return self.units + 2


@dataclass
class SpeakOutput(ModelOutput):
    """The unified model's typed output when units are trained: both losses and both kinds of logits."""

    loss: torch.Tensor | None = None
    text_loss: torch.Tensor | None = None
    unit_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # text (batch, tokens, vocab)
    unit_logits: torch.Tensor | None = None  # (batch, steps, group, unit vocab)
    hidden_states: tuple[torch.Tensor, ...] | None = None


def branch_config(llm_config: PretrainedConfig, spec: SpeechSpec) -> PretrainedConfig:
    """The LLM's config with ``spec.layers`` layers and the unit vocabulary."""
    fields = llm_config.to_dict()
    fields.update(num_hidden_layers=spec.layers, vocab_size=spec.vocab, tie_word_embeddings=False)
    if isinstance(fields.get("layer_types"), list):  # per-layer attention kinds (Qwen3): keep the top ones
        fields["layer_types"] = fields["layer_types"][-spec.layers:]
    fields.pop("max_window_layers", None)  # Qwen2's sliding-window layer count refers to the whole stack
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


class SpeechBranch(nn.Module):
    """The top-k copy (``body``: the LLM's base-model class with k layers and the unit vocabulary as its
    embedding table) and the multi-token heads (one per unit of a step)."""

    def __init__(self, llm_config: PretrainedConfig, spec: SpeechSpec) -> None:
        super().__init__()
        self.spec = spec
        self.body = AutoModel.from_config(branch_config(llm_config, spec))
        hidden = llm_config.hidden_size
        self.heads = nn.ModuleList(nn.Linear(hidden, spec.vocab, bias=False) for _ in range(spec.group))
        self._cache_arg = cache_arg(self.body)

    def copy_from(self, llm: nn.Module) -> None:
        """Initialise from the LLM's top layers and final norm; fresh unit embeddings and heads, with the
        LLM's embedding scale (so units and hidden states start on comparable footings)."""
        base = _base_model(llm)
        top = base.layers[len(base.layers) - self.spec.layers:]
        for mine, theirs in zip(self.body.layers, top, strict=True):
            mine.load_state_dict(theirs.state_dict())
        self.body.norm.load_state_dict(base.norm.state_dict())
        scale = float(llm.get_input_embeddings().weight.detach().float().std())
        nn.init.normal_(self.body.embed_tokens.weight, std=scale)
        for head in self.heads:
            nn.init.normal_(head.weight, std=0.02)

    def inputs(self, text_hidden: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """(batch, steps, hidden) text states + (batch, steps, group) previous units → step inputs."""
        return text_hidden + self.body.embed_tokens(previous).sum(dim=-2).to(text_hidden.dtype)

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: Any = None) -> tuple[torch.Tensor, Any]:
        """Step inputs → (batch, steps, group, unit vocab) logits, and the (grown) KV cache."""
        out = self.body(inputs_embeds=inputs, attention_mask=attention_mask, use_cache=cache is not None,
                        **{self._cache_arg: cache})
        last = out.last_hidden_state
        return torch.stack([head(last) for head in self.heads], dim=2), cache  # a DynamicCache grows in place


def _base_model(llm: nn.Module) -> nn.Module:
    """The decoder stack (``.layers``, ``.norm``) inside a causal LM, PEFT-wrapped or not."""
    model = llm
    for _ in range(4):
        if hasattr(model, "layers") and hasattr(model, "norm"):
            return model
        model = getattr(model, "model", None) or getattr(model, "base_model", None)
        if model is None:
            break
    raise ValueError("cannot find the LLM's decoder layers (expected .model.layers and .model.norm)")


def group_units(units: np.ndarray | list[int], spec: SpeechSpec, max_steps: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Units → per-step (inputs, targets), each (steps, group).

    Targets are the units and then ``EOS``, cut into groups of ``group`` (the last padded with -100,
    which the loss ignores); the inputs of step i are the units of group i-1 (``BOS`` for step 0).
    ``max_steps`` cuts long speech to its first ``max_steps`` groups (then without ``EOS``: the speech
    goes on past the crop)."""
    codes = [int(u) for u in units]
    if max_steps and len(codes) >= max_steps * spec.group:
        sequence = codes[: max_steps * spec.group]
    else:
        sequence = codes + [spec.eos]
    steps = -(-len(sequence) // spec.group)
    targets = np.full(steps * spec.group, -100, np.int64)
    targets[: len(sequence)] = sequence
    targets = targets.reshape(steps, spec.group)
    inputs = np.empty_like(targets)
    inputs[0] = spec.bos
    inputs[1:] = targets[:-1]
    return inputs, targets


def text_steps(words: list[tuple[int, int, list[int]]], token_starts: list[int], spec: SpeechSpec,
               lead: list[int] | None = None, max_steps: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Units tied to the text (phoneme units) → per-step (inputs, targets, token index), for lock-step speech.

    ``words`` are (start, end, codes) in the reply's characters, ``token_starts`` the character where each
    reply token starts; token ``len(token_starts)`` is the end-of-turn token. Step i reads token i (steps past
    the end token read it again). A word's codes become available at the first token that starts at or after
    the word's end — the next word's first token, so the branch never has to say a word the text has not
    finished — or at the end token; ``lead`` (the style code) is available at step 0. Each step writes the
    next ``group`` available codes, then ``hold`` if it ran out (the rest of the group ignored); once the end
    token has been read and everything said, ``EOS``."""
    if spec.hold < 0:
        raise ValueError("text_steps needs a SpeechSpec with a hold code (phoneme units)")
    end = len(token_starts)
    ready: dict[int, list[int]] = {0: list(lead or [])}
    for _, stop, codes in words:
        at = next((j for j, s in enumerate(token_starts) if s >= stop and j > 0), end)
        ready.setdefault(at, []).extend(codes)
    queue, rows, step = [], [], 0
    while True:
        queue += ready.pop(min(step, end), []) if step <= end else []
        take, queue = queue[: spec.group], queue[spec.group:]
        finished = step >= end and not queue and not ready
        if len(take) < spec.group:
            take.append(spec.eos if finished else spec.hold)
        rows.append(take + [-100] * (spec.group - len(take)))
        step += 1
        if (finished and rows[-1][len(take) - 1] == spec.eos) or (max_steps and step >= max_steps):
            break
    targets = np.asarray(rows, np.int64)
    inputs = np.empty_like(targets)
    inputs[0] = spec.bos
    inputs[1:] = np.where(targets[:-1] == -100, spec.hold, targets[:-1])
    return inputs, targets, np.minimum(np.arange(len(rows)), end)


def branch_spec(config: Any) -> SpeechSpec | None:
    """The checkpoint's ``SpeechSpec`` (None: a model without a voice of its own)."""
    speech = getattr(config, "speech", None)
    return SpeechSpec(**speech) if speech else None


def unit_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every (step, head) with a target."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                       ignore_index=-100)


@dataclass
class UnitPiece:
    """Units the branch wrote in one step (a ``Piece``-like item of the generation stream)."""

    codes: list[int]
    part: str = "units"
    text: str = ""


class UnitWriter:
    """Steps the speech branch one group at a time over its own KV cache, fed the text model's layer-n state.

    Greedy by default (``temperature`` > 0 samples from a private, seeded generator). ``BOS`` is never
    written; the first ``EOS`` in a group ends the speech (the units before it in the group are kept), the
    first ``hold`` ends the step."""

    def __init__(self, branch: SpeechBranch, temperature: float = 0.0, max_steps: int = 400, seed: int = 0) -> None:
        from transformers import DynamicCache

        from emoslm.llm.lean import LeanStack, supports

        self.branch, self.spec = branch, branch.spec
        body = branch.body  # the lean path when the LLM family has one (as the text stream's TokenLoop)
        self.lean = LeanStack(body.layers, body.norm, body.rotary_emb, body.config) if supports(body.config) else None
        self.cache = DynamicCache() if self.lean is None else None
        self.temperature, self.max_steps, self.steps = temperature, max_steps, 0
        self.device = next(branch.parameters()).device
        self.previous = torch.full((1, 1, self.spec.group), self.spec.bos, device=self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.done = False

    @torch.inference_mode()
    def step(self, text_hidden: torch.Tensor) -> list[int]:
        """One step from the newest text token's (1, hidden) state → up to ``group`` units."""
        if self.done:
            return []
        inputs = self.branch.inputs(text_hidden[:, None], self.previous)
        if self.lean is not None:
            last = self.lean.step(inputs)[0][0, -1]
            scores = torch.stack([head(last) for head in self.branch.heads]).float()  # (group, vocab)
        else:
            logits, _ = self.branch(inputs, cache=self.cache)
            scores = logits[0, -1].float()
        scores[:, self.spec.bos] = float("-inf")
        if self.temperature > 0:
            probs = torch.softmax(scores / self.temperature, dim=-1)
            codes = torch.multinomial(probs, 1, generator=self.generator)[:, 0]
        else:
            codes = scores.argmax(dim=-1)
        self.previous = codes.view(1, 1, -1)
        self.steps += 1
        out = []
        for code in codes.tolist():
            if code == self.spec.eos:
                self.done = True
                break
            if code == self.spec.hold:  # nothing more this step (phoneme units wait for the text)
                break
            out.append(code)
        self.done = self.done or self.steps >= self.max_steps
        return out
