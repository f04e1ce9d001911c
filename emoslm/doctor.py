"""`emoslm doctor`: everything a support question needs, from one command.

A user who writes "it crashed" or "it is slow" can paste this output: the CPU and the instruction sets it
lists, which of them the llama.cpp build uses (and how it was built), the versions and thread counts of
each native runtime, where the models and caches live, and then each model's load and one-second job
(`emoslm models verify`).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata

from emoslm import native

# The flags that decide which kernels run; the rest of /proc/cpuinfo is noise for a support question.
KEY_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512vbmi", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


@dataclass
class Fact:
    section: str
    name: str
    value: str
    warn: bool = False


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_facts() -> list[Fact]:
    flags = native.cpu_flags()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    facts = [
        Fact("machine", "cpu", native.cpu_name()),
        Fact("machine", "cores usable", f"{cores} (of {os.cpu_count()})"),
        Fact("machine", "cpu flags", " ".join(f for f in KEY_FLAGS if f in flags) or "unknown"),
        Fact("machine", "python", f"{platform.python_version()} ({sys.executable})"),
    ]
    if "avx2" not in flags and flags:
        facts.append(Fact("machine", "warning", "no AVX2: llama.cpp's portable build needs it", warn=True))
    return facts


def llama_facts() -> list[Fact]:
    """What the installed llama.cpp was compiled for, and whether that is safe on this CPU."""
    out = [Fact("llama.cpp", "llama-cpp-python", _version("llama-cpp-python"))]
    try:
        info = native.system_info()
    except Exception as exc:  # a missing or broken build is itself the answer
        return [*out, Fact("llama.cpp", "system info", f"cannot load: {type(exc).__name__}: {exc}", warn=True)]
    out.append(Fact("llama.cpp", "compiled for", native.shown_features(info)))
    if "AMX_INT8" in native.compiled_features(info):
        out.append(Fact("llama.cpp", "warning", "built with AMX (a native build?): it dies with SIGILL on VMs that "
                        "list AMX without allowing it; rerun `make setup`", warn=True))
    record = native.build_record_path()
    if record.exists():
        built = json.loads(record.read_text())
        out.append(Fact("llama.cpp", "build flags", built.get("cmake_args", "?")))
        out.append(Fact("llama.cpp", "set-up smoke decode", f"{built.get('smoke', '?')} on {built.get('cpu', '?')}"))
    else:
        out.append(Fact("llama.cpp", "build flags", "no record (not installed by `make setup`)"))
    return out


def runtime_facts() -> list[Fact]:
    out = []
    try:
        import ctranslate2

        types = ", ".join(sorted(ctranslate2.get_supported_compute_types("cpu")))
        out.append(Fact("runtimes", "ctranslate2", f"{ctranslate2.__version__} (cpu compute types: {types})"))
    except Exception as exc:
        out.append(Fact("runtimes", "ctranslate2", f"unavailable: {exc}", warn=True))
    try:
        import onnxruntime

        out.append(Fact("runtimes", "onnxruntime", f"{onnxruntime.__version__} "
                                                   f"({', '.join(onnxruntime.get_available_providers())})"))
    except Exception as exc:
        out.append(Fact("runtimes", "onnxruntime", f"unavailable: {exc}", warn=True))
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
        out.append(Fact("runtimes", "torch", f"{torch.__version__} (kernels: {capability}, "
                                             f"{torch.get_num_threads()} threads)"))
    except Exception as exc:
        out.append(Fact("runtimes", "torch", f"unavailable: {exc}"))
    return out


def store_facts() -> list[Fact]:
    from emoslm.config import settings
    from emoslm.perception.recognizer import recogniser_dir

    home = settings().home
    found = recogniser_dir()
    state = (f"in place ({found})" if (found / "meta.json").exists()
             else "not yet in place (first use copies the shipped one, or trains one where it cannot load)")
    shipped = shipped_recogniser_state()
    return [Fact("store", "EMOSLM_HOME", str(home)), Fact("store", "threads setting", str(settings().threads)),
            Fact("store", "recogniser", f"{state}; shipped: {shipped}")]


def shipped_recogniser_state() -> str:
    from emoslm.perception import shipped

    return shipped.describe()


def facts() -> list[Fact]:
    """Every fact but the models' own checks, cheap enough to print first."""
    return [*machine_facts(), *llama_facts(), *runtime_facts(), *store_facts()]
