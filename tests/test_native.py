"""The portable llama.cpp build: flags chosen from the CPU, never AMX, never -march=native; a dying build is seen."""

import subprocess
import sys
from pathlib import Path

import pytest

from emoslm import native

# /proc/cpuinfo flags of the two machines named in issue 31 (trimmed to what matters)
SAPPHIRE_RAPIDS = ("fpu sse4_2 avx avx2 fma f16c bmi2 avx512f avx512cd avx512vl avx512dq avx512bw avx512vbmi "
                   "avx512_vnni avx512_bf16 avx512_fp16 avx_vnni amx_tile amx_int8 amx_bf16")
EPYC_AVX2 = "fpu sse4_2 avx avx2 fma f16c bmi2"
ROOT = Path(__file__).resolve().parent.parent


def flags(line: str) -> set[str]:
    return native.cpu_flags(f"processor : 0\nflags\t\t: {line}\n")


def test_an_amx_machine_gets_avx512_and_vnni_but_never_amx_or_native():
    options = native.ggml_options(flags(SAPPHIRE_RAPIDS))
    assert options["GGML_NATIVE"] is False
    assert options["GGML_AVX512"] and options["GGML_AVX512_VNNI"] and options["GGML_AVX512_BF16"]
    assert options["GGML_AVX_VNNI"]
    assert not any(options[k] for k in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"))
    args = native.cmake_args(options)
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AMX_INT8=OFF" in args and "-DGGML_AVX512=ON" in args


def test_an_avx2_machine_and_the_fallback_get_the_baseline_only():
    for options in (native.ggml_options(flags(EPYC_AVX2)),
                    native.ggml_options(flags(SAPPHIRE_RAPIDS), baseline_only=True)):
        assert native.target_features(options) == ["AVX", "AVX2", "FMA", "F16C", "BMI2"]
        assert "-DGGML_AVX512=OFF" in native.cmake_args(options)


def test_the_makefile_builds_with_these_flags_and_checks_the_build():
    makefile = (ROOT / "Makefile").read_text()
    assert 'CMAKE_ARGS="$$($(PY) emoslm/native.py cmake-args)"' in makefile
    assert "emoslm/native.py ensure" in makefile
    printed = subprocess.run([sys.executable, str(ROOT / "emoslm" / "native.py"), "cmake-args"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert printed == native.cmake_args(native.ggml_options(native.cpu_flags()))


def test_the_installed_build_uses_what_set_up_chose_for_this_cpu():
    """Pins the real build: AVX2 at least, AVX-512 exactly when this CPU has it, AMX never."""
    compiled = native.compiled_features(native.system_info())
    wanted = native.target_features(native.ggml_options(native.cpu_flags()))
    assert "AMX_INT8" not in compiled
    assert {"AVX", "AVX2", "FMA", "F16C"} <= compiled
    # a baseline rebuild (after a crash) is allowed; a build with features this CPU lacks is not
    assert compiled & {"AVX512", "AVX512_VNNI", "AVX512_VBMI", "AVX512_BF16"} <= set(wanted)


def test_one_token_decodes_in_a_child_and_a_signal_death_is_named():
    result = native.smoke()
    assert result.ran and not result.died and result.said.startswith("ok"), result
    assert "AVX2" in native.compiled_features(result.compiled)  # what the child loaded says it was built for
    died = native.smoke(code="import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    assert died.died and not died.ran and died.said == "killed by SIGILL"
    broken = native.smoke(code="import no_such_module")
    assert not broken.died and not broken.ran and "ModuleNotFoundError" in broken.said


@pytest.mark.parametrize("info, expected", [
    ("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | AMX_INT8 = 1 | ", {"SSE3", "AVX", "AVX2", "AMX_INT8"}),
    ("", set()),
])
def test_system_info_is_parsed(info, expected):
    assert native.compiled_features(info) == expected


def test_a_build_that_dies_is_rebuilt_with_the_baseline_and_said_in_one_line(monkeypatch, tmp_path, capsys):
    """The decision logic of `ensure`, with the child's death faked (a real SIGILL needs an AMX VM) and the
    7-minute rebuild recorded instead of run."""
    runs = iter([native.Smoke(False, True, "killed by SIGILL"), native.Smoke(True, False, "ok ' Paris'", "AVX2 = 1")])
    builds = []
    monkeypatch.setattr(native, "smoke", lambda python=None: next(runs))
    monkeypatch.setattr(native, "_pip_build", lambda python, options: builds.append(options))
    monkeypatch.setattr(native, "build_record_path", lambda: tmp_path / "record.json")
    assert native.ensure() == 0
    assert len(builds) == 1 and native.target_features(builds[0]) == ["AVX", "AVX2", "FMA", "F16C", "BMI2"]
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith("llama.cpp died on this CPU (killed by SIGILL); rebuilding")
    record = (tmp_path / "record.json").read_text()
    assert "rebuilt here with" in record and "-DGGML_AVX512=OFF" in record and "AVX2 = 1" in record


def test_a_failure_that_is_not_a_death_is_not_rebuilt(monkeypatch, capsys):
    monkeypatch.setattr(native, "smoke", lambda python=None: native.Smoke(False, False, "exit 1: ImportError: x"))
    monkeypatch.setattr(native, "_pip_build", lambda python, options: pytest.fail("rebuilt for a non-death"))
    assert native.ensure() == 1
    assert "could not be checked (exit 1: ImportError: x)" in capsys.readouterr().out
