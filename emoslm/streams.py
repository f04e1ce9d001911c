"""Run a generator ahead of its consumer, in a thread, so that producing and consuming overlap.

The teacher's LLM keeps writing the reply while the voice synthesises the clause already written:
``ahead(generator)`` runs the generator in a worker thread and hands its items over a queue. The
generator's return value comes back as the return value of ``ahead`` (``yield from`` keeps it), an
exception in the worker is raised in the consumer, and closing the consumer (barge-in, a caller that
stops listening) makes the worker close the generator at its next item.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator
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


def ahead(generator: Generator[T, Any, R]) -> Generator[T, None, R]:
    """Items of ``generator``, produced in a worker thread while the consumer works on earlier ones."""
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

    worker = threading.Thread(target=work, name="emoslm-ahead", daemon=True)
    worker.start()
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
        worker.join()
