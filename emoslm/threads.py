"""How many CPU threads each job and lane gets: one policy, from the cores this process may use and what
other processes are using on them now.

Why it must look at the others: ggml's and CTranslate2's OpenMP threads spin at every barrier, so a pool
of N threads on N cores collapses the moment another process takes one core (the barrier waits for the
descheduled thread). Measured on 2 AVX-512 EPYC cores, Qwen2.5-1.5B Q4 decoding 48 tokens:

| threads | idle | one core busy with another process |
|---|---|---|
| 2 | 27.7 tokens/s | 8.7 tokens/s |
| 1 | 18.7 tokens/s | 18.5 tokens/s |
| 2, ``OMP_WAIT_POLICY=PASSIVE`` | 15.6 tokens/s | 15.4 tokens/s |

(``GOMP_SPINCOUNT`` 2,000-20,000 did not help: 5.6-8.4 tokens/s with the core taken.) So the LLM decodes
on the cores nobody else is using, re-read at the start of every generation, and keeps spinning there.

The lanes of one process (``lanes``):

- **LLM decode** — the free cores, less one per lane that runs beside it (a voice synthesising the
  previous clause): two spinning pools on the same core starve each other (116 → 26 tokens/s, measured).
- **LLM batch** (prompt prefill) — every free core: nothing else of ours runs during a prefill.
- **ASR** (CTranslate2) and **torch** — fixed when the model loads (CTranslate2 cannot change it later):
  every usable core for ASR, which runs alone at the end of the user's turn (with one core taken it slows
  1.5×, not 3×: 1.40 against 0.91 s for a zh turn); torch gets one thread next to llama.cpp (config.py).
- **voices** (onnxruntime) — one thread that never spins, so it can sit beside the decode.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

BUSY_THRESHOLD = 0.6  # of a core: another process using more than this takes the core from us
SAMPLE_S = 0.25  # how often the watcher reads /proc
WINDOW = 4  # samples: the load is judged over the last second


def usable_cores() -> int:
    """The cores this process may run on (its affinity), at most ``EMOSLM_THREADS`` when that is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cap = os.environ.get("EMOSLM_THREADS")
    return max(1, min(cores, int(cap))) if cap else cores


def default_threads() -> int:
    """The thread count a backend loads with when nothing else is said: every usable core, at most 4
    (beyond 4, the small models here gain little and a server wants cores for its other lanes)."""
    return min(4, usable_cores()) if not os.environ.get("EMOSLM_THREADS") else usable_cores()


class CpuWatch:
    """Cores busy with *other* processes over the last second, sampled from ``/proc`` in a daemon thread.

    Busy = the ticks of the cores in this process's affinity that were not idle, less this process's own
    ticks (``/proc/self/stat``). Where ``/proc/stat`` is unreadable (not Linux) it reports 0: the policy
    then falls back to every usable core, as before it existed.
    """

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=WINDOW + 1)
        self._lock = threading.Lock()
        self._started = False
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        self._sample()
        threading.Thread(target=self._run, name="emoslm-cpuwatch", daemon=True).start()

    def others_busy(self) -> float:
        """Cores' worth of CPU that other processes used over the last second (0 until two samples exist)."""
        self.start()
        with self._lock:
            if len(self._samples) < 2:
                return 0.0
            (t0, all0, own0), (t1, all1, own1) = self._samples[0], self._samples[-1]
        elapsed = t1 - t0
        return max(0.0, ((all1 - all0) - (own1 - own0)) / self._tick / elapsed) if elapsed > 0 else 0.0

    def _run(self) -> None:
        while True:
            time.sleep(SAMPLE_S)
            self._sample()

    def _sample(self) -> None:
        busy = _busy_ticks(os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set())
        if busy is None:
            return
        own = _own_ticks()
        with self._lock:
            self._samples.append((time.monotonic(), busy, own))


def _busy_ticks(cpus: set[int]) -> float | None:
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    total = 0.0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(ticks) - ticks[3] - ticks[4]
    return total


def _own_ticks() -> float:
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return float(int(fields[11]) + int(fields[12]))  # utime, stime (fields 14 and 15 of the whole line)


WATCH = CpuWatch()


def free_cores() -> int:
    """Usable cores that no other process is keeping busy now (at least one)."""
    taken = int(WATCH.others_busy() + 1 - BUSY_THRESHOLD)  # 0.6 of a core or more takes it
    return max(1, usable_cores() - taken)


@dataclass(frozen=True)
class Lanes:
    decode: int  # llama.cpp generation threads
    batch: int  # llama.cpp prompt (prefill) threads


def lanes(beside: int = 0, most: int | None = None) -> Lanes:
    """The LLM's threads now, with ``beside`` lanes of this process working next to its decode (a voice);
    ``most`` caps both (the count the model was loaded with)."""
    free = free_cores()
    if most:
        free = min(free, most)
    return Lanes(decode=max(1, free - beside), batch=free)
