"""A lean decode path for Llama-family decoder stacks (Llama/SmolLM2, Qwen2, Qwen3): the same weights and
arithmetic as ``transformers``, stepped with plain torch ops over a preallocated KV cache.

Why: decoding one token of SmolLM2-135M is ~0.3 GFLOP, a few milliseconds of arithmetic on this CPU, but a
``transformers`` forward costs ~50 ms, almost all of it per-call overhead (mask building, cache objects,
kwargs plumbing, output dataclasses, hooks) — so a loop with none of it decodes several times faster on
the same weights. It reads the modules' own weights (nothing is copied, so LoRA merged or not, a freshly
loaded checkpoint or a trained one, it follows them) and the model's own rotary embedding, and keeps the
hidden state after every layer the caller asks for (the speech branch reads layer n). Anything it does not
know (sliding windows, other attention kinds, PEFT wrappers) is refused by ``supports`` and the caller
keeps the ``transformers`` path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional

KINDS = ("llama", "qwen2", "qwen3")


def supports(config: Any) -> bool:
    """Whether a decoder stack with this config can be stepped here."""
    if getattr(config, "model_type", "") not in KINDS:
        return False
    if getattr(config, "use_sliding_window", False):
        return False
    if any(kind != "full_attention" for kind in (getattr(config, "layer_types", None) or [])):
        return False
    return getattr(config, "hidden_act", "silu") == "silu"


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return weight * (x.float() * torch.rsqrt(variance + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class LeanStack:
    """``step(inputs_embeds, keep) → (final hidden, {layer: hidden})`` for batch 1, appending to its KV cache.

    ``layers`` are the model's decoder layer modules, ``norm`` its final norm (applied to the last output)
    and ``rotary`` its rotary embedding module; ``keep`` names hidden states to return by their index in
    ``transformers``' ``hidden_states`` (0: the inputs, i: after layer i)."""

    def __init__(self, layers: Any, norm: Any, rotary: Any, config: Any, capacity: int = 512) -> None:
        self.layers, self.norm, self.rotary, self.config = list(layers), norm, rotary, config
        self.eps = float(config.rms_norm_eps)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        weight = self.layers[0].input_layernorm.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.length = 0
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        shape = (len(self.layers), 2, 1, self.kv_heads, capacity, self.head_dim)
        cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        if getattr(self, "cache", None) is not None:
            cache[..., : self.length, :] = self.cache[..., : self.length, :]
        self.cache = cache
        probe = torch.zeros(1, device=self.device, dtype=self.dtype)
        cos, sin = self.rotary(probe, torch.arange(capacity, device=self.device)[None])
        self.cos, self.sin = cos[0], sin[0]  # (capacity, head_dim)

    @torch.inference_mode()
    def step(self, embeds: torch.Tensor, keep: tuple[int, ...] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        n = embeds.shape[1]
        start, end = self.length, self.length + n
        if end > self.cache.shape[4]:
            self._allocate(max(2 * self.cache.shape[4], end))
        cos, sin = self.cos[start:end], self.sin[start:end]
        mask = None
        if n > 1:  # each new position sees the cache and the new positions up to itself
            mask = torch.ones(n, end, dtype=torch.bool, device=self.device).tril(start)
        x, kept = embeds.to(self.dtype), {}
        if 0 in keep:
            kept[0] = x
        for i, layer in enumerate(self.layers):
            x = x + self._attention(layer.self_attn, _rms(x, layer.input_layernorm.weight, self.eps), i,
                                    start, end, cos, sin, mask)
            h = _rms(x, layer.post_attention_layernorm.weight, self.eps)
            mlp = layer.mlp
            x = x + mlp.down_proj(functional.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
            if i + 1 in keep:
                kept[i + 1] = x
        self.length = end
        return _rms(x, self.norm.weight, self.eps), kept

    def _attention(self, attn: Any, h: torch.Tensor, i: int, start: int, end: int, cos: torch.Tensor,
                   sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n = h.shape[1]
        q = attn.q_proj(h).view(1, n, self.heads, self.head_dim)
        k = attn.k_proj(h).view(1, n, self.kv_heads, self.head_dim)
        v = attn.v_proj(h).view(1, n, self.kv_heads, self.head_dim)
        if getattr(attn, "q_norm", None) is not None:  # Qwen3 normalises each head's query and key
            q, k = _rms(q, attn.q_norm.weight, self.eps), _rms(k, attn.k_norm.weight, self.eps)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        self.cache[i, 0, :, :, start:end] = k
        self.cache[i, 1, :, :, start:end] = v
        keys, values = self.cache[i, 0, :, :, :end], self.cache[i, 1, :, :, :end]
        out = functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                                      enable_gqa=self.kv_heads != self.heads)
        return attn.o_proj(out.transpose(1, 2).reshape(1, n, self.heads * self.head_dim))


def lean_llm(model: Any, capacity: int = 512) -> LeanStack | None:
    """A LeanStack over a causal LM's decoder (None when it cannot be stepped here)."""
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "layers") or not hasattr(model, "lm_head") or not supports(model.config):
        return None  # PEFT wrappers, other architectures
    return LeanStack(base.layers, base.norm, base.rotary_emb, model.config, capacity)
