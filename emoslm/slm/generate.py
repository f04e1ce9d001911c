"""Build the unified model from the packaged parts, lay out its prompt, and generate think and reply.

The prompt is the LLM's own chat template (rendered by the same ``ChatTemplate`` the teacher uses)
with a marker in the user turn; the marker's place becomes ``speech_length`` placeholder positions
that ``UnifiedSLM.embed`` fills with speech embeddings. The assistant turn opens with ``<think>``;
thinking stops at ``</think>`` or at the think budget (then the closing tag is appended as token ids),
and the reply is generated after it until the end-of-turn token, all on one KV cache: the prompt is
prefilled once and every later token is appended to it. ``generate_stream`` yields think and reply
deltas as they are decoded; ``generate`` drains it.

Speaking (a model with a speech branch, ``speak=True``): after the bridge, every reply token fed to the
LLM also drives one step of the branch (``UnitWriter``) from that token's layer-n hidden state, so text
deltas and ``UnitPiece``s come out in lock-step; the end-of-turn token is fed too, and its state drives
the speech that is still to come after the text has ended, until the branch writes ``EOS``.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import torch

from emoslm.errors import EmoslmError
from emoslm.ieat.think import THINK_CLOSE, Incremental, Piece, clean_reply, open_think
from emoslm.llm.base import ChatTemplate, Sampling, StopMatcher
from emoslm.llm.decoding import Detokenizer, TokenLoop, end_ids
from emoslm.slm.model import UnifiedSLM, UnifiedSLMConfig
from emoslm.slm.speak import UnitPiece, UnitWriter
from emoslm.streams import drain

SPEECH_MARK = "<|emoslm-speech|>"
SYSTEM = "You are a warm, emotionally attentive voice assistant. Think about how the user feels and why, then reply."


def from_parts(llm: str = "smollm2-135m-instruct", encoder: str = "whisper-tiny.en", adapter_dim: int = 512,
               adapter_layers: int = 2, adapter_heads: int = 8) -> tuple[UnifiedSLM, Any]:
    """A UnifiedSLM with the packaged (or given) LLM and Whisper weights and a fresh adapter, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emoslm.llm.hf import hf_checkpoint
    from emoslm.speech.whisper_ct2 import load_whisper_encoder

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
    text = ChatTemplate.from_tokenizer(tokenizer).render(messages, add_generation_prompt=True)
    if think:
        text = open_think(text)
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
    units: list[int] = field(default_factory=list)  # what the speech branch wrote (speak=True)


def generate_stream(model: UnifiedSLM, tokenizer: Any, mel: torch.Tensor, history: list[dict[str, str]] | None = None,
                    think_budget: int = 64, max_new_tokens: int = 128, sampling: Sampling | None = None,
                    speak: bool = False, unit_temperature: float = 0.0, max_unit_steps: int = 400
                    ) -> Generator[Piece | UnitPiece, None, Generated]:
    """Think then reply for one clip (mel: (n_mels, frames)), delta by delta, on one KV cache; with ``speak``
    (the model must have a speech branch) the reply's units too, in lock-step with its text."""
    if speak and model.speech_branch is None:
        raise EmoslmError("this checkpoint has no speech branch (train stage 2 to give it a voice); use a TTS voice")
    s = sampling or Sampling(temperature=0.0, repeat_penalty=1.0)
    device = next(model.parameters()).device
    prompt = layout(tokenizer, model.speech_length(mel.shape[-1]), history)
    with torch.inference_mode():
        embeds = model.embed(torch.tensor([prompt.input_ids], device=device),
                             torch.tensor([prompt.speech_mask], device=device), mel[None].to(device),
                             torch.tensor([mel.shape[-1]], device=device))
    loop = TokenLoop(model.llm, s, device, hidden_layer=model.speech_layer if speak else None)
    ends = end_ids(tokenizer)
    loop.feed(embeds=embeds)

    think, stops, shown = Detokenizer(tokenizer), StopMatcher([THINK_CLOSE]), Incremental(str.strip)
    think_tokens, closed = 0, False
    while think_tokens < think_budget and not closed:
        token = loop.sample()
        if token in ends:
            break
        think_tokens += 1
        loop.feed([token])
        safe, closed = stops.feed(think.add(token))
        yield Piece("think", shown.update(safe))
    yield Piece("think", shown.update("" if closed else stops.flush()) + shown.finish())
    after = think.text.split(THINK_CLOSE, 1)[1] if closed else ""
    loop.feed(tokenizer(_bridge(closed, after), add_special_tokens=False)["input_ids"])

    reply, said, reply_tokens = Detokenizer(tokenizer), Incremental(clean_reply), 0
    writer = UnitWriter(model.speech_branch, unit_temperature, max_unit_steps) if speak else None
    units: list[int] = []
    while reply_tokens < max_new_tokens:
        token = loop.sample()
        if token in ends:
            if writer is not None:
                loop.feed([token])  # its state drives the rest of the speech
            break
        reply_tokens += 1
        loop.feed([token])
        yield Piece("reply", said.update(reply.add(token)))
        if writer is not None and not writer.done:
            units += (codes := writer.step(loop.hidden))
            yield UnitPiece(codes)
    yield Piece("reply", said.finish())
    while writer is not None and not writer.done:  # the speech goes on after the text
        units += (codes := writer.step(loop.hidden))
        yield UnitPiece(codes)
    return Generated(shown.emitted, said.emitted, think_tokens, reply_tokens, not closed, units)


def _bridge(closed: bool, after_close: str) -> str:
    """What joins the think to the reply, as the training targets have it: ``think\n</think>\n\n``."""
    if not closed:
        return f"\n{THINK_CLOSE}\n\n"
    if after_close.strip():  # the model already went on past the blank line
        return ""
    newlines = len(after_close) - len(after_close.lstrip("\n"))
    return "\n" * max(0, 2 - newlines)


def generate(model: UnifiedSLM, tokenizer: Any, mel: torch.Tensor, history: list[dict[str, str]] | None = None,
             think_budget: int = 64, max_new_tokens: int = 128, temperature: float = 0.0, speak: bool = False
             ) -> Generated:
    """``generate_stream``, drained."""
    sampling = Sampling(temperature=temperature, repeat_penalty=1.0)
    return drain(generate_stream(model, tokenizer, mel, history, think_budget, max_new_tokens, sampling, speak))
