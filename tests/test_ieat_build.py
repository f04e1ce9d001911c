"""The IEAT build end to end on the real small models: stages, validation, resume, shards, Ray, inspect."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from emoslm.dialogues import read_dialogues
from emoslm.emotions import TAGS
from emoslm.errors import BackendError
from emoslm.ieat.dialogues import regroup
from emoslm.ieat.recipe import load_recipe
from emoslm.ieat.runner import build
from emoslm.perception.recognizer import RECOGNISER_VERSION
from emoslm.think import emotion_path, trajectory_reply

FIXTURES = Path(__file__).parent / "fixtures" / "ieat"
OUTPUTS = ["stage1_1.jsonl", "stage1_2.jsonl", "multiturn.jsonl", "stage2.jsonl", "errors.jsonl", "summary.json",
           "recipe.json"]


def write_recipe(folder: Path, recogniser: Path, **data_overrides) -> Path:
    """A small English recipe: three UltraChat-layout text queries, one spoken clip without a transcript,
    one corrupt clip; espeak voices (deterministic, fast); short budgets."""
    from emoslm.audio import save_audio
    from emoslm.speech.prosody import acted
    from emoslm.speech.tts import EspeakTTS

    clips = folder / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    speech = EspeakTTS("en-us+m3").synthesize("I cannot believe they cancelled my flight again tonight.",
                                             acted("anger"))
    save_audio(clips / "angry.wav", speech.at())
    (clips / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 10)
    manifest = folder / "clips.jsonl"
    manifest.write_text(json.dumps({"id": "angry", "audio": "clips/angry.wav", "lang": "en"}) + "\n"
                        + json.dumps({"id": "broken", "audio": "clips/broken.wav", "lang": "en"}) + "\n")
    data = {
        "sources": [{"type": "ultrachat", "path": str(FIXTURES / "ultrachat")},
                    {"type": "jsonl", "path": str(manifest)}],
        "teacher": {"llm": "llama-cpp:smollm2-135m-instruct", "think_budget": 24, "reply_budget": 32,
                    "answer_budget": 24, "retries": 2},
        "recognizer_dir": str(recogniser),
        "voices": {"en": ["espeak:en-us+m1", "espeak:en-us+f2"]},
        "tasks": {"trajectory": 1, "reasoning": 1, "empathy": 3},
        "instructions": {"per_task": 2, "candidates": 4},
        "multiturn": {"share": 1.0, "lengths": [2], "trajectory": 1.0},
        **data_overrides,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "test", "seed": 7, "data": data}))
    return path


@pytest.fixture(scope="module")
def recogniser(recogniser_home) -> Path:
    home = recogniser_home
    return home / "perception" / f"recogniser-{RECOGNISER_VERSION}"


@pytest.fixture(scope="module")
def clean(tmp_path_factory, recogniser) -> tuple[Path, Path]:
    """(recipe, build folder) of one uninterrupted build."""
    folder = tmp_path_factory.mktemp("ieat")
    recipe = write_recipe(folder, recogniser)
    report = build(load_recipe(recipe), folder / "clean")
    assert report.complete and report.built_now == 5
    return recipe, folder / "clean"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_build_writes_every_stage_and_validates_thinks(clean) -> None:
    _, out = clean
    s11, s12, multi = rows(out / "stage1_1.jsonl"), rows(out / "stage1_2.jsonl"), rows(out / "multiturn.jsonl")
    assert len(s11) == 4  # the corrupt clip has no sample
    assert {s["id"] for s in s11} >= {"jsonl-angry"}
    spoken = next(s for s in s11 if s["id"] == "jsonl-angry")
    assert "flight" in spoken["transcript"].lower() and spoken["provenance"]["asr"] == "whisper-tiny.en"
    for sample in [*s12, *multi]:
        assert sample["emotion"] in TAGS and sample["emotion"] in sample["think"]
        opening_end = sample["think"].index("is") + 2  # "... the most likely reason they feel X is"
        assert len(sample["think"][opening_end:].split()) >= 3
        assert sample["response"] and "<think>" not in sample["response"]
        assert sample["turns"][-1]["think"] == sample["think"] and "think" not in sample["turns"][0]
        assert (out / sample["turns"][0]["audio"]).exists() and (out / sample["turns"][-1]["audio"]).exists()
        assert sample["provenance"]["teacher"] == "llama-cpp:smollm2-135m-instruct"
    for sample in s12:
        if sample["task"] != "empathy":  # an instruction is spoken in front of the clip
            assert sample["turns"][0]["instruction"] and sample["turns"][0]["audio"].startswith("audio/users/")
    for dialogue in multi:  # each ends with a spoken "which emotions did I go through?" (HumDial T1)
        path = emotion_path(dialogue["emotions"])
        assert dialogue["task"] == "trajectory" and " → ".join(path) in dialogue["think"]
        assert dialogue["response"].startswith(trajectory_reply(path, "en"))
        assert dialogue["turns"][-2]["instruction"] and dialogue["turns"][-2]["audio"].startswith("audio/users/")
        assert dialogue["emotions"][0] != dialogue["emotions"][-1]
        assert len(dialogue["turns"]) == 2 * len(dialogue["emotions"])
        assert all("think" not in t for t in dialogue["turns"][:-1])
    errors = rows(out / "errors.jsonl")
    broken = [e for e in errors if e["id"] == "jsonl-broken"]
    assert broken and broken[0]["stage"] == "prepare" and "broken.wav" in broken[0]["error"]
    kinds = {e["kind"] for e in rows(out / "stage2.jsonl")}
    assert kinds == {"asr", "tts"}
    humdial = read_dialogues(out / "humdial")
    assert len(humdial) == len(s12) + len(multi)
    assert all(t.response_text and t.emotion in TAGS for d in humdial for t in d.turns)


@pytest.mark.slow
def test_killed_build_restarted_gives_the_same_files(clean, tmp_path) -> None:
    recipe, reference = clean
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "emoslm.cli", "data", "build", str(recipe), "--out", str(out)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / ".parts" / "items"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("*.json"))) < 2 and process.poll() is None:
        time.sleep(0.2)
    assert process.poll() is None, "the build finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "stage1_2.jsonl").exists()
    report = build(load_recipe(recipe), out)
    assert report.complete and 0 < report.built_now < 5
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    match, mismatch, missing = filecmp.cmpfiles(reference, out, _audio_files(reference), shallow=False)
    assert not mismatch and not missing


def _audio_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.wav") if ".parts" not in p.parts)


@pytest.mark.slow
def test_shards_then_ray_give_the_clean_files(clean, tmp_path, recogniser) -> None:
    recipe, reference = clean
    loaded = load_recipe(recipe)
    first = build(loaded, tmp_path / "sharded", shard=(1, 2))
    assert not first.complete and first.built_now == 3
    second = build(loaded, tmp_path / "sharded", shard=(2, 2))
    assert second.complete and second.built_now == 2
    for name in OUTPUTS:
        assert (tmp_path / "sharded" / name).read_bytes() == (reference / name).read_bytes(), name

    ray = build(loaded, tmp_path / "ray", executor="ray", workers=1, limit=3)
    assert ray.complete and ray.built_now == 3
    ids = [r["id"] for r in rows(tmp_path / "ray" / "stage1_1.jsonl")]
    reference_rows = {r["id"]: r for r in rows(reference / "stage1_1.jsonl")}
    assert ids and all(reference_rows[r["id"]] == r for r in rows(tmp_path / "ray" / "stage1_1.jsonl"))


def test_unreachable_teacher_fails_fast_naming_the_url(tmp_path) -> None:
    from emoslm.serve.llm_server import free_port

    port = free_port()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "data": {
        "sources": [{"type": "ultrachat", "path": str(FIXTURES / "ultrachat")}],
        "teacher": {"llm": f"http://127.0.0.1:{port}/v1?model=m"}}}))
    with pytest.raises(BackendError, match=f"http://127.0.0.1:{port}/v1"):
        build(load_recipe(recipe), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_changed_recipe_is_not_resumed_into_an_old_folder(tmp_path) -> None:
    from emoslm.errors import DataError
    from emoslm.ieat.runner import claim_folder

    first = load_recipe(write_recipe(tmp_path, tmp_path / "recogniser"))
    claim_folder(first, tmp_path / "out")
    claim_folder(load_recipe(write_recipe(tmp_path, tmp_path / "recogniser", workers=2)), tmp_path / "out")
    second = load_recipe(write_recipe(tmp_path, tmp_path / "recogniser", tasks={"empathy": 1}))
    with pytest.raises(DataError, match="different recipe"):
        claim_folder(second, tmp_path / "out")


def _record(i: int, tag: str, lang: str = "en") -> dict:
    return {"id": f"s{i:03d}", "lang": lang, "ieat": {"emotion": {"tag": tag}}}


def test_regroup_is_seeded_and_first_differs_from_last() -> None:
    samples = [_record(i, TAGS[i % len(TAGS)]) for i in range(50)] + [_record(100 + i, "sad", "zh") for i in range(5)]
    dialogues = regroup(samples, 0.4, [2, 3, 4], seed=3)
    assert dialogues == regroup(list(reversed(samples)), 0.4, [2, 3, 4], seed=3)
    assert dialogues != regroup(samples, 0.4, [2, 3, 4], seed=4)
    used = [m["id"] for d in dialogues for m in d]
    assert len(used) == len(set(used)) <= round(0.4 * len(samples))
    assert {len(d) for d in dialogues} <= {2, 3, 4} and len({len(d) for d in dialogues}) > 1
    for d in dialogues:
        assert d[0]["ieat"]["emotion"]["tag"] != d[-1]["ieat"]["emotion"]["tag"]
        assert len({m["lang"] for m in d}) == 1
    assert all(m["lang"] == "en" for d in dialogues for m in d)  # the zh samples all share one emotion


@pytest.mark.slow
def test_inspect_and_cli(clean) -> None:
    from typer.testing import CliRunner

    from emoslm.cli import app

    _, out = clean
    result = CliRunner().invoke(app, ["data", "inspect", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "inspect" / "inspect.json").read_text())
    assert report["samples"]["stage1_2"] == len(rows(out / "stage1_2.jsonl"))
    assert sum(report["per_emotion"].values()) == report["samples"]["stage1_2"] + report["samples"]["multiturn"]
    assert report["multiturn_first_differs_from_last"] == report["samples"]["multiturn"]
    for png in ("emotions.png", "transitions.png"):
        assert (out / "inspect" / png).read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_recipe_is_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {sources: [{type: nosuch}]}\n")
    result = subprocess.run([sys.executable, "-m", "emoslm.cli", "data", "build", str(bad), "--out",
                             str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "data.sources.0.type" in result.stderr and "Traceback" not in result.stderr
