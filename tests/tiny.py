"""Tiny random models for the equivalence tests of the fast tier: the same code paths as SmolLM2, in seconds.

Each builder is seeded and uses SmolLM2's real tokenizer and chat template (read from the packaged GGUF), so
the prompt layout, think bridge and end tokens are the real ones; only the layers are small and random.
Weights are drawn wider than transformers' default (``initializer_range`` 0.3) so that greedy choices are
decided by clear margins and the committed golden outputs hold across CPUs that sum in other orders.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch

GOLDEN = Path(__file__).parent / "fixtures" / "golden"


@cache
def smollm_tokenizer():
    from transformers import AutoTokenizer

    from emoslm.llm.hf import hf_checkpoint

    return AutoTokenizer.from_pretrained(hf_checkpoint("smollm2-135m-instruct"))


def tiny_llama_config(layers: int = 4):
    from transformers import LlamaConfig

    tokenizer = smollm_tokenizer()
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                       max_position_embeddings=2048, rope_theta=100000.0, rms_norm_eps=1e-5, initializer_range=0.3,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def tiny_llm(seed: int = 0, layers: int = 4):
    """A random 4-layer, 64-wide Llama with SmolLM2's vocabulary."""
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(layers)  # first: in an empty home the tokenizer's conversion draws random numbers
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tiny_gguf(llm, folder: Path) -> Path:
    """``llm`` as an f32 GGUF that llama.cpp runs exactly as PyTorch does (template resized from SmolLM2's)."""
    from emoslm.llm.gguf_export import export_gguf, resized_template
    from emoslm.store import resolve

    template = resized_template(resolve("smollm2-135m-instruct").require_path(), llm, folder / "template.gguf")
    return export_gguf(llm, template, folder / "tiny-f32.gguf", "f32")


def tiny_slm(seed: int = 0, **options: object):
    """A UnifiedSLM of the tiny Llama and a 1-layer, 80-mel Whisper encoder, with SmolLM2's tokenizer (``options``:
    more ``UnifiedSLMConfig`` fields, e.g. an emotion head)."""
    from transformers import WhisperConfig

    from emoslm.slm.model import UnifiedSLM, UnifiedSLMConfig

    encoder = WhisperConfig(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                            num_mel_bins=80, max_source_positions=1500, decoder_layers=1,
                            decoder_attention_heads=2, decoder_ffn_dim=32)
    config = UnifiedSLMConfig(llm_config=tiny_llama_config().to_dict(), encoder_config=encoder.to_dict(),
                              adapter_dim=32, adapter_layers=1, adapter_heads=2,
                              llm_source="smollm2-135m-instruct", **options)  # its tokenizer and GGUF template
    torch.manual_seed(seed)  # after the tokenizer is in place (see tiny_llm)
    model = UnifiedSLM(config).eval()
    return model, smollm_tokenizer()


def golden(name: str, value: object | None = None) -> object:
    """The committed golden output ``name``; with ``EMOSLM_WRITE_GOLDEN=1`` the value given is written instead."""
    import os

    path = GOLDEN / f"{name}.json"
    if os.environ.get("EMOSLM_WRITE_GOLDEN") == "1" and value is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n")
    return json.loads(path.read_text())


def fake_s3_tokenizer(folder: Path) -> Path:
    """A CosyVoice-shaped tokenizer ONNX (``speech_tokenizer_v1.onnx``: its input names and shapes; the real
    one cannot be installed here): one token per two mel frames, the index of the loudest of the first 16 bins."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MaxPool", ["feats"], ["pooled"], kernel_shape=[2], strides=[2]),
         helper.make_node("Slice", ["pooled", "starts", "ends", "axes"], ["low"]),
         helper.make_node("ArgMax", ["low"], ["tokens"], axis=1, keepdims=0),
         helper.make_node("Identity", ["feats_length"], ["length_out"])],
        "fake_s3_tokenizer",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, 128, None]),
         helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1])],
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, None]),
         helper.make_tensor_value_info("length_out", TensorProto.INT32, [1])],
        [helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
         helper.make_tensor("ends", TensorProto.INT64, [1], [16]),
         helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "speech_tokenizer_v1.onnx"))
    return folder / "speech_tokenizer_v1.onnx"
