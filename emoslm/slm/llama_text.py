"""The unified model's LLM in llama.cpp: exported to GGUF once per checkpoint, cached, loaded with the
speech branch's layer captured (``emoslm.llm.llama_loop``).

The export needs the GGUF of the LLM the model was built from (``llm_source``, the packaged file for the
embedded default) as its template for the tokenizer and hyper-parameters. Q8_0 is the default: on 2 AVX2
cores SmolLM2-135M decodes ~83 tokens/s with the layer captured (torch fp32: ~16), and its greedy text
follows fp32's closely but not always token for token; ``f32`` is exact (~41 tokens/s).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from emoslm.config import settings
from emoslm.errors import EmoslmError
from emoslm.llm.gguf_export import QTYPES, export_gguf, fitting_template

TEXT_ENGINES = ("auto", "torch", "llama-cpp")


def gguf_template(model: Any) -> Path | None:
    """The base LLM's GGUF file, when the model was built from one (else None)."""
    from emoslm.store import resolve

    try:
        path = resolve(model.config.llm_source).path
    except EmoslmError:
        return None
    return path if path is not None and path.suffix == ".gguf" and path.exists() else None


def llama_text(model: Any, qtype: str = "q8_0", speak: bool = True) -> Any:
    """A ``LlamaText`` of the model's LLM (exported into ``$EMOSLM_HOME/cache/slm-gguf`` on first use, under a
    digest of its weights, so a retrained model is exported again and an unchanged one is not)."""
    from emoslm.llm.llama_loop import LlamaText

    if qtype not in QTYPES:
        raise EmoslmError(f"gguf={qtype}: choose from {', '.join(QTYPES)}")
    template = gguf_template(model)
    if template is None:
        raise EmoslmError(f"text=llama-cpp needs the GGUF of the model's base LLM ({model.config.llm_source}); "
                          "use text=torch")
    template = fitting_template(template, model.llm, settings().cache_dir / "slm-gguf")  # a smaller model: resized
    out = settings().cache_dir / "slm-gguf" / f"{weights_digest(model.llm, template)}-{qtype}.gguf"
    if not out.exists():
        export_gguf(model.llm, template, out, qtype)
    layer = model.speech_layer if speak and model.speech_branch is not None else None
    return LlamaText(out, hidden_layer=layer)


def weights_digest(llm: Any, template: Path) -> str:
    """A digest of the LLM's weights and the template's name (~0.5 s for 135M parameters)."""
    digest = hashlib.blake2b(str(template.name).encode(), digest_size=8)
    for name, tensor in sorted(llm.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
