"""What each training stage may change (the paper's progressive plan).

- stage 1-1 (speech–text alignment by self-distillation): Whisper encoder and LLM frozen; only the
  listening path learns (layer mix, subsampler, adapter, emotion head where the model has them) to make
  speech embeddings the LLM reads like the words and that keep the emotion;
- stage 1-2 (emotional attribute modelling): the adapter keeps learning and LoRA on the LLM's attention
  lets it write the think (emotion and cause) from the audio alone; the encoder stays frozen;
- stage 2 (speech generation): the model gets its speech branch (a copy of the LLM's top k layers, see
  ``emoslm.slm.speak``) and learns the reply's units from the text model's layer-n states with a joint
  text + unit loss; the bottom n layers stay frozen, so the text the model writes does not move; LoRA on
  the top k text layers only where the recipe asks (``lora: true``).
"""

from __future__ import annotations

from typing import Any

from emoslm.errors import EmoslmError, MissingPackageError
from emoslm.slm.model import UnifiedSLM

STAGES = ("1-1", "1-2", "2")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def apply_stage(model: UnifiedSLM, stage: str, lora_r: int = 16, lora_alpha: int = 32, lora: bool = True
                ) -> list[Any]:
    """Freeze what the stage keeps fixed (and add LoRA for 1-2, and for 2 when ``lora``); returns the trainable
    parameters."""
    if stage not in STAGES:
        raise EmoslmError(f"unknown stage '{stage}'; use one of {', '.join(STAGES)}")
    for parameter in model.parameters():
        parameter.requires_grad = False
    listening = [m for m in (model.layer_mix, model.subsampler, model.adapter, model.emotion_head) if m is not None]
    trained = listening if stage != "2" else [model.speech_branch]
    if any(module is None for module in trained):
        raise EmoslmError("stage 2 needs a model with a speech branch (the trainer adds it from unit_decoder)")
    for module in trained:
        for parameter in module.parameters():
            parameter.requires_grad = True
    if stage == "1-2" or (stage == "2" and lora):
        layers = None if stage == "1-2" else list(range(model.speech_layer, model.config.llm().num_hidden_layers))
        model.llm = _with_lora(model.llm, lora_r, lora_alpha, layers)
    return [p for p in model.parameters() if p.requires_grad]


def _with_lora(llm: Any, r: int, alpha: int, layers: list[int] | None) -> Any:
    """LoRA on the attention projections (of ``layers`` only, when given: stage 2 leaves the bottom n alone)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise MissingPackageError("peft", "LoRA", "emoslm[torch]") from None
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS,
                        layers_to_transform=layers)
    return get_peft_model(llm, config)


def merge_lora(model: UnifiedSLM) -> UnifiedSLM:
    """Fold LoRA into the LLM's weights, so the checkpoint is a plain UnifiedSLM."""
    if hasattr(model.llm, "merge_and_unload"):
        model.llm = model.llm.merge_and_unload()
    return model
