"""Write a PEFT LoRA as a GGUF adapter that llama.cpp applies at load time (``Llama(lora_path=...)``).

The layout is llama.cpp's own (its ``convert_lora_to_gguf``): per adapted weight ``W`` (out × in) two
tensors ``<gguf name>.weight.lora_a`` of shape (r, in) and ``.lora_b`` of shape (out, r), stored as PEFT
keeps them, and ``adapter.lora.alpha`` in the metadata; llama.cpp scales the product by alpha / r as PEFT
does. Only the architectures whose projection names are mapped below are written (Qwen2 and Llama; Llama's
q/k rows would need the converter's rotary permutation, so it is refused for q/k).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from emoslm.atomic import atomic_file
from emoslm.errors import EmoslmError

# transformers' module names → llama.cpp's tensor names
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_PEFT_KEY = re.compile(r"layers\.(\d+)\.(self_attn\.\w+|mlp\.\w+)\.lora_([AB])\.weight$")


def lora_tensors(state: dict[str, Any]) -> dict[str, np.ndarray]:
    """PEFT's adapter state dict (``get_peft_model_state_dict``) → GGUF tensor name → float32 array."""
    out = {}
    for key, value in state.items():
        match = _PEFT_KEY.search(key)
        if not match:
            raise EmoslmError(f"LoRA tensor '{key}' has no GGUF name; adapt only {', '.join(GGUF_NAMES)}")
        layer, module, part = match.groups()
        if module not in GGUF_NAMES:
            raise EmoslmError(f"LoRA on '{module}' cannot be written for llama.cpp; adapt only {', '.join(GGUF_NAMES)}")
        name = f"blk.{layer}.{GGUF_NAMES[module]}.weight.lora_{part.lower()}"
        out[name] = value.detach().float().cpu().numpy()
    return out


def write_gguf_lora(state: dict[str, Any], alpha: float, architecture: str, out: Path,
                    name: str = "emoslm reply adapter") -> Path:
    """Write the adapter in F16 (rank 8 on every projection of half of Qwen2.5-1.5B's layers: ~9 MB)."""
    import gguf

    if architecture not in ("qwen2", "llama"):
        raise EmoslmError(f"GGUF LoRA export knows qwen2 and llama, not '{architecture}'")
    tensors = lora_tensors(state)
    if architecture == "llama" and any(".attn_q." in n or ".attn_k." in n for n in tensors):
        raise EmoslmError("a Llama LoRA on q/k needs the rotary permutation; adapt v/o/MLP only")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        writer.add_name(name)
        for tensor_name in sorted(tensors):
            writer.add_tensor(tensor_name, np.ascontiguousarray(tensors[tensor_name], np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out
