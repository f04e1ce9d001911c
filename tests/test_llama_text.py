"""The unified model's text stream in llama.cpp, on the real packaged SmolLM2: the GGUF export reproduces
the packaged file's tensors exactly, and the llama.cpp token loop (speech embeddings in, a layer's hidden
state out through ``cb_eval``) writes what the PyTorch loop writes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from emoslm.errors import BackendError, EmoslmError  # noqa: E402
from emoslm.llm.base import Sampling  # noqa: E402

GREEDY = Sampling(temperature=0.0, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def smollm():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emoslm.llm.hf import hf_checkpoint
    from emoslm.store import resolve

    folder = hf_checkpoint("smollm2-135m-instruct")  # itself read from the packaged GGUF
    llm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return llm, AutoTokenizer.from_pretrained(folder), resolve("smollm2-135m-instruct").require_path()


@pytest.fixture(scope="module")
def exact(smollm, tmp_path_factory):
    from emoslm.llm.gguf_export import export_gguf

    llm, _, template = smollm
    return export_gguf(llm, template, tmp_path_factory.mktemp("gguf") / "smollm-f32.gguf", "f32")


@pytest.mark.slow
def test_the_export_gives_back_the_packaged_tensors_under_their_names(smollm, exact):
    _, _, template = smollm
    packaged, exported = gguf.GGUFReader(str(template)), gguf.GGUFReader(str(exact))
    mine = {t.name: t for t in exported.tensors}
    assert [t.name for t in packaged.tensors] == list(mine)
    for t in packaged.tensors:  # q/k permuted back to llama.cpp's order: equal to the last bit
        ours = mine[t.name]
        assert np.array_equal(gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1),
                              gguf.quants.dequantize(ours.data, ours.tensor_type).reshape(-1)), t.name
    tokens = "tokenizer.ggml.tokens"
    assert exported.fields[tokens].contents() == packaged.fields[tokens].contents()


def test_the_export_refuses_a_model_that_does_not_fit_the_template(tiny_text, tmp_path):
    """On the tiny model's resized template (4 layers): fewer or more layers than the template is refused."""
    from transformers import AutoModelForCausalLM

    from emoslm.llm.gguf_export import export_gguf

    llm, exported = tiny_text
    template = exported.parent / "template.gguf"
    small = AutoModelForCausalLM.from_config(llm.config.__class__(**{**llm.config.to_dict(), "num_hidden_layers": 2}))
    with pytest.raises(EmoslmError, match="no counterpart in the model"):
        export_gguf(small, template, tmp_path / "bad.gguf", "f32")
    large = AutoModelForCausalLM.from_config(llm.config.__class__(**{**llm.config.to_dict(), "num_hidden_layers": 5}))
    with pytest.raises(EmoslmError, match="has no tensor blk.4"):
        export_gguf(large, template, tmp_path / "bad.gguf", "f32")
    assert not (tmp_path / "bad.gguf").exists()
    with pytest.raises(EmoslmError, match="q4"):
        export_gguf(llm, template, tmp_path / "bad.gguf", "q4")


def _greedy(loop, llm, ids, n=24):
    loop.feed(embeds=llm.get_input_embeddings()(torch.tensor([ids])))  # as the unified model's prompt goes in
    tokens, states = [], []
    for _ in range(n):
        tokens.append(loop.sample())
        loop.feed([tokens[-1]])
        states.append(loop.hidden[0].clone())
    return tokens, torch.stack(states)


@pytest.fixture(params=["tiny", pytest.param("smollm2", marks=pytest.mark.slow)])
def loop_case(request, tiny_text):
    """(torch LLM, tokenizer, exact GGUF, layer): the tiny random Llama (fast tier) or SmolLM2 (slow tier)."""
    if request.param == "tiny":
        from tests.tiny import smollm_tokenizer

        llm, path = tiny_text
        return llm, smollm_tokenizer(), path, 2, "tiny-llama-loop"
    llm, tokenizer, _ = request.getfixturevalue("smollm")
    return llm, tokenizer, request.getfixturevalue("exact"), 26, None  # 26: where a 4-layer branch reads


def test_the_llama_cpp_loop_writes_what_the_torch_loop_writes_and_shows_the_same_layer(loop_case):
    from emoslm.llm.decoding import TokenLoop
    from emoslm.llm.llama_loop import LlamaText

    llm, tokenizer, exact, layer, golden_name = loop_case
    ids = tokenizer("<|im_start|>user\nMy cat is sick and I feel terrible.<|im_end|>\n<|im_start|>assistant\n")[
        "input_ids"]
    torch_tokens, torch_states = _greedy(TokenLoop(llm, GREEDY, hidden_layer=layer), llm, ids)
    text = LlamaText(exact, hidden_layer=layer)
    try:
        tokens, states = _greedy(text.loop(GREEDY), llm, ids)
        stale = text.loop(GREEDY)
        again, _ = _greedy(text.loop(GREEDY), llm, ids)  # a new loop starts from an empty context
        with pytest.raises(BackendError, match="one at a time"):  # the older loop's tokens are gone
            stale.feed(ids[:3])
    finally:
        text.close()
    assert tokens == torch_tokens == again
    cosine = torch.nn.functional.cosine_similarity(states, torch_states, dim=-1)
    assert float(cosine.min()) > 0.9999
    # llama.cpp keeps its KV cache in f16: the tiny model's wide random weights amplify that (2.7e-3 measured on
    # an AVX-512 EPYC, so 1e-2 leaves room for other CPUs' sums); the tokens must still agree exactly
    tolerance = 2e-3 if golden_name is None else 1e-2
    worst = float((states - torch_states).abs().max() / torch_states.abs().max())
    assert worst < tolerance, worst
    if golden_name:
        from tests.tiny import golden

        assert tokens == golden(golden_name, tokens)
