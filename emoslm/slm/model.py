"""UnifiedSLM: one model that hears the user (Whisper encoder + adapter), thinks and writes (a causal LM)
and, once it has a speech branch (``speak.py``, stage 2), speaks in units of its own.

Speech embeddings replace a run of placeholder positions in the user turn of the LLM's own chat
template (``speech_mask`` marks them), so the template, its special tokens and the LLM's abilities
stay as they are. Checkpoints are ordinary ``save_pretrained`` folders (``config.json`` with the LLM's
and the encoder's configs inside, ``model.safetensors``, the tokenizer), loadable with
``UnifiedSLM.from_pretrained``.

Think markers: models with think tokens (Qwen3) use them; models without (SmolLM2) get ``<think>`` /
``</think>`` as plain text, the same choice as the IEAT teacher (``emoslm.think``). Adding new
tokens would give them untrained embeddings that the small data here cannot teach well; as text they
are a few ordinary tokens the model already reads.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from emoslm.emotions import TAGS
from emoslm.slm.listen import Adapter, EmotionHead, LayerMix, Subsampler, prosody_size
from emoslm.slm.processor import SLMProcessor
from emoslm.slm.speak import SpeakOutput, SpeechBranch, SpeechSpec, branch_spec, unit_loss
from emoslm.speech.whisper_ct2 import encode, encode_layers


class UnifiedSLMConfig(PretrainedConfig):
    model_type = "emoslm_unified_slm"

    def __init__(self, llm_config: dict[str, Any] | None = None, encoder_config: dict[str, Any] | None = None,
                 adapter_dim: int = 512, adapter_layers: int = 2, adapter_heads: int = 8,
                 llm_source: str = "", encoder_source: str = "", speech: dict[str, Any] | None = None,
                 encoder_mix: bool = False, emotion_head: bool = False, emotion_weight: float = 0.5,
                 emotion_prosody: bool = False, inject_emotion: bool = False, emotion_frame_dropout: float = 0.0,
                 **kwargs: Any) -> None:
        self.llm_config = llm_config or {}
        # the listening path that keeps the paralinguistics (issue 33): a learned mix of every encoder layer
        # instead of the last alone, and an emotion head on the adapter's output trained beside the text loss
        self.encoder_mix, self.emotion_head, self.emotion_weight = encoder_mix, emotion_head, emotion_weight
        # the head also reads the clip's prosodic functionals; and the think starts with what the head heard
        # (generate.injected_opening), as the IEAT teacher's think starts with the recogniser's tag
        self.emotion_prosody, self.inject_emotion = emotion_prosody, inject_emotion
        self.emotion_frame_dropout = emotion_frame_dropout  # 1.0 with prosody: the head reads the prosody alone
        self.speech = speech  # a SpeechSpec as a dict once the model has a speech branch (stage 2)
        self.encoder_config = encoder_config or {}
        self.adapter_dim, self.adapter_layers, self.adapter_heads = adapter_dim, adapter_layers, adapter_heads
        self.llm_source, self.encoder_source = llm_source, encoder_source  # where the weights came from
        super().__init__(**kwargs)

    def llm(self) -> PretrainedConfig:
        fields = dict(self.llm_config)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)

    def encoder(self) -> WhisperConfig:
        return WhisperConfig(**{k: v for k, v in self.encoder_config.items() if k != "model_type"})


class _Enough(Exception):
    """Raised by ``unit_text_states``'s hook: the layers above the branch's input are not needed."""


AutoConfig.register(UnifiedSLMConfig.model_type, UnifiedSLMConfig)  # so AutoTokenizer can read our config.json


class UnifiedSLM(PreTrainedModel):
    config_class = UnifiedSLMConfig
    base_model_prefix = "slm"
    main_input_name = "input_ids"
    _supports_cache_class = True

    def __init__(self, config: UnifiedSLMConfig) -> None:
        super().__init__(config)
        encoder_config, llm_config = config.encoder(), config.llm()
        self.encoder = WhisperEncoder(encoder_config)
        self.layer_mix = LayerMix(encoder_config.encoder_layers + 1) if config.encoder_mix else None
        self.subsampler = Subsampler(encoder_config.d_model, config.adapter_dim)
        self.adapter = Adapter(config.adapter_dim, llm_config.hidden_size, config.adapter_layers, config.adapter_heads)
        self.llm = AutoModelForCausalLM.from_config(llm_config)
        self.emotion_head = EmotionHead(llm_config.hidden_size, len(TAGS),
                                        prosody_dim=prosody_size() if config.emotion_prosody else 0,
                                        frame_dropout=getattr(config, "emotion_frame_dropout", 0.0)
                                        ) if config.emotion_head else None
        spec = branch_spec(config)
        self.speech_branch = SpeechBranch(llm_config, spec) if spec else None
        self.unit_weight = 1.0  # the unit loss's weight in stage 2 (the trainer sets the recipe's)
        # the prompt rules and the mel front end (``emoslm.slm.processor``): saved and loaded with the weights
        self.processor = SLMProcessor.for_mels(encoder_config.num_mel_bins)
        self.post_init()

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> None:
        """The weights and config (``PreTrainedModel``'s), and the processor beside them."""
        super().save_pretrained(save_directory, *args, **kwargs)
        self.processor.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> UnifiedSLM:
        """``PreTrainedModel.from_pretrained``, with the processor the folder was saved with."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model.processor = SLMProcessor.from_pretrained(pretrained_model_name_or_path,
                                                       model.config.encoder().num_mel_bins)
        return model

    def add_speech_branch(self, spec: SpeechSpec) -> SpeechBranch:
        """Give the model a voice: a speech branch copied from the LLM's top ``spec.layers`` layers."""
        layers = self.config.llm().num_hidden_layers
        if not 0 < spec.layers < layers:
            raise ValueError(f"speech branch layers must be between 1 and {layers - 1}, not {spec.layers}")
        self.config.speech = asdict(spec)
        self.speech_branch = SpeechBranch(self.config.llm(), spec)
        self.speech_branch.copy_from(self.llm)
        return self.speech_branch

    @property
    def speech_spec(self) -> SpeechSpec | None:
        return branch_spec(self.config)

    @property
    def speech_layer(self) -> int:
        """n: the index into the LLM's ``hidden_states`` the branch reads (the input of its first copied layer)."""
        spec = self.speech_spec
        if spec is None:
            raise ValueError("this model has no speech branch")
        return self.config.llm().num_hidden_layers - spec.layers

    def _init_weights(self, module: nn.Module) -> None:
        """Fresh modules only (the encoder and LLM are loaded over this); keeps the adapter's output small."""
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # --- listen -------------------------------------------------------------------------------------------
    @staticmethod
    def speech_length(mel_frames: int) -> int:
        """Embeddings one clip of ``mel_frames`` log-mel frames (100 per second) becomes (≈ 6.25 per second)."""
        return Subsampler.out_length((mel_frames + 1) // 2)

    def speech_embeddings(self, mel: torch.Tensor | None = None, mel_frames: torch.Tensor | None = None,
                          frames: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, n_mels, mel frames) log-mel, or the frozen encoder's output when it was computed before
        (training reads it from a cache: (batch, frames, d), or (batch, layers + 1, frames, d) for a model that
        mixes the layers) → (batch, speech_length, llm hidden size). ``mel_frames`` are the clips' own lengths
        in mel frames (two per encoder frame) when padded."""
        return self.listen(mel, mel_frames, frames)[0]

    def listen(self, mel: torch.Tensor | None = None, mel_frames: torch.Tensor | None = None,
               frames: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The speech embeddings and their padding mask (True past each clip's own length)."""
        if frames is None:
            if mel is None:
                raise ValueError("speech_embeddings needs mel or frames")
            frames = encode_layers(self.encoder, mel) if self.layer_mix is not None else encode(self.encoder, mel)
        if self.layer_mix is not None:
            if frames.dim() != 4:
                raise ValueError("this model mixes the encoder's layers: give frames of every layer "
                                 "(FrameCache.for_model) or mel")
            frames = self.layer_mix(frames)
        hidden = self.subsampler(frames)
        padding = None
        if mel_frames is not None:
            lengths = torch.tensor([self.speech_length(int(n)) for n in mel_frames], device=hidden.device)
            padding = torch.arange(hidden.shape[1], device=hidden.device)[None] >= lengths[:, None]
        return self.adapter(hidden, padding), padding

    # --- think / write ------------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, speech_mask: torch.Tensor | None = None,
              mel: torch.Tensor | None = None, mel_frames: torch.Tensor | None = None,
              frames: torch.Tensor | None = None, heard: Any = None) -> torch.Tensor:
        """Token embeddings with the speech embeddings written over the positions ``speech_mask`` marks
        (``heard``: ``listen``'s output when the caller already has it, so the encoder runs once)."""
        return self._embed(input_ids, speech_mask, mel, mel_frames, frames, heard)[0]

    def _embed(self, input_ids: torch.Tensor, speech_mask: torch.Tensor | None, mel: torch.Tensor | None,
               mel_frames: torch.Tensor | None, frames: torch.Tensor | None, heard: Any = None
               ) -> tuple[torch.Tensor, Any]:
        """The embeddings, and (speech, padding) when there was speech (the emotion head reads them)."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        if (mel is None and frames is None and heard is None) or speech_mask is None:
            return embeds, None
        speech, padding = heard if heard is not None else self.listen(mel, mel_frames, frames)
        counts = speech_mask.sum(dim=1)
        rows = [speech[b, : int(counts[b])] for b in range(speech.shape[0])]
        if any(r.shape[0] != int(c) for r, c in zip(rows, counts, strict=True)):
            raise ValueError("speech_mask marks more positions than the clip has speech embeddings")
        return embeds.masked_scatter(speech_mask[..., None], torch.cat(rows).to(embeds.dtype)), (speech, padding)

    def emotion_loss(self, heard: Any, emotion_labels: torch.Tensor | None, prosody: torch.Tensor | None = None
                     ) -> torch.Tensor | None:
        """The emotion head's cross-entropy on the clips' tags (-100: no tag), or None when there is nothing to
        learn (no head, no labels, no speech)."""
        if self.emotion_head is None or emotion_labels is None or heard is None or bool((emotion_labels < 0).all()):
            return None
        speech, padding = heard
        logits = self.emotion_head(speech, padding, prosody)
        return nn.functional.cross_entropy(logits.float(), emotion_labels, ignore_index=-100)

    @torch.inference_mode()
    def hear(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``listen`` for one clip (mel: (n_mels, frames)): its speech embeddings and padding, batch of one."""
        device = next(self.parameters()).device
        return self.listen(mel[None].to(device), torch.tensor([mel.shape[-1]], device=device))

    @property
    def injects_emotion(self) -> bool:
        """Whether the think starts with what the emotion head hears (``generate.injected_opening``)."""
        return self.emotion_head is not None and bool(getattr(self.config, "inject_emotion", False))

    @torch.inference_mode()
    def heard_emotion(self, mel: torch.Tensor, prosody: torch.Tensor | None = None, heard: Any = None
                      ) -> dict[str, float]:
        """The emotion head's probabilities for one clip (mel: (n_mels, frames); prosody: (prosody_dim,);
        ``heard``: the clip's ``hear`` output when the prompt already computed it)."""
        if self.emotion_head is None:
            raise ValueError("this model has no emotion head")
        device = next(self.parameters()).device
        if heard is not None:
            speech, padding = heard
        elif self.emotion_head.reads_frames:
            speech, padding = self.hear(mel)
        else:  # a head on the prosody alone: no encoder pass
            speech, padding = torch.zeros(1, 1, self.config.llm().hidden_size, device=device), None
        logits = self.emotion_head(speech, padding, None if prosody is None else prosody[None].to(device))
        return dict(zip(TAGS, torch.softmax(logits[0].float(), -1).tolist(), strict=True))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                speech_mask: torch.Tensor | None = None, mel: torch.Tensor | None = None,
                mel_frames: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                frames: torch.Tensor | None = None, unit_inputs: torch.Tensor | None = None,
                unit_targets: torch.Tensor | None = None, unit_positions: torch.Tensor | None = None,
                unit_mask: torch.Tensor | None = None, emotion_labels: torch.Tensor | None = None,
                unit_states: torch.Tensor | None = None, prosody: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """The LLM's output; with ``unit_inputs`` (stage 2) a ``SpeakOutput`` with the text and unit losses.

        ``unit_positions`` (batch, steps) are the token positions whose layer-n hidden state feeds each
        speech step (the newest text token at that step), ``unit_inputs`` / ``unit_targets``
        (batch, steps, group) the previous and the next group of units, ``unit_mask`` the real steps.
        ``emotion_labels`` (batch,) are tag indices (``emoslm.emotions.TAGS``; -100 none): with an emotion head,
        loss = text loss + ``emotion_weight`` × the head's cross-entropy, and ``emotion_loss`` is returned too;
        ``prosody`` (batch, prosody_dim): the clips' prosodic functionals, for a head that reads them.
        ``unit_states`` (batch, steps, hidden): the layer-n states at ``unit_positions``, computed before (a
        frozen text path gives the same states every epoch) — then only the branch runs, and only its loss counts."""
        if unit_states is not None:
            return self._speak(unit_states, unit_inputs, unit_targets, unit_mask)
        embeds, heard = self._embed(input_ids, speech_mask, mel, mel_frames, frames)
        emotion = self.emotion_loss(heard, emotion_labels, prosody)
        if unit_inputs is None:
            out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)
            if emotion is not None:
                out["emotion_loss"] = emotion
                out["loss"] = emotion * self.config.emotion_weight + (out.loss if out.loss is not None else 0.0)
            return out
        if self.speech_branch is None:
            raise ValueError("unit targets given but the model has no speech branch (add_speech_branch)")
        out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels,
                       output_hidden_states=True, **kwargs)
        spoken = self._speak(self.states_at(out.hidden_states, unit_positions), unit_inputs, unit_targets, unit_mask)
        loss = spoken.loss + (out.loss if out.loss is not None else 0.0) if spoken.loss is not None else None
        return SpeakOutput(loss=loss, text_loss=out.loss, unit_loss=spoken.unit_loss, logits=out.logits,
                           unit_logits=spoken.unit_logits, hidden_states=out.hidden_states)

    def states_at(self, hidden_states: tuple[torch.Tensor, ...], positions: torch.Tensor) -> torch.Tensor:
        """(batch, steps, hidden): the layer-n states (the branch's input) at ``positions`` (batch, steps)."""
        hidden = hidden_states[self.speech_layer]
        return torch.gather(hidden, 1, positions[..., None].expand(-1, -1, hidden.shape[-1]))

    @torch.inference_mode()
    def unit_text_states(self, input_ids: torch.Tensor, unit_positions: torch.Tensor,
                         attention_mask: torch.Tensor | None = None, speech_mask: torch.Tensor | None = None,
                         frames: torch.Tensor | None = None, mel_frames: torch.Tensor | None = None,
                         mel: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        """What stage 2 feeds the branch, for a batch (no gradient): computed once when the text path is frozen.
        The LLM runs only up to layer n: a hook on the last shared layer stops the forward there."""
        from emoslm.slm.speak import _base_model

        embeds, _ = self._embed(input_ids, speech_mask, mel, mel_frames, frames)
        kept: dict[str, torch.Tensor] = {}

        def stop(module: nn.Module, args: Any, output: Any) -> None:
            kept["hidden"] = output[0] if isinstance(output, tuple) else output
            raise _Enough

        handle = _base_model(self.llm).layers[self.speech_layer - 1].register_forward_hook(stop)
        try:
            self.llm(inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=1)
        except _Enough:
            pass
        finally:
            handle.remove()
        return self.states_at((kept["hidden"],) * (self.speech_layer + 1), unit_positions)

    def _speak(self, text_hidden: torch.Tensor, unit_inputs: torch.Tensor, unit_targets: torch.Tensor | None,
               unit_mask: torch.Tensor | None) -> SpeakOutput:
        unit_logits, _ = self.speech_branch(self.speech_branch.inputs(text_hidden, unit_inputs), unit_mask)
        units = unit_loss(unit_logits, unit_targets) if unit_targets is not None else None
        return SpeakOutput(loss=units * self.unit_weight if units is not None else None, unit_loss=units,
                           unit_logits=unit_logits)
