import pytest

from emoslm.errors import BackendError, EmoslmError
from emoslm.llm import Sampling, load_llm
from emoslm.serve.llm_server import llama_cpp_server
from tests.conftest import free_port

MESSAGES = [{"role": "system", "content": "You are a kind assistant."},
            {"role": "user", "content": "I had a really rough day at work."}]
GREEDY = Sampling(max_tokens=24, temperature=0.0, seed=0)


def _continues(llm):
    """Every backend must continue an open <think> in the raw rendered prompt, within the budget."""
    prompt = llm.render(MESSAGES) + "<think>\nThe user sounds tired and sad, because"
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("because")
    out = llm.complete(prompt, GREEDY)
    assert out.text.strip() and "<|im_start|>" not in out.text
    assert 0 < out.completion_tokens <= GREEDY.max_tokens
    assert out.finish_reason == "length"
    return out


def test_llama_cpp_chat_and_raw_continuation(llama):
    first = _continues(llama)
    assert llama.complete(llama.render(MESSAGES) + "<think>\nThe user sounds tired and sad, because",
                          GREEDY).text == first.text  # greedy is deterministic
    chat = llama.chat(MESSAGES, Sampling(max_tokens=40, temperature=0.7, seed=1))
    assert len(chat.text.split()) >= 3 and chat.tokens_per_second > 0


def test_llama_cpp_stop_strings_and_budget(llama):
    out = llama.complete("Count: 1, 2, 3, 4,", Sampling(max_tokens=40, temperature=0.0, stop=[" 7"]))
    assert "7" not in out.text and "5" in out.text and out.finish_reason == "stop"
    short = llama.complete("Once upon a time", Sampling(max_tokens=3, temperature=0.0))
    assert short.completion_tokens == 3


def test_llama_cpp_rejects_a_prompt_longer_than_the_context(llama):
    with pytest.raises(BackendError, match="over the context"):
        llama.complete("word " * 3000, GREEDY)


@pytest.mark.slow
def test_transformers_backend_loads_the_same_gguf(llama):
    hf = load_llm("transformers:smollm2-135m-instruct")
    assert hf.render(MESSAGES) == llama.render(MESSAGES)
    out = _continues(hf)
    assert len(out.text.split()) >= 5
    stopped = hf.complete("Count: 1, 2, 3, 4,", Sampling(max_tokens=30, temperature=0.0, stop=[" 7"]))
    assert "5" in stopped.text and "7" not in stopped.text


@pytest.fixture(scope="module")
def llama_server():
    """llama.cpp's own OpenAI-compatible server (llama-cpp-python[server]) in a subprocess."""
    with llama_cpp_server("smollm2-135m-instruct") as base:
        yield base


def test_http_backend_against_llama_cpp_server(llama_server, llama):
    http = load_llm(f"{llama_server}?model=smollm2-135m-instruct&template=smollm2-135m-instruct")
    assert http.render(MESSAGES) == llama.render(MESSAGES)
    out = _continues(http)
    assert out.text == llama.complete(http.render(MESSAGES) + "<think>\nThe user sounds tired and sad, because",
                                      GREEDY).text  # same weights, same greedy path
    chat = http.chat(MESSAGES, Sampling(max_tokens=30, temperature=0.5))
    assert chat.text.strip() and chat.completion_tokens > 0


def test_http_backend_errors():
    dead = load_llm(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(BackendError, match="cannot reach the LLM endpoint"):
        dead.chat(MESSAGES)
    with pytest.raises(BackendError, match="chat template"):
        dead.render(MESSAGES)
    with pytest.raises(EmoslmError, match="unknown LLM spec"):
        load_llm("gpt:foo")
