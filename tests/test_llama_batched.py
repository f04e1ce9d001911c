"""One llama.cpp context answering several generations at once (a sequence each), and the server's turn queue."""

import threading

import numpy as np
import pytest

from emoslm.llm.base import Sampling

PROMPTS = ["I lost my job today and I feel terrible.", "My sister is getting married next week!",
           "Why is the sky blue?"]
GREEDY = Sampling(max_tokens=24, temperature=0.0, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def batched():
    from emoslm.llm import load_llm

    llm = load_llm("llama-cpp:smollm2-135m-instruct?slots=3&lora=none")
    yield llm
    llm.close()


def _prompt(llm, text: str) -> str:
    return llm.render([{"role": "user", "content": text}])


def test_generations_decoded_together_write_what_each_writes_alone(batched):
    alone = [batched.complete(_prompt(batched, p), GREEDY).text for p in PROMPTS]
    together: list[str | None] = [None] * len(PROMPTS)

    def run(i: int) -> None:
        together[i] = batched.complete(_prompt(batched, PROMPTS[i]), GREEDY).text

    workers = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert together == alone and len(set(alone)) == len(alone) and all(alone)


def test_a_sequence_sees_the_logits_of_a_context_of_its_own(batched, monkeypatch):
    """The batched context's first logits for a prompt equal llama.cpp's with one sequence (``LlamaText``)."""
    import emoslm.llm.llama_batched as module
    from emoslm.llm.llama_loop import LlamaText
    from emoslm.store import resolve

    seen = []

    class Spy(module.Sampler):
        def __call__(self, logits, history):
            seen.append(logits[0].numpy().copy())
            return super().__call__(logits, history)

    monkeypatch.setattr(module, "Sampler", Spy)
    prompt = _prompt(batched, PROMPTS[2])
    batched.complete(prompt, Sampling(max_tokens=1, temperature=0.0, repeat_penalty=1.0))
    single = LlamaText(resolve("smollm2-135m-instruct").require_path(), n_ctx=4096)
    try:
        single.decode_tokens(batched.tokenize(prompt))
        assert np.allclose(single.last_logits(), seen[0], atol=1e-3)
    finally:
        single.close()


def test_a_stream_closed_early_frees_its_slot_and_stop_strings_end_a_generation(batched):
    for _ in range(4):  # more early closes than slots: each one must give its slot back
        stream = batched.stream(_prompt(batched, PROMPTS[0]), Sampling(max_tokens=200, temperature=0.0))
        assert next(iter(stream))
        stream.close()
    done = batched.complete(_prompt(batched, PROMPTS[2]), Sampling(max_tokens=60, temperature=0.0, stop=["."]))
    assert done.text and "." not in done.text and done.finish_reason == "stop"


def test_the_turn_queue_tells_each_waiting_turn_its_place():
    from types import SimpleNamespace

    from emoslm.serve.runtime import Runtime

    runtime = Runtime(SimpleNamespace(parallel=1))
    release = [threading.Event() for _ in range(3)]
    told: dict[int, list[int]] = {0: [], 1: [], 2: []}
    futures = [runtime.submit_turn(release[i].wait, lambda n, i=i: told[i].append(n)) for i in range(3)]
    for event in release:
        event.set()
    for f in futures:
        f.result(timeout=10)
    assert told == {0: [], 1: [1], 2: [2, 1]}  # the first ran at once; the others heard the queue move
    runtime.turns.shutdown()
    assert Runtime(SimpleNamespace(parallel=3)).turns.threads == 3  # a batched agent: turns at once
