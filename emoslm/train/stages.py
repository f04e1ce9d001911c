"""What each training stage may change (the paper's progressive plan).

- stage 1-1 (speech–text alignment by self-distillation): Whisper encoder and LLM frozen; only the
  subsampler and adapter learn to make speech embeddings the LLM reads like the words;
- stage 1-2 (emotional attribute modelling): the adapter keeps learning and LoRA on the LLM's attention
  lets it write the think (emotion and cause) from the audio alone; the encoder stays frozen.
"""

from __future__ import annotations

from typing import Any

from emoslm.errors import EmoslmError, MissingPackageError
from emoslm.slm.model import UnifiedSLM

STAGES = ("1-1", "1-2")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def apply_stage(model: UnifiedSLM, stage: str, lora_r: int = 16, lora_alpha: int = 32) -> list[Any]:
    """Freeze what the stage keeps fixed (and add LoRA for 1-2); returns the trainable parameters."""
    if stage not in STAGES:
        raise EmoslmError(f"unknown stage '{stage}'; use 1-1 or 1-2")
    for parameter in model.parameters():
        parameter.requires_grad = False
    for module in (model.subsampler, model.adapter):
        for parameter in module.parameters():
            parameter.requires_grad = True
    if stage == "1-2":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise MissingPackageError("peft", "LoRA for stage 1-2", "emoslm[torch]") from None
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS)
        model.llm = get_peft_model(model.llm, config)
    return [p for p in model.parameters() if p.requires_grad]


def merge_lora(model: UnifiedSLM) -> UnifiedSLM:
    """Fold LoRA into the LLM's weights, so the checkpoint is a plain UnifiedSLM."""
    if hasattr(model.llm, "merge_and_unload"):
        model.llm = model.llm.merge_and_unload()
    return model
