"""The packaged Whisper weights are CTranslate2 files; the unified model needs a PyTorch encoder it can
back-propagate through (adapter training) and run in the same graph as the LLM. This module reads
CTranslate2's ``model.bin`` (its published binary layout), maps the encoder's variables onto
``transformers``' ``WhisperEncoder`` and loads them, so the same weights serve both runtimes.

``model.bin``: uint32 binary version, the spec name and uint32 revision, uint32 variable count, then per
variable its name, rank (uint8), dims (uint32 each), dtype id (uint8: float32, int8, int16, int32,
float16, bfloat16) and byte count (uint32) followed by the raw data; then aliases. Strings are a
uint16 length (with the trailing NUL) and UTF-8 bytes. int8 weights come with a per-row
``weight_scale`` and are dequantised as ``weight / scale``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from emoslm.errors import EmoslmError, MissingPackageError

DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, "bfloat16")


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<H", f.read(2))
    return f.read(length)[:-1].decode("utf-8")


def _array(raw: bytes, dtype_id: int, shape: tuple[int, ...]) -> np.ndarray:
    if DTYPES[dtype_id] == "bfloat16":  # the upper half of a float32
        as_u32 = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
        return as_u32.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=DTYPES[dtype_id]).reshape(shape)


def read_ct2(model_dir: Path, prefix: str = "") -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model (those starting with ``prefix``), int8 ones dequantised."""
    path = Path(model_dir) / "model.bin"
    if not path.is_file():
        raise EmoslmError(f"{model_dir}: no CTranslate2 model.bin here")
    variables: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        (version,) = struct.unpack("<I", f.read(4))
        if version < 5:
            raise EmoslmError(f"{path}: CTranslate2 binary version {version} is too old to read (need 5+)")
        _string(f)  # spec name
        f.read(4)  # spec revision
        (count,) = struct.unpack("<I", f.read(4))
        for _ in range(count):
            name = _string(f)
            (rank,) = struct.unpack("<B", f.read(1))
            shape = struct.unpack(f"<{rank}I", f.read(4 * rank)) if rank else ()
            dtype_id, nbytes = struct.unpack("<BI", f.read(5))
            if name.startswith(prefix):
                variables[name] = _array(f.read(nbytes), dtype_id, shape)
            else:
                f.seek(nbytes, 1)
    for name in [n for n in variables if n.endswith("/weight_scale")]:
        weight = name[: -len("_scale")]
        scale = variables.pop(name).astype(np.float32)
        rows = scale.reshape(-1, *([1] * (variables[weight].ndim - 1)))
        variables[weight] = variables[weight].astype(np.float32) / rows
    return {n: v.astype(np.float32) for n, v in variables.items()}


def encoder_config(variables: dict[str, np.ndarray]) -> dict[str, int]:
    """The ``WhisperConfig`` fields of the encoder, read off the variables' shapes."""
    layers = 1 + max(int(m.group(1)) for n in variables if (m := re.match(r"encoder/layer_(\d+)/", n)))
    d_model, n_mels, _ = variables["encoder/conv1/weight"].shape
    heads = int(variables["encoder/num_heads"]) if "encoder/num_heads" in variables else max(1, d_model // 64)
    return {"d_model": int(d_model), "num_mel_bins": int(n_mels), "encoder_layers": layers,
            "encoder_attention_heads": heads,
            "encoder_ffn_dim": int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
            "max_source_positions": int(variables["encoder/position_encodings/encodings"].shape[0])}


def encoder_state_dict(variables: dict[str, np.ndarray], layers: int) -> dict[str, Any]:
    """``transformers`` WhisperEncoder parameter names → tensors (the fused QKV split into three)."""
    import torch

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(variables[f"encoder/{name}"]))

    state = {"conv1.weight": t("conv1/weight"), "conv1.bias": t("conv1/bias"), "conv2.weight": t("conv2/weight"),
             "conv2.bias": t("conv2/bias"), "embed_positions.weight": t("position_encodings/encodings"),
             "layer_norm.weight": t("layer_norm/gamma"), "layer_norm.bias": t("layer_norm/beta")}
    for i in range(layers):
        src, dst = f"layer_{i}", f"layers.{i}"
        state.update(_self_attention_and_ffn(t, src, dst))
    return state


def _self_attention_and_ffn(t: Callable[[str], Any], src: str, dst: str) -> dict[str, Any]:
    """One layer's self-attention (fused QKV split; Whisper's key has no bias) and feed-forward, shared by
    the encoder's and the decoder's layers."""
    q, k, v = t(f"{src}/self_attention/linear_0/weight").chunk(3, dim=0)
    qb, _, vb = t(f"{src}/self_attention/linear_0/bias").chunk(3, dim=0)
    return {
        f"{dst}.self_attn.q_proj.weight": q, f"{dst}.self_attn.q_proj.bias": qb,
        f"{dst}.self_attn.k_proj.weight": k,
        f"{dst}.self_attn.v_proj.weight": v, f"{dst}.self_attn.v_proj.bias": vb,
        f"{dst}.self_attn.out_proj.weight": t(f"{src}/self_attention/linear_1/weight"),
        f"{dst}.self_attn.out_proj.bias": t(f"{src}/self_attention/linear_1/bias"),
        f"{dst}.self_attn_layer_norm.weight": t(f"{src}/self_attention/layer_norm/gamma"),
        f"{dst}.self_attn_layer_norm.bias": t(f"{src}/self_attention/layer_norm/beta"),
        f"{dst}.fc1.weight": t(f"{src}/ffn/linear_0/weight"), f"{dst}.fc1.bias": t(f"{src}/ffn/linear_0/bias"),
        f"{dst}.fc2.weight": t(f"{src}/ffn/linear_1/weight"), f"{dst}.fc2.bias": t(f"{src}/ffn/linear_1/bias"),
        f"{dst}.final_layer_norm.weight": t(f"{src}/ffn/layer_norm/gamma"),
        f"{dst}.final_layer_norm.bias": t(f"{src}/ffn/layer_norm/beta"),
    }


def load_whisper_encoder(model: str = "whisper-tiny.en", layers: int = 0) -> Any:
    """A ``transformers`` WhisperEncoder with the weights of a CTranslate2 Whisper (registry name or folder).

    ``layers`` > 0 keeps only the first ``layers`` layers and drops the final LayerNorm (it belongs to the
    last layer): a middle layer's frames, where k-means finds phones (``reports/units-decoder``)."""
    try:
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder
    except ImportError:
        raise MissingPackageError("transformers", "the PyTorch Whisper encoder", "emoslm[torch]") from None
    from emoslm.store import resolve

    variables = read_ct2(resolve(model).require_path(), prefix="encoder/")
    fields = encoder_config(variables)
    config = WhisperConfig(**fields, decoder_layers=1, decoder_attention_heads=fields["encoder_attention_heads"],
                           decoder_ffn_dim=fields["encoder_ffn_dim"])
    encoder = WhisperEncoder(config)
    missing, unexpected = encoder.load_state_dict(encoder_state_dict(variables, fields["encoder_layers"]),
                                                  strict=False)
    if unexpected or any(not m.endswith("k_proj.bias") for m in missing):
        raise EmoslmError(f"{model}: the converted Whisper encoder does not fit (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    if 0 < layers < len(encoder.layers):
        import torch

        encoder.layers, encoder.layer_norm = encoder.layers[:layers], torch.nn.Identity()
    elif layers < 0 or layers > len(encoder.layers):
        raise EmoslmError(f"{model} has {len(encoder.layers)} encoder layers, not {layers}; "
                          f"set the tokenizer's layers to at most {len(encoder.layers)} (0: all)")
    return encoder.eval()


def encode(encoder: Any, mel: Any) -> Any:
    """Encoder frames for a (batch, n_mels, frames) log-mel of any even length up to 30 s.

    ``WhisperEncoder.forward`` insists on the padded 30 s window; running its modules on the clip's own
    length (as CTranslate2 does) costs a fraction for short turns and gives the same frames.
    """
    import torch

    hidden = torch.nn.functional.gelu(encoder.conv1(mel))
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for layer in encoder.layers:
        hidden = layer(hidden, attention_mask=None)
    return encoder.layer_norm(hidden)


def encode_layers(encoder: Any, mel: Any) -> Any:
    """Every layer's frames, (batch, layers + 1, frames, d): the embedded input, each layer's output, the last
    one after the final LayerNorm (so ``[:, -1]`` equals ``encode``) — for readers that weight the layers,
    because emotion and speaker sit in the middle layers of speech encoders more than in the last."""
    import torch

    hidden = torch.nn.functional.gelu(encoder.conv1(mel))
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    states = [hidden]
    for layer in encoder.layers:
        hidden = layer(hidden, attention_mask=None)
        states.append(hidden)
    states[-1] = encoder.layer_norm(hidden)
    return torch.stack(states, dim=1)


def decoder_state_dict(variables: dict[str, np.ndarray], layers: int) -> dict[str, Any]:
    """``transformers`` WhisperDecoder parameter names → tensors (fused QKV and cross-attention KV split)."""
    import torch

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(variables[f"decoder/{name}"]))

    state = {"embed_tokens.weight": t("embeddings/weight"), "embed_positions.weight": t("position_encodings/encodings"),
             "layer_norm.weight": t("layer_norm/gamma"), "layer_norm.bias": t("layer_norm/beta")}
    for i in range(layers):
        src, dst = f"layer_{i}", f"layers.{i}"
        ck, cv = t(f"{src}/attention/linear_1/weight").chunk(2, dim=0)
        _, cvb = t(f"{src}/attention/linear_1/bias").chunk(2, dim=0)
        state.update(_self_attention_and_ffn(t, src, dst))
        state.update({
            f"{dst}.encoder_attn.q_proj.weight": t(f"{src}/attention/linear_0/weight"),
            f"{dst}.encoder_attn.q_proj.bias": t(f"{src}/attention/linear_0/bias"),
            f"{dst}.encoder_attn.k_proj.weight": ck,
            f"{dst}.encoder_attn.v_proj.weight": cv, f"{dst}.encoder_attn.v_proj.bias": cvb,
            f"{dst}.encoder_attn.out_proj.weight": t(f"{src}/attention/linear_2/weight"),
            f"{dst}.encoder_attn.out_proj.bias": t(f"{src}/attention/linear_2/bias"),
            f"{dst}.encoder_attn_layer_norm.weight": t(f"{src}/attention/layer_norm/gamma"),
            f"{dst}.encoder_attn_layer_norm.bias": t(f"{src}/attention/layer_norm/beta"),
        })
    return state


def load_whisper_decoder(model: str = "whisper-base") -> Any:
    """A ``transformers`` WhisperDecoder with a CTranslate2 Whisper's decoder weights (the output projection
    is the token embedding, tied). The speech tokenizer trains through it, frozen, as its text loss."""
    try:
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperDecoder
    except ImportError:
        raise MissingPackageError("transformers", "the PyTorch Whisper decoder", "emoslm[torch]") from None
    from emoslm.store import resolve

    variables = read_ct2(resolve(model).require_path(), prefix="decoder/")
    layers = 1 + max(int(m.group(1)) for n in variables if (m := re.match(r"decoder/layer_(\d+)/", n)))
    vocab, d_model = variables["decoder/embeddings/weight"].shape
    heads = int(variables["decoder/num_heads"]) if variables["decoder/num_heads"].size else max(1, d_model // 64)
    config = WhisperConfig(vocab_size=int(vocab), d_model=int(d_model), decoder_layers=layers,
                           decoder_attention_heads=heads, encoder_attention_heads=heads,
                           decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
                           max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]))
    decoder = WhisperDecoder(config)
    missing, unexpected = decoder.load_state_dict(decoder_state_dict(variables, layers), strict=False)
    if unexpected or any(not m.endswith("k_proj.bias") for m in missing):
        raise EmoslmError(f"{model}: the converted Whisper decoder does not fit (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    return decoder.eval()


def decode_logits(decoder: Any, ids: Any, memory: Any, memory_mask: Any | None = None) -> Any:
    """Next-token logits (batch, tokens, vocab) of a WhisperDecoder reading ``memory`` (batch, frames, d).

    ``WhisperDecoder.forward`` attends to every memory frame (Whisper always sees a padded 30 s window);
    a batch of clips of different lengths needs the padding masked out, so the layers run here with a
    causal self-attention mask and a cross-attention mask built from ``memory_mask`` (1 = real frame).
    """
    import torch

    batch, tokens = ids.shape
    dtype = memory.dtype
    hidden = decoder.embed_tokens(ids) + decoder.embed_positions.weight[:tokens]
    causal = torch.full((tokens, tokens), torch.finfo(dtype).min, dtype=dtype, device=ids.device).triu(1)
    causal = causal[None, None].expand(batch, 1, tokens, tokens)
    cross = None
    if memory_mask is not None:
        cross = torch.zeros(memory_mask.shape, dtype=dtype, device=ids.device)
        cross = cross.masked_fill(~memory_mask.bool(), torch.finfo(dtype).min)[:, None, None, :]
        cross = cross.expand(batch, 1, tokens, memory.shape[1])
    for layer in decoder.layers:
        hidden = layer(hidden, attention_mask=causal, encoder_hidden_states=memory, encoder_attention_mask=cross,
                       use_cache=False)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return decoder.layer_norm(hidden) @ decoder.embed_tokens.weight.T


class WhisperText:
    """Transcript → Whisper decoder input ids and labels (``<|sot|><|lang|><|transcribe|><|notimestamps|>``…)."""

    def __init__(self, model: str) -> None:
        import tokenizers
        from faster_whisper.tokenizer import Tokenizer

        from emoslm.store import resolve

        folder = resolve(model).require_path()  # the store repairs whisper-base's tokenizer.json (a lost merge)
        self.raw = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        with open(folder / "vocabulary.txt", encoding="utf-8") as f:  # multilingual Whisper has 51,865 tokens
            self.multilingual = sum(1 for _ in f) >= 51865
        self._by_lang: dict[str, Any] = {}
        self._make = lambda lang: Tokenizer(self.raw, self.multilingual, "transcribe",
                                            lang if self.multilingual else None)

    def ids(self, text: str, lang: str) -> list[int]:
        if lang not in self._by_lang:
            self._by_lang[lang] = self._make(lang)
        tok = self._by_lang[lang]
        return [*tok.sot_sequence, tok.no_timestamps, *tok.encode(" " + text.strip()), tok.eot]
