"""Build the unified model from the packaged parts, lay out its prompt, and generate think and reply.

The prompt is laid out by the model's processor (``model.processor``, ``emoslm.slm.processor``, saved with the
checkpoint): the LLM's own chat template with a marker in the user turn; the marker's place becomes
``speech_length`` placeholder positions that ``UnifiedSLM.embed`` fills with speech embeddings. The assistant turn
opens with ``<think>``; thinking stops at ``</think>`` or at the think budget (then the closing tag is appended as
token ids), and the reply is generated after it until the end-of-turn token, all on one KV cache: the prompt is
prefilled once and every later token is appended to it. ``generate_stream`` yields think and reply deltas as they
are decoded; ``generate`` drains it.

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
from emoslm.llm.base import Sampling, StopMatcher
from emoslm.llm.decoding import Detokenizer, TokenLoop, cache_arg, end_ids
from emoslm.slm.model import UnifiedSLM, UnifiedSLMConfig
from emoslm.slm.processor import SLMProcessor
from emoslm.slm.speak import UnitPiece, UnitWriter
from emoslm.streams import drain
from emoslm.think import Incremental, Piece, clean_reply


def from_parts(llm: str = "smollm2-135m-instruct", encoder: str = "whisper-tiny.en", adapter_dim: int = 512,
               adapter_layers: int = 2, adapter_heads: int = 8, encoder_mix: bool = False,
               emotion_head: bool = False, emotion_weight: float = 0.5, emotion_prosody: bool = False,
               inject_emotion: bool = False, emotion_frame_dropout: float = 0.0) -> tuple[UnifiedSLM, Any]:
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
                              llm_source=llm, encoder_source=encoder, encoder_mix=encoder_mix,
                              emotion_head=emotion_head, emotion_weight=emotion_weight,
                              emotion_prosody=emotion_prosody, inject_emotion=inject_emotion,
                              emotion_frame_dropout=emotion_frame_dropout)
    model = UnifiedSLM(config)
    model.llm.load_state_dict(language_model.state_dict())
    model.encoder.load_state_dict(whisper.state_dict())
    return model.eval(), tokenizer


def prompt_embeds(model: UnifiedSLM, tokenizer: Any, mel: torch.Tensor, history: list[dict[str, str]] | None = None,
                  opening: str = "", heard: Any = None) -> torch.Tensor:
    """(prompt length, hidden) input embeddings of one clip's prompt, its speech written in (no grad);
    ``opening`` (the injected start of the think) follows ``<think>``; ``heard``: ``model.hear(mel)`` when the
    caller already ran it (the emotion head read the same speech embeddings: one encoder pass a turn)."""
    device = next(model.parameters()).device
    prompt = model.processor.layout(tokenizer, model.speech_length(mel.shape[-1]), history)
    ids = prompt.input_ids + (tokenizer(opening, add_special_tokens=False)["input_ids"] if opening else [])
    mask = prompt.speech_mask + [False] * (len(ids) - len(prompt.input_ids))
    with torch.inference_mode():
        return model.embed(torch.tensor([ids], device=device), torch.tensor([mask], device=device),
                           mel[None].to(device), torch.tensor([mel.shape[-1]], device=device), heard=heard)[0]


def heard_prosody(model: UnifiedSLM, audio: Any) -> torch.Tensor | None:
    """What a caller with the clip's audio passes as ``prosody``: its prosodic functionals when the model's
    emotion head reads them, else None (the cost of computing them is then skipped)."""
    from emoslm.slm.listen import prosody_vector

    head = model.emotion_head
    return prosody_vector(audio) if head is not None and head.prosody_dim else None


def injected_opening(model: UnifiedSLM, mel: torch.Tensor, prosody: torch.Tensor | None = None, lang: str = "en",
                     heard: Any = None) -> str:
    """The start of the think that the model's own emotion head decides, as the IEAT teacher's think starts with
    the recogniser's tag (``think_opening``): "The user speaks with …, so the emotion I hear is sad. The most
    likely reason they feel sad is" — the LLM writes the reason. "" for a model that does not inject (no head,
    or ``config.inject_emotion`` off): its think is the LLM's alone."""
    from emoslm.think import think_opening

    if not model.injects_emotion:
        return ""
    probs = model.heard_emotion(mel, prosody, heard)
    return think_opening(max(probs, key=probs.get), lang)


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
                    speak: bool = False, unit_temperature: float = 0.0, max_unit_steps: int = 400,
                    text: Any = None, prosody: torch.Tensor | None = None, lang: str = "en"
                    ) -> Generator[Piece | UnitPiece, None, Generated]:
    """Think then reply for one clip (mel: (n_mels, frames)), delta by delta, on one KV cache; with ``speak``
    (the model must have a speech branch) the reply's units too, in lock-step with its text. ``text``: a
    ``LlamaText`` of the model's LLM (``emoslm.slm.llama_text``) decodes the text stream in llama.cpp; the
    prompt's embeddings and the speech branch stay in PyTorch. A model that injects what its emotion head hears
    (``injected_opening``; ``prosody``: the clip's ``prosody_vector`` when the head reads it) starts its think
    with that opening, in ``lang``."""
    if speak and model.speech_branch is None:
        raise EmoslmError("this checkpoint has no speech branch (train stage 2 to give it a voice); use a TTS voice")
    s = sampling or Sampling(temperature=0.0, repeat_penalty=1.0)
    device = next(model.parameters()).device
    heard = model.hear(mel)
    opening = injected_opening(model, mel, prosody, lang, heard)
    embeds = prompt_embeds(model, tokenizer, mel, history, opening, heard)[None]
    if text is not None:
        loop = text.loop(s)
    else:
        loop = TokenLoop(model.llm, s, device, hidden_layer=model.speech_layer if speak else None)
    ends = end_ids(tokenizer)
    loop.feed(embeds=embeds)

    rules = model.processor
    think, stops, shown = Detokenizer(tokenizer), StopMatcher([rules.think_close]), Incremental(str.strip)
    think_tokens, closed = 0, False
    if opening:
        yield Piece("think", shown.update(opening))
    while think_tokens < think_budget and not closed:
        token = loop.sample()
        if token in ends:
            break
        think_tokens += 1
        loop.feed([token])
        safe, closed = stops.feed(think.add(token))
        yield Piece("think", shown.update(safe))
    yield Piece("think", shown.update("" if closed else stops.flush()) + shown.finish())
    after = think.text.split(rules.think_close, 1)[1] if closed else ""
    loop.feed(tokenizer(rules.bridge(closed, after), add_special_tokens=False)["input_ids"])

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


@torch.inference_mode()
def speak_text(model: UnifiedSLM, tokenizer: Any, mel: torch.Tensor, think: str, reply: str,
               history: list[dict[str, str]] | None = None, max_unit_steps: int = 400) -> list[int]:
    """The units the speech branch writes when the text is given (teacher-forced think and reply): the branch's
    own skill at saying a text, apart from what the text model would write. The same feeding as
    ``generate_stream`` — prompt, think and bridge, then one branch step per reply token, the end token, and
    the steps after it until ``EOS``."""
    if model.speech_branch is None:
        raise EmoslmError("this checkpoint has no speech branch")
    device = next(model.parameters()).device
    loop = TokenLoop(model.llm, Sampling(temperature=0.0, repeat_penalty=1.0), device, hidden_layer=model.speech_layer)
    loop.feed(embeds=prompt_embeds(model, tokenizer, mel, history)[None])
    loop.feed(tokenizer(model.processor.target(think.strip(), ""), add_special_tokens=False)["input_ids"])
    writer, units = UnitWriter(model.speech_branch, max_steps=max_unit_steps), []
    end = model.processor.end_id(tokenizer)
    for token in [*tokenizer(reply, add_special_tokens=False)["input_ids"], end]:
        loop.feed([token])
        if not writer.done:
            units += writer.step(loop.hidden)
    while not writer.done:
        units += writer.step(loop.hidden)
    return units


def generate(model: UnifiedSLM, tokenizer: Any, mel: torch.Tensor, history: list[dict[str, str]] | None = None,
             think_budget: int = 64, max_new_tokens: int = 128, temperature: float = 0.0, speak: bool = False,
             text: Any = None, prosody: torch.Tensor | None = None, lang: str = "en") -> Generated:
    """``generate_stream``, drained."""
    sampling = Sampling(temperature=temperature, repeat_penalty=1.0)
    return drain(generate_stream(model, tokenizer, mel, history, think_budget, max_new_tokens, sampling, speak,
                                 text=text, prosody=prosody, lang=lang))


@dataclass
class _Row:
    """One clip's place in ``generate_batch``: which phase it is in, its texts so far and the forced tokens
    (the think-to-reply bridge) it still has to feed before it samples again."""

    think: Detokenizer
    reply: Detokenizer
    opening: str = ""  # the injected start of the think (in the prompt, not generated)
    phase: str = "think"  # think | reply | done
    think_tokens: int = 0
    reply_tokens: int = 0
    closed: bool = False
    queued: list[int] = field(default_factory=list)


def generate_batch(model: UnifiedSLM, tokenizer: Any, mels: list[torch.Tensor],
                   histories: list[list[dict[str, str]] | None] | None = None, think_budget: int = 64,
                   max_new_tokens: int = 128, batch_size: int = 16, prosody: list[torch.Tensor] | None = None
                   ) -> list[Generated]:
    """Greedy think + reply for many clips at once: what ``generate`` writes for each (the same budget, the
    same bridge), decoded side by side over a left-padded batch. Evaluation scores hundreds of held-out
    clips; one clip at a time decodes ~12 tokens/s on this CPU, a batch of 16 many times that."""
    histories = histories or [None] * len(mels)
    prosody = prosody or [None] * len(mels)
    out: list[Generated] = []
    for start in range(0, len(mels), batch_size):
        window = slice(start, start + batch_size)
        out += _batch(model, tokenizer, mels[window], histories[window], think_budget, max_new_tokens, prosody[window])
    return out


@torch.inference_mode()
def _batch(model: UnifiedSLM, tokenizer: Any, mels: list[torch.Tensor], histories: list[Any], think_budget: int,
           max_new_tokens: int, prosody: list[torch.Tensor | None]) -> list[Generated]:
    from transformers import DynamicCache

    device = next(model.parameters()).device
    heard = [model.hear(mel) for mel in mels]
    openings = [injected_opening(model, mel, p, heard=h) for mel, p, h in zip(mels, prosody, heard, strict=True)]
    embeds = [prompt_embeds(model, tokenizer, mel, history, opening, h)
              for mel, history, opening, h in zip(mels, histories, openings, heard, strict=True)]
    longest = max(e.shape[0] for e in embeds)
    batch = torch.zeros(len(embeds), longest, embeds[0].shape[-1], dtype=embeds[0].dtype, device=device)
    mask = torch.zeros(len(embeds), longest, dtype=torch.long, device=device)
    for b, e in enumerate(embeds):  # left padding: every row's newest token is at the end
        batch[b, longest - e.shape[0]:], mask[b, longest - e.shape[0]:] = e, 1
    cache = DynamicCache()
    keyword = cache_arg(model.llm)
    logits = _forward(model.llm, keyword, cache, mask, inputs_embeds=batch)
    ends, pad = end_ids(tokenizer), tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = [_Row(Detokenizer(tokenizer), Detokenizer(tokenizer), opening) for opening in openings]
    while any(r.phase != "done" for r in rows):
        feed = [_next(row, int(token), ends, tokenizer, model.processor, think_budget, max_new_tokens)
                for row, token in zip(rows, logits.argmax(-1).tolist(), strict=True)]
        live = torch.tensor([[0 if t is None else 1] for t in feed], device=device)
        if not live.any():
            break
        mask = torch.cat([mask, live], dim=1)
        ids = torch.tensor([[pad if t is None else t] for t in feed], device=device)
        logits = _forward(model.llm, keyword, cache, mask, input_ids=ids)
    return [Generated(_think_text(r, model.processor), clean_reply(r.reply.text), r.think_tokens, r.reply_tokens,
                      not r.closed) for r in rows]


def _forward(llm: Any, keyword: str, cache: Any, mask: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
    """The next-token logits of every row after appending ``inputs`` (positions count real tokens only)."""
    n = next(iter(inputs.values())).shape[1]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -n:]
    out = llm(**inputs, attention_mask=mask, position_ids=positions, **{keyword: cache}, use_cache=True,
              logits_to_keep=1)
    return out.logits[:, -1, :].float()


def _next(row: _Row, token: int, ends: set[int], tokenizer: Any, rules: SLMProcessor, think_budget: int,
          max_new_tokens: int) -> int | None:
    """Advance one row by the token its logits chose; returns the token to feed (None: the row is done).
    Mirrors ``generate_stream``: the think runs to ``</think>``, an end token (not fed) or the budget, then
    the bridge is fed token by token, then the reply runs to an end token or ``max_new_tokens``."""
    if row.phase == "done":
        return None
    if row.queued:
        return row.queued.pop(0)
    if row.phase == "think":
        if token in ends:
            _queue_bridge(row, tokenizer, rules)
            return row.queued.pop(0)  # not closed: the bridge is never empty
        row.think_tokens += 1
        row.think.add(token)
        row.closed = rules.think_close in row.think.text
        if row.closed or row.think_tokens >= think_budget:
            _queue_bridge(row, tokenizer, rules)
        return token
    if token in ends or row.reply_tokens >= max_new_tokens:
        row.phase = "done"
        return None
    row.reply_tokens += 1
    row.reply.add(token)
    return token


def _queue_bridge(row: _Row, tokenizer: Any, rules: SLMProcessor) -> None:
    after = row.think.text.split(rules.think_close, 1)[1] if row.closed else ""
    row.queued = tokenizer(rules.bridge(row.closed, after), add_special_tokens=False)["input_ids"]
    row.phase = "reply"


def _think_text(row: _Row, rules: SLMProcessor) -> str:
    """The think as ``generate_stream`` shows it: what comes before ``</think>``, trimmed."""
    return (row.opening + row.think.text.split(rules.think_close, 1)[0]).strip()
