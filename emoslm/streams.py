"""Generators as streams: drain one (the blocking call), or run one on another thread.

``on_thread(generator, executor)`` runs the generator on the executor's thread and hands its items
over a queue: llama.cpp runs all its work on one thread of its own this way (see
``emoslm.llm.llama_cpp``). The generator's return value comes back as the return value (``yield from``
keeps it), an exception in the worker is raised in the consumer, and closing the consumer (barge-in,
a caller that stops listening) makes the worker close the generator at its next item.
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


def on_thread(generator: Generator[T, Any, R], executor: Executor) -> Generator[T, None, R]:
    """Items of ``generator``, produced on ``executor``'s thread while the consumer works on earlier ones."""
    box: queue.Queue[tuple[int, Any]] = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        try:
            while not stop.is_set():
                box.put((_ITEM, next(generator)))
        except StopIteration as end:
            box.put((_END, end.value))
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            box.put((_FAIL, exc))
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
