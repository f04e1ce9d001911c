"""Shared fixtures: the real small models, loaded once per test session."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from emoslm.serve.llm_server import free_port  # noqa: F401  (re-exported for tests)

# CI sets EMOSLM_NO_SKIP=1: a test that would skip (a missing package, no chromium) fails instead, so a broken
# set-up cannot pass CI by running fewer tests. A skip that states a real condition (funasr present) still skips.
NO_SKIP = os.environ.get("EMOSLM_NO_SKIP") == "1"
ALLOWED_SKIPS = ("funasr is installed here",)


def _forbid_skip(report) -> None:  # noqa: ANN001 - a pytest report
    if NO_SKIP and report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not any(allowed in reason for allowed in ALLOWED_SKIPS):
            report.outcome = "failed"
            report.longrepr = f"skipped where EMOSLM_NO_SKIP=1 forbids it: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ANN001, ARG001
    outcome = yield
    _forbid_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):  # noqa: ANN001, ARG001
    outcome = yield
    _forbid_skip(outcome.get_result())


SENTENCE = "I have had a really hard day at work, and I feel completely exhausted."


@pytest.fixture(scope="session")
def piper():
    from emoslm.speech.tts import PiperTTS

    return PiperTTS()


@pytest.fixture(scope="session")
def asr_en():
    from emoslm.perception.asr import FasterWhisperASR

    return FasterWhisperASR("whisper-tiny.en")


@pytest.fixture(scope="session")
def asr_base():
    from emoslm.perception.asr import FasterWhisperASR

    return FasterWhisperASR("whisper-base")


@pytest.fixture(scope="session")
def llama():
    from emoslm.llm.llama_cpp import LlamaCppLLM

    model = LlamaCppLLM("smollm2-135m-instruct", n_ctx=2048)
    yield model
    model.close()


@pytest.fixture(scope="session")
def spoken_sentence(piper) -> np.ndarray:
    """The test sentence spoken by Piper, at 16 kHz."""
    return piper.synthesize(SENTENCE).at()


def tone(seconds: float = 1.0, freq: float = 220.0, sr: int = 16_000, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


SMALL_VOICES = ("piper-joe", "espeak-en-us-m1", "espeak-en-us-f2", "espeak-en-us-f3", "espeak-cmn-m1",
                "espeak-cmn-f3")


@pytest.fixture(scope="session")
def small_recogniser(tmp_path_factory):
    """A recogniser trained on six voices in a private EMOSLM_HOME: (home, config, meta)."""
    from emoslm.perception.training import TrainConfig, train
    from emoslm.progress import silent

    home = tmp_path_factory.mktemp("emoslm-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOSLM_HOME", str(home))
        config = TrainConfig(renditions=1, voices=SMALL_VOICES)
        meta = train(config, silent)
    return home, config, meta


@pytest.fixture(scope="session")
def recogniser_home(tmp_path_factory, request):
    """A private EMOSLM_HOME holding the shipped recogniser (copied: no training), as a first run gets it.

    Where this scikit-learn cannot load the shipped copy, the six-voice ``small_recogniser``'s home stands in
    (trained: slower, same interface), so the tests still run."""
    from emoslm.perception import shipped
    from emoslm.perception.recognizer import recogniser_dir

    home = tmp_path_factory.mktemp("emoslm-home-shipped")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOSLM_HOME", str(home))
        if shipped.install(recogniser_dir()):
            return home
    return request.getfixturevalue("small_recogniser")[0]


@pytest.fixture(scope="session")
def slm_checkpoint(tmp_path_factory):
    """An untrained UnifiedSLM (packaged SmolLM2 + Whisper tiny.en, fresh small adapter) saved as a checkpoint."""
    from emoslm.slm.generate import from_parts
    from emoslm.speech.mel_front_end import MelFrontEnd

    folder = tmp_path_factory.mktemp("slm") / "final"
    model, tokenizer = from_parts("smollm2-135m-instruct", "whisper-tiny.en", adapter_dim=64, adapter_heads=4)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    MelFrontEnd.for_mels(model.config.encoder().num_mel_bins).save_pretrained(folder)
    return folder


@contextlib.contextmanager
def serving(app, port: int | None = None) -> Iterator[str]:  # noqa: ANN001 - an ASGI app
    """Run ``app`` under uvicorn on a loopback port in a thread; yield its base URL; stop it cleanly."""
    from emoslm.serve.app import server as make_server

    port = port or free_port()
    server = make_server(app, "127.0.0.1", port, log_level="error")  # the shutdown `emoslm serve` has
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory):
    """The tiny random Llama (SmolLM2's vocabulary) and its exact f32 GGUF: llama.cpp paths in milliseconds."""
    from tests.tiny import tiny_gguf, tiny_llm

    llm = tiny_llm()
    return llm, tiny_gguf(llm, tmp_path_factory.mktemp("tiny-gguf"))


@pytest.fixture(scope="session")
def served(recogniser_home):
    """The real teacher (SmolLM2, Whisper, Piper, the shipped recogniser) behind the serve app: (url, runtime).

    ``EMOSLM_TEST_LLM=auto`` serves the embedded default LLM instead (slower): how README's screenshot is
    made (``EMOSLM_SCREENSHOT=reports/serve-web.png``, the web-page test)."""
    llm = os.environ.get("EMOSLM_TEST_LLM", "llama-cpp:smollm2-135m-instruct?reuse_prefix=0")
    from emoslm.agents import load_agent
    from emoslm.serve.app import create_app
    from emoslm.serve.runtime import Limits, Runtime

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOSLM_HOME", str(recogniser_home))
        agent = load_agent("teacher", llm=llm, voice="piper")
    runtime = Runtime(agent, Limits(max_sessions_per_client=8), voice="piper", partial_every=1.0)
    runtime.warm_up()  # every model loaded before the first request, as `emoslm serve` does
    with serving(create_app(runtime)) as url:
        yield url, runtime


@pytest.fixture(scope="session")
def sad_clip(piper) -> np.ndarray:
    from emoslm.speech.prosody import acted

    # reproducible: Piper's noise otherwise makes a new clip each run, and one in a few lost "worried"
    return piper.synthesize("My cat has been sick all week and I am so worried about her.",
                            piper.reproducible(acted("sad"))).at()
