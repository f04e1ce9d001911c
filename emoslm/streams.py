"""Generators as streams: drain one (the blocking call), or run one on another thread.

``on_thread(generator, executor)`` runs the generator on the executor's thread and hands its items
over a queue: llama.cpp runs all its work on one thread of its own this way (see
``emoslm.llm.llama_cpp``). The generator's return value comes back as the return value (``yield from``
keeps it), an exception in the worker is raised in the consumer, and closing the consumer (barge-in,
a caller that stops listening) makes the worker close the generator at its next item. The hand-over
holds at most ``ahead`` items: a consumer that pauses (a voice speaking the first clause alone) pauses
the producer too, instead of sharing the CPU with it. A consumer that takes nothing for ``patience``
seconds is taken to have gone without closing: the producer is closed, so its thread (llama.cpp's only
one) is free again.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_ITEM, _END, _FAIL = range(3)


def drain(generator: Generator[Any, Any, R]) -> R:
    """Run a generator to its end and give its return value (the blocking form of a stream)."""
    while True:
        try:
            next(generator)
        except StopIteration as end:
            return end.value


def on_thread(generator: Generator[T, Any, R], executor: Executor, ahead: int = 4,
              patience: float = 120.0) -> Generator[T, None, R]:
    """Items of ``generator``, produced on ``executor``'s thread while the consumer works on earlier ones
    (at most ``ahead`` of them)."""
    box: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def hand_over(item: tuple[int, Any]) -> bool:
        waited = 0.0
        while not stop.is_set() and waited < patience:
            try:
                box.put(item, timeout=0.05)
                return True
            except queue.Full:
                waited += 0.05
        return False

    def work() -> None:
        try:
            while hand_over((_ITEM, next(generator))):
                pass
        except StopIteration as end:
            hand_over((_END, end.value))
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            hand_over((_FAIL, exc))
            return
        generator.close()

    worker = executor.submit(work)
    try:
        while True:
            kind, value = box.get()
            if kind == _ITEM:
                yield value
            elif kind == _END:
                return value
            else:
                raise value
    finally:
        stop.set()
        worker.result()
