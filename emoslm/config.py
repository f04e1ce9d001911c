"""Process-wide settings read from the environment (and later, YAML recipes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import BaseModel, Field

from emoslm.threads import default_threads


def _default_home() -> Path:
    return Path(os.environ.get("EMOSLM_HOME", Path.home() / ".cache" / "emoslm")).expanduser()


class Settings(BaseModel):
    """Where caches live and how many CPU threads the backends may use."""

    home: Path = Field(default_factory=_default_home)
    threads: int = Field(default_factory=default_threads)  # at load; emoslm.threads per call

    @property
    def cache_dir(self) -> Path:
        path = self.home / "models"
        path.mkdir(parents=True, exist_ok=True)
        return path


def settings() -> Settings:
    """Fresh settings each call, so tests and users can change the environment at run time."""
    return Settings()


def configure_threads(torch_threads: int | None = None) -> int:
    """Set the CPU thread counts once, at the start of a job, for every library that reads them.

    Backends that take a count of their own (llama.cpp, CTranslate2, onnxruntime) read
    ``settings().threads``; nothing sets torch's global thread count per call. A job that runs
    llama.cpp next to torch (the teacher's text-emotion model) gives torch one thread: llama.cpp and
    torch share the system's OpenMP runtime, and a second team of OpenMP threads in the process makes
    it throttle its spinning, so llama.cpp drops from ~96 to ~41 tokens/s on 2 cores (measured).
    """
    threads = settings().threads
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))
    torch_threads = torch_threads or threads
    os.environ["EMOSLM_TORCH_THREADS"] = str(torch_threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(torch_threads)
    return threads


def torch_threads() -> int:
    """The torch thread count this job chose (``configure_threads``); libraries that import torch late use it."""
    return int(os.environ.get("EMOSLM_TORCH_THREADS", settings().threads))
