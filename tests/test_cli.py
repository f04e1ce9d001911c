import subprocess
import sys

import pytest
from typer.testing import CliRunner

from emoslm.cli import app

runner = CliRunner()


@pytest.mark.parametrize("group", ["demo", "models", "data", "train", "eval", "chat", "serve"])
def test_every_flow_has_help(group):
    result = runner.invoke(app, [group, "--help"])
    assert result.exit_code == 0 and len(result.output.strip()) > 40


def test_models_list_shows_the_store():
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0 and "whisper-tiny.en" in result.output and "yes" in result.output


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "emoslm.cli", *args], capture_output=True, text=True, timeout=300)


def test_bad_audio_is_one_line_and_nonzero(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    result = _cli("data", "transcribe", str(empty))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "empty" in result.stderr


def test_transcribe_json(tmp_path, spoken_sentence):
    from emoslm.audio import save_audio

    wav = save_audio(tmp_path / "s.wav", spoken_sentence)
    result = _cli("data", "transcribe", "--json", str(wav))
    assert result.returncode == 0, result.stderr
    assert '"language": "en"' in result.stdout and "exhausted" in result.stdout


def test_models_verify_runs_smoke_jobs():
    result = _cli("models", "verify", "smollm2-135m-instruct", "whisper-tiny.en", "silero-vad")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" ok ") == 3


def test_unknown_model_in_verify():
    result = _cli("models", "verify", "gpt-5")
    assert result.returncode == 2 and "unknown model" in result.stderr


def test_train_mistakes_are_one_line(tmp_path):
    for args, words in [(["train", "recipes/tiny.yaml"], "usage"), (["train", "report"], "usage"),
                        (["train", "recipes/tiny.yaml", "--stage", "2-1"], "use one of 1-1, 1-2, 2"),
                        (["train", "recipes/tiny.yaml", "--stage", "1-1", "--data", str(tmp_path)],
                         "not an IEAT build"),
                        (["train", "report", str(tmp_path)], "not a finished training run"),
                        (["train", "probe"], "usage"),
                        (["train", "probe", str(tmp_path)], "not a finished training run"),
                        (["train", "probe", str(tmp_path), "--fit", "words"], "use build or corpus")]:
        result = _cli(*args)
        assert result.returncode == 2 and words in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0


def test_perception_classify_rejects_bad_audio_in_one_line(tmp_path):
    bad = tmp_path / "noise.mp3"
    bad.write_bytes(b"definitely not audio" * 20)
    result = _cli("perception", "classify", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not an audio file" in result.stderr and result.stderr.strip().count("\n") == 0


def test_doctor_names_the_cpu_the_build_and_each_model(tmp_path):
    """What a support question needs, from one command: the machine, the llama.cpp build, the runtimes and
    every model's load and one-second job (here only the LLM and ASR, to keep the tier fast)."""
    from emoslm import doctor, native

    facts = {(f.section, f.name): f.value for f in doctor.facts()}
    assert facts["machine", "cpu"] == native.cpu_name()
    assert "avx2" in facts["machine", "cpu flags"]
    assert "AVX2" in facts["llama.cpp", "compiled for"] and "AMX" not in facts["llama.cpp", "compiled for"]
    assert "-DGGML_NATIVE=OFF" in facts["llama.cpp", "build flags"]
    assert "shipped: usable (" in facts["store", "recogniser"]
    assert {"ctranslate2", "onnxruntime", "torch"} <= {name for section, name in facts if section == "runtimes"}
    result = runner.invoke(app, ["doctor", "--no-models"])
    assert result.exit_code == 0, result.output
    assert "compiled for" in result.output and "build flags" in result.output
    from emoslm.verify import verify

    rows = verify(["smollm2-135m-instruct", "whisper-tiny.en"])
    assert [r.status for r in rows] == ["ok", "ok"] and rows[0].load_s > 0
