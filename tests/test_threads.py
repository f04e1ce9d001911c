"""The thread policy: the cores a process may use, the load other processes put on them, and the LLM's lanes."""

import subprocess
import sys
import time

import pytest

from emoslm import threads
from emoslm.llm.base import Sampling

BUSY = "import time\nend = time.time() + 30\nwhile time.time() < end: pass"


@pytest.fixture()
def hog():
    """Another process keeping one core busy, for as long as the test needs it (30 s at most)."""
    threads.WATCH.start()  # sampling from now on (run alone, no earlier test has started it)
    process = subprocess.Popen([sys.executable, "-c", BUSY])
    time.sleep(1.5)  # the watcher judges the load over the last second
    yield process
    process.kill()
    process.wait()


def test_usable_cores_follow_the_affinity_and_the_cap(monkeypatch):
    import os

    monkeypatch.delenv("EMOSLM_THREADS", raising=False)
    assert threads.usable_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("EMOSLM_THREADS", "1")
    assert threads.usable_cores() == 1 and threads.default_threads() == 1
    monkeypatch.setenv("EMOSLM_THREADS", "999")  # never more threads than cores: spinning pools would collapse
    assert threads.usable_cores() == len(os.sched_getaffinity(0))


def test_the_watcher_sees_another_process_take_a_core_and_the_lanes_give_it_up(hog, monkeypatch):
    monkeypatch.delenv("EMOSLM_THREADS", raising=False)
    if threads.usable_cores() < 2:
        pytest.skip("one core: nothing to give up")
    assert threads.WATCH.others_busy() >= threads.BUSY_THRESHOLD
    assert threads.free_cores() <= threads.usable_cores() - 1
    now = threads.lanes(beside=1)
    assert now.batch == threads.free_cores() and now.decode == max(1, now.batch - 1)


def test_our_own_work_is_not_counted_as_another_process(monkeypatch):
    """A busy thread of this process (the LLM decoding) must not make the policy give its own cores away."""
    import threading

    threads.WATCH.start()
    stop = time.time() + 1.6
    worker = threading.Thread(target=lambda: [None for _ in iter(lambda: time.time() < stop, False)])
    worker.start()
    time.sleep(1.4)
    try:
        assert threads.WATCH.others_busy() < threads.BUSY_THRESHOLD
    finally:
        worker.join()


def test_llama_cpp_decodes_on_the_free_cores(llama, hog, monkeypatch):
    """The llama.cpp backend re-reads the policy at every generation: with a core taken, one thread fewer."""
    monkeypatch.delenv("EMOSLM_THREADS", raising=False)
    loaded = llama.llm.n_threads
    if min(loaded, threads.usable_cores()) < 2:
        pytest.skip("loaded with one thread: nothing to give up")
    llama.share_cpu(0)
    llama.complete("Hello", Sampling(max_tokens=2, temperature=0.0))
    assert llama.lanes.decode == min(loaded, threads.free_cores()) < min(loaded, threads.usable_cores())
