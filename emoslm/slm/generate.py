"""Build the unified model from the packaged parts, lay out its prompt, and generate think and reply.

The prompt is the LLM's own chat template with a marker in the user turn; the marker's place becomes
``speech_length`` placeholder positions that ``UnifiedSLM.embed`` fills with speech embeddings. The
assistant turn opens with ``<think>``; thinking stops at ``</think>`` or at the think budget (then the
closing tag is appended), and the reply is generated after it until the end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from emoslm.llm.thinking import THINK_CLOSE, THINK_OPEN, strip_think
from emoslm.slm.model import UnifiedSLM, UnifiedSLMConfig

SPEECH_MARK = "<|emoslm-speech|>"
SYSTEM = "You are a warm, emotionally attentive voice assistant. Think about how the user feels and why, then reply."


def from_parts(llm: str = "smollm2-135m-instruct", encoder: str = "whisper-tiny.en", adapter_dim: int = 512,
               adapter_layers: int = 2, adapter_heads: int = 8) -> tuple[UnifiedSLM, Any]:
    """A UnifiedSLM with the packaged (or given) LLM and Whisper weights and a fresh adapter, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emoslm.llm.hf import hf_checkpoint
    from emoslm.slm.whisper_ct2 import load_whisper_encoder

    checkpoint = hf_checkpoint(llm)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    language_model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    whisper = load_whisper_encoder(encoder)
    config = UnifiedSLMConfig(llm_config=language_model.config.to_dict(), encoder_config=whisper.config.to_dict(),
                              adapter_dim=adapter_dim, adapter_layers=adapter_layers, adapter_heads=adapter_heads,
                              llm_source=llm, encoder_source=encoder)
    model = UnifiedSLM(config)
    model.llm.load_state_dict(language_model.state_dict())
    model.encoder.load_state_dict(whisper.state_dict())
    return model.eval(), tokenizer


@dataclass
class Prompt:
    input_ids: list[int]
    speech_mask: list[bool]


def layout(tokenizer: Any, speech_length: int, history: list[dict[str, str]] | None = None,
           system: str = SYSTEM, think: bool = True) -> Prompt:
    """Token ids of the chat template with ``speech_length`` placeholders where the user's speech goes."""
    messages = [{"role": "system", "content": system}, *(history or []), {"role": "user", "content": SPEECH_MARK}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if think:
        text += f"{THINK_OPEN}\n"
    before, _, after = text.partition(SPEECH_MARK)
    head = tokenizer(before, add_special_tokens=False)["input_ids"]
    tail = tokenizer(after, add_special_tokens=False)["input_ids"]
    placeholder = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Prompt(head + [placeholder] * speech_length + tail,
                  [False] * len(head) + [True] * speech_length + [False] * len(tail))


@dataclass
class Generated:
    think: str
    reply: str
    think_tokens: int
    reply_tokens: int
    think_closed_by_budget: bool


@torch.no_grad()
def generate(model: UnifiedSLM, tokenizer: Any, mel: torch.Tensor, history: list[dict[str, str]] | None = None,
             think_budget: int = 64, max_new_tokens: int = 128, temperature: float = 0.0) -> Generated:
    """Think then reply for one clip (mel: (n_mels, frames)), with the KV cache of ``generate``."""
    prompt = layout(tokenizer, model.speech_length(mel.shape[-1]), history)
    ids = torch.tensor([prompt.input_ids])
    embeds = model.embed(ids, torch.tensor([prompt.speech_mask]), mel[None], torch.tensor([mel.shape[-1]]))
    end = _end_ids(tokenizer)
    think_ids = _continue(model, tokenizer, embeds, think_budget, temperature, end, stop=[THINK_CLOSE])
    think_text = tokenizer.decode(think_ids, skip_special_tokens=True)
    closed_by_budget = THINK_CLOSE not in think_text
    think_text = think_text.split(THINK_CLOSE)[0].strip()
    bridge = tokenizer(f"{think_text}\n{THINK_CLOSE}\n\n", add_special_tokens=False)["input_ids"]
    embeds = torch.cat([embeds, model.llm.get_input_embeddings()(torch.tensor([bridge]))], dim=1)
    reply_ids = _continue(model, tokenizer, embeds, max_new_tokens, temperature, end)
    reply = strip_think(tokenizer.decode(reply_ids, skip_special_tokens=True)).strip()
    return Generated(think_text, reply, len(think_ids), len(reply_ids), closed_by_budget)


def _end_ids(tokenizer: Any) -> list[int]:
    ends = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|endoftext|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ends.add(token_id)
    return sorted(i for i in ends if i is not None)


def _continue(model: UnifiedSLM, tokenizer: Any, embeds: torch.Tensor, budget: int, temperature: float,
              end: list[int], stop: list[str] | None = None) -> list[int]:
    out = model.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                             max_new_tokens=budget, do_sample=temperature > 0, temperature=temperature or None,
                             top_p=None, top_k=None, eos_token_id=end, pad_token_id=end[0], stop_strings=stop,
                             tokenizer=tokenizer if stop else None)
    return [int(t) for t in out[0] if int(t) not in end]
