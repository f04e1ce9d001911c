"""A fine-tuned LLM's weights as a GGUF file, so that llama.cpp runs what training changed.

The unified model's LLM is a transformers causal LM (stage 1-2 merges its LoRA into it). llama.cpp
decodes the same model several times faster on a CPU than PyTorch does, but it reads GGUF. Rather than
re-deriving the tokenizer, the chat template and the hyper-parameters, the export starts from a
*template*: the GGUF of the same base LLM (the packaged file the model was built from). Every metadata
key is copied and every tensor is replaced by the fine-tuned one under the template's name, with the
template's shape (checked), so llama.cpp reads the result exactly as it reads the base model.

Llama-family checkpoints store q/k projections with their rotary halves interleaved differently from
llama.cpp's "llama" architecture, which is why those two are permuted on the way out (transformers undoes
the same permutation when it loads a llama GGUF); Qwen2-style architectures are not permuted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from emoslm.atomic import atomic_file
from emoslm.errors import EmoslmError

QTYPES = ("f32", "f16", "q8_0")
LAYER_TENSORS = {  # transformers name inside ``model.layers.N.`` → GGUF name inside ``blk.N.``
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}
_FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7}  # llama.cpp's LLAMA_FTYPE_* (shown by tools, not used to load)


def gguf_names(state: dict[str, Any]) -> dict[str, str]:
    """GGUF tensor name → transformers state-dict name, for every tensor the mapping knows."""
    names = {TOP_TENSORS[k]: k for k in state if k in TOP_TENSORS}
    for key in state:
        parts = key.split(".")
        if key.startswith("model.layers.") and len(parts) > 3:
            inner = ".".join(parts[3:])
            if inner in LAYER_TENSORS:
                names[f"blk.{parts[2]}.{LAYER_TENSORS[inner]}"] = key
    return names


def rotary_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """transformers' q/k row order → llama.cpp's: within each head, the two rotary halves are interleaved."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def export_gguf(llm: Any, template: str | Path, out: str | Path, qtype: str = "q8_0") -> Path:
    """Write ``llm`` (a transformers causal LM) as a GGUF at ``out`` with ``template``'s metadata and names.

    ``qtype``: f32 (exact), f16, or q8_0 (matrices; norms and biases stay f32). Raises EmoslmError when the
    template and the model do not match (another architecture, tensor or shape)."""
    import gguf

    if qtype not in QTYPES:
        raise EmoslmError(f"unknown GGUF type {qtype!r}; choose from {', '.join(QTYPES)}")
    reader = gguf.GGUFReader(str(template))
    arch = str(reader.fields["general.architecture"].contents())
    state = {k: v.detach().float().cpu().numpy() for k, v in llm.state_dict().items()}
    names = gguf_names(state)
    if "output.weight" not in names and "lm_head.weight" in state and not np.array_equal(
            state["lm_head.weight"], state.get("model.embed_tokens.weight")):
        raise EmoslmError("the model's output layer is not tied to its embeddings, but the template's is")
    config = llm.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    with atomic_file(out, suffix=".gguf") as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        for field in reader.fields.values():
            if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
                continue
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), field.types[0], sub)
        writer.add_file_type(_FILE_TYPE[qtype])
        for tensor in reader.tensors:
            if tensor.name == "output.weight" and "output.weight" not in names:
                names["output.weight"] = "model.embed_tokens.weight"  # the template unties what the model ties
            source = names.get(tensor.name)
            if source is None:
                raise EmoslmError(f"{template}: tensor {tensor.name} has no counterpart in the model")
            data = state[source]
            if arch == "llama" and tensor.name.endswith(("attn_q.weight", "attn_k.weight")):
                data = rotary_permute(data, heads if tensor.name.endswith("attn_q.weight") else kv_heads)
            if tuple(int(n) for n in reversed(tensor.shape)) != data.shape:
                raise EmoslmError(f"{tensor.name}: the template has shape {tuple(reversed(tensor.shape))}, "
                                  f"the model {data.shape}")
            _add(writer, tensor.name, data, qtype)
        unused = sorted(set(names) - {t.name for t in reader.tensors} - {"output.weight"})  # tied: checked above
        if unused:
            raise EmoslmError(f"{template}: has no tensor {unused[0]}, which the model has")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out)


def _add(writer: Any, name: str, data: np.ndarray, qtype: str) -> None:
    import gguf

    if data.ndim == 1 or qtype == "f32":
        writer.add_tensor(name, np.ascontiguousarray(data, np.float32))
    elif qtype == "f16":
        writer.add_tensor(name, np.ascontiguousarray(data, np.float16))
    else:
        kind = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(data, np.float32), kind), raw_dtype=kind)


def llama_sizes(config: Any) -> dict[str, int]:
    """A transformers config's hyper-parameters under their GGUF keys (without the ``llama.`` prefix)."""
    heads = config.num_attention_heads
    return {"block_count": config.num_hidden_layers, "embedding_length": config.hidden_size,
            "feed_forward_length": config.intermediate_size, "attention.head_count": heads,
            "attention.head_count_kv": getattr(config, "num_key_value_heads", None) or heads,
            "vocab_size": config.vocab_size,
            "rope.dimension_count": getattr(config, "head_dim", None) or config.hidden_size // heads}


def resized_template(template: str | Path, llm: Any, out: str | Path) -> Path:
    """A GGUF template with ``template``'s tokenizer and chat template but ``llm``'s sizes (zero tensors).

    ``export_gguf`` needs a template whose tensors have the model's shapes; for a model of another size than
    any packaged file (a tiny random model in the tests, a pruned or grown one) this writes one: the
    tokenizer, chat template and rope settings are the template's, the hyper-parameters are the model's.
    Llama-architecture templates only (the packaged SmolLM2)."""
    import gguf

    reader = gguf.GGUFReader(str(template))
    arch = str(reader.fields["general.architecture"].contents())
    if arch != "llama":
        raise EmoslmError(f"{template}: resizing a {arch} template is not supported (llama only)")
    config = llm.config
    sizes = llama_sizes(config)
    names = gguf_names({k: None for k in llm.state_dict()})
    state = dict(llm.state_dict())
    with atomic_file(out, suffix=".gguf") as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        for field in reader.fields.values():
            if field.name.startswith("GGUF.") or field.name == "general.architecture":
                continue
            key = field.name.removeprefix(f"{arch}.")
            if key in sizes:
                writer.add_key_value(field.name, sizes[key], field.types[0])
                continue
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), field.types[0], sub)
        for name, source in sorted(names.items()):
            if name == "output.weight" and getattr(config, "tie_word_embeddings", False):
                continue
            writer.add_tensor(name, np.zeros(tuple(state[source].shape), np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out)


def fitting_template(template: str | Path, llm: Any, cache: Path) -> Path:
    """``template`` when its sizes are ``llm``'s, else a resized copy in ``cache`` (made once per size)."""
    import gguf

    reader = gguf.GGUFReader(str(template))
    arch = str(reader.fields["general.architecture"].contents())
    wanted = llama_sizes(llm.config)
    have = {k: int(reader.fields[f"{arch}.{k}"].contents()) for k in wanted if f"{arch}.{k}" in reader.fields}
    if all(have.get(k, v) == v for k, v in wanted.items()):  # a size the template does not state is not checked
        return Path(template)
    out = cache / f"{Path(template).stem}-resized-{'-'.join(str(v) for v in wanted.values())}.gguf"
    return out if out.exists() else resized_template(template, llm, out)
