"""Training stages 1-1 and 1-2 on the real SmolLM2 + Whisper tiny.en, on a small IEAT-format build."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from emoslm.errors import DataError, EmoslmError  # noqa: E402
from emoslm.train.data import Collator, load_examples  # noqa: E402
from emoslm.train.loop import TrainConfig, train  # noqa: E402

LINES = [("I can't believe my flight got cancelled again.", "anger"), ("We won the final, I'm so happy!", "happy"),
         ("My grandmother is in hospital tonight.", "sad"), ("Is that a spider on my arm?", "fear"),
         ("The meeting moved to three o'clock.", "neutral"), ("You found my lost ring? Really?", "surprise")]


def write_build(root: Path, spoken_replies: bool = False) -> Path:
    """An IEAT build folder in the documented schema, with espeak clips and short targets (and, for stage 2,
    each reply spoken with the prosody that fits the user's emotion)."""
    from emoslm.audio import save_audio
    from emoslm.speech.prosody import acted, reply
    from emoslm.speech.tts import EspeakTTS

    tts = EspeakTTS("en-us+m1")
    s11, s12 = [], []
    for i, (text, tag) in enumerate(LINES):
        rel = f"audio/clips/c{i}.wav"
        save_audio(root / rel, tts.synthesize(text, acted(tag)).at())
        s11.append({"id": f"c{i}", "lang": "en", "audio": rel, "transcript": text, "response": "I hear you.",
                    "provenance": {"acted_emotion": tag} if i % 2 else {}})  # the others: the label of 1-2
        think = f"The emotion I hear is {tag}. The most likely reason is what they just said."
        answer = {"role": "assistant", "think": think, "text": "That sounds like a lot."}
        if spoken_replies:
            answer["audio"] = f"audio/replies/c{i}.wav"
            save_audio(root / answer["audio"], tts.synthesize(answer["text"], reply(tag)).at())
        s12.append({"id": f"c{i}", "task": "empathy", "lang": "en", "emotion": tag, "think": think,
                    "response": answer["text"], "provenance": {},
                    "turns": [{"role": "user", "audio": rel, "text": text}, answer]})
    (root / "recipe.json").write_text("{}")
    (root / "stage1_1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in s11))
    (root / "stage1_2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in s12))
    (root / "multiturn.jsonl").write_text("")
    return root


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    return write_build(tmp_path_factory.mktemp("build"))


def frame_cache(root: Path):
    from emoslm.speech.mel_front_end import MelFrontEnd
    from emoslm.speech.whisper_ct2 import load_whisper_encoder
    from emoslm.train.frames import FrameCache

    return FrameCache(load_whisper_encoder("whisper-tiny.en"), MelFrontEnd.for_mels(80), root)


def test_frame_cache_gives_the_encoder_s_own_frames_once(build, tmp_path):
    import numpy as np
    import torch

    from emoslm.audio import load_audio
    from emoslm.speech.whisper_ct2 import encode

    cache = frame_cache(tmp_path / "frames")
    clips = [e.audio for e in load_examples(build, "1-1")]
    assert cache.fill(clips) == len(clips) and cache.fill(clips) == 0  # the encoder runs once per clip
    stored = cache(clips[0])
    with torch.no_grad():
        direct = encode(cache.encoder, cache.front_end.tensor(load_audio(clips[0]))[None])[0].numpy()
    assert stored.shape == direct.shape and np.allclose(stored, direct, atol=1e-5)
    assert stored.shape[0] * 2 == cache.front_end(load_audio(clips[0])).shape[1]
    with torch.no_grad():  # another encoder never reads these frames
        cache.encoder.layer_norm.bias.add_(0.1)
    from emoslm.train.frames import FrameCache

    moved = FrameCache(cache.encoder, cache.front_end, tmp_path / "frames")
    assert moved.folder != cache.folder and not moved.path(clips[0]).exists()


def config(build: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(stage="1-1", data=str(build), out=str(out), adapter_dim=64, batch_size=2, max_steps=4,
                       save_every=2, held_out=0.2, lr=2e-3, **kw)


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_stage_1_1_resumes_exactly_and_stage_1_2_trains_lora(build, tmp_path):
    whole = train(config(build, tmp_path / "whole"))
    assert whole["steps"] == 4 and whole["held_out_examples"] >= 1 and whole["held_out_loss"] > 0
    assert (tmp_path / "whole" / "final" / "model.safetensors").exists()
    assert (tmp_path / "whole" / "final" / "preprocessor_config.json").exists()  # the mel front end travels too
    assert any((tmp_path / "whole" / "tb").rglob("events.out.tfevents*"))

    assert train(config(build, tmp_path / "cut"), stop_after=2) == {"stopped_at": 2}
    from safetensors import safe_open

    with safe_open(str(tmp_path / "cut" / "checkpoint" / "model.safetensors"), "pt") as saved:
        names = set(saved.keys())
    assert any(name.startswith("adapter.") for name in names)  # what stage 1-1 trains is saved ...
    assert not any(name.startswith(("llm.", "encoder.")) for name in names)  # ... the frozen init model is not
    train(config(build, tmp_path / "cut"))  # resumes from the step-2 checkpoint
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "whole"), abs=1e-4)

    second = config(build, tmp_path / "lora", init=str(tmp_path / "whole" / "final"))
    result = train(replace(second, stage="1-2", max_steps=4, listen_clips=2))
    assert result["steps"] == 4
    curve = [json.loads(line) for line in (tmp_path / "lora" / "listening.jsonl").read_text().splitlines()]
    assert [c["epoch"] for c in curve] == list(range(len(curve))) and len(curve) >= 2  # before, then per epoch
    assert curve[0]["step"] == 0 and curve[0]["clips"] >= 1
    assert 0 <= curve[-1]["think_vs_label"] <= 1 and curve[-1]["chance"] == pytest.approx(1 / 7, abs=1e-3)
    assert (tmp_path / "lora" / "listening" / f"epoch-{len(curve) - 1}.json").exists()
    from emoslm.slm.model import UnifiedSLM

    merged = UnifiedSLM.from_pretrained(tmp_path / "lora" / "final")
    assert not any("lora" in name for name, _ in merged.named_parameters())

    from emoslm.eval.runs import report

    summary = report([tmp_path / "whole", tmp_path / "lora"], tmp_path / "report", clips=1)
    assert list(summary["rows"]) == ["untrained adapter", "stage 1-1 (whole)", "stage 1-2 (lora)"]
    assert summary["generated_clips"] == 1 and summary["held_out_clips"] >= 1
    assert all(r["loss_1_2"] > 0 and r["emotion_in_think"] in (0.0, 1.0) for r in summary["rows"].values())
    assert "stage 1-2 (lora)" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.slow
def test_stage_1_2_stops_when_the_replies_collapse_and_keeps_the_last_good_checkpoint(build, tmp_path, monkeypatch):
    """The loop's side of the guard: the verdicts are scripted (fine before training, collapsed after the first
    epoch), so the test does not depend on what two clips' replies happen to be; the guard's reading of real
    numbers is tested above."""
    from emoslm.slm.model import UnifiedSLM
    from emoslm.train.listening import CollapseGuard

    first = train(config(build, tmp_path / "base"))
    verdicts = iter([[], ["scripted collapse"]])
    monkeypatch.setattr(CollapseGuard, "reasons", lambda self, result: next(verdicts))
    run = replace(config(build, tmp_path / "run", init=str(tmp_path / "base" / "final")), stage="1-2",
                  epochs=3, max_steps=0, listen_clips=2, lr=1e-2)
    result = train(run)
    assert result["collapsed"] == ["scripted collapse"] and result["final_from_epoch"] == 0
    assert result["steps"] < first["steps"] * 3  # stopped after the first epoch, not the third
    curve = [json.loads(line) for line in (tmp_path / "run" / "listening.jsonl").read_text().splitlines()]
    assert [c["collapsed"] for c in curve] == [[], ["scripted collapse"]]
    before = UnifiedSLM.from_pretrained(tmp_path / "base" / "final").state_dict()
    kept = UnifiedSLM.from_pretrained(tmp_path / "run" / "final").state_dict()
    assert all(torch.equal(before[k], kept[k]) for k in before)  # final/ is the epoch-0 model, not the trained one
    from safetensors import safe_open

    with safe_open(tmp_path / "run" / "best.safetensors", "pt") as kept_weights:  # the trainable part only
        assert kept_weights.metadata()["epoch"] == "0" and any("lora_" in k for k in kept_weights.keys())
        assert not any(k.startswith("encoder.") for k in kept_weights.keys())


def _two_ranks(*args: str) -> None:
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).with_name("train_ranks.py")), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_two_ranks_see_disjoint_shards_and_resume_exactly(build, tmp_path):
    _two_ranks("shards", str(build), str(tmp_path / "shards"))
    ranks = [json.loads((tmp_path / "shards" / f"rank{r}.json").read_text()) for r in (0, 1)]
    everything = {f"c{i}" for i in range(len(LINES))}
    for epoch in ("0", "1"):
        a, b = ranks[0][epoch], ranks[1][epoch]
        assert len(a) == len(b) == len(LINES) // 2 and not set(a) & set(b) and set(a) | set(b) == everything
    assert ranks[0]["0"] != ranks[0]["1"]  # a new order each epoch
    assert all(r["resumed_1"] == r["1"][1:] for r in ranks)  # skipping continues the same epoch's order

    _two_ranks("train", str(build), str(tmp_path / "whole"))
    _two_ranks("train", str(build), str(tmp_path / "cut"), "2")
    assert len(losses(tmp_path / "cut")) == 2
    _two_ranks("train", str(build), str(tmp_path / "cut"))
    assert json.loads((tmp_path / "whole" / "run.json").read_text())["processes"] == 2
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "whole"), abs=1e-4)
    assert len(losses(tmp_path / "whole")) == 5


def test_assistant_only_labels(build, tmp_path):
    from transformers import AutoTokenizer

    from emoslm.llm.hf import hf_checkpoint
    from emoslm.slm.model import UnifiedSLM

    tokenizer = AutoTokenizer.from_pretrained(hf_checkpoint("smollm2-135m-instruct"))
    batch = Collator(tokenizer, UnifiedSLM.speech_length, frame_cache(tmp_path))(load_examples(build, "1-2")[:2])
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    text = tokenizer.decode(labelled)
    assert text.startswith("The emotion I hear is anger") and "</think>" in text and "a lot." in text
    assert not (batch["speech_mask"] & (batch["labels"] != -100)).any()
    assert int(batch["speech_mask"][0].sum()) == UnifiedSLM.speech_length(int(batch["mel_frames"][0]))


def test_collator_gives_every_layer_and_the_tags_to_a_model_that_mixes_them(build, tmp_path):
    from transformers import AutoTokenizer

    from emoslm.emotions import TAGS
    from emoslm.llm.hf import hf_checkpoint
    from emoslm.slm.model import UnifiedSLM
    from emoslm.train.frames import FrameCache

    tokenizer = AutoTokenizer.from_pretrained(hf_checkpoint("smollm2-135m-instruct"))
    last = frame_cache(tmp_path)
    every = FrameCache(last.encoder, last.front_end, tmp_path, layers=True)
    examples = load_examples(build, "1-2")[:2]
    one = Collator(tokenizer, UnifiedSLM.speech_length, last)(examples)
    both = Collator(tokenizer, UnifiedSLM.speech_length, every, emotions=True)(examples)
    layers = last.encoder.config.encoder_layers + 1
    assert both["frames"].shape == (2, layers, *one["frames"].shape[1:]) and every.folder != last.folder
    assert torch.allclose(both["frames"][:, -1], one["frames"], atol=2e-2)  # float16 on disk
    assert torch.equal(both["speech_mask"], one["speech_mask"]) and "emotion_labels" not in one
    assert both["emotion_labels"].tolist() == [TAGS.index(e.emotion) for e in examples]

    from emoslm.audio import load_audio
    from emoslm.slm.listen import prosody_size, prosody_vector
    from emoslm.train.frames import ProsodyCache

    heard = Collator(tokenizer, UnifiedSLM.speech_length, last, prosody=ProsodyCache(tmp_path))(examples)
    assert heard["prosody"].shape == (2, prosody_size()) and "prosody" not in one
    assert torch.allclose(heard["prosody"][1], prosody_vector(load_audio(examples[1].audio)))


@pytest.mark.slow
def test_stage_1_1_trains_the_layer_mix_and_the_emotion_head(build, tmp_path):
    from emoslm.emotions import TAGS
    from emoslm.slm.model import UnifiedSLM

    result = train(config(build, tmp_path / "mix", encoder_mix=True, emotion_head=True))
    assert result["steps"] == 4 and result["held_out_loss"] > 0
    logged = [json.loads(line) for line in (tmp_path / "mix" / "log.jsonl").read_text().splitlines()]
    assert all(r["emotion_loss"] > 0 for r in logged)
    model = UnifiedSLM.from_pretrained(tmp_path / "mix" / "final")
    assert model.layer_mix is not None and model.emotion_head is not None
    assert not torch.allclose(model.layer_mix.logits, torch.zeros_like(model.layer_mix.logits))  # it learned

    heard = train(config(build, tmp_path / "prosody", emotion_head=True, emotion_prosody=True, inject_emotion=True))
    assert heard["steps"] == 4
    model = UnifiedSLM.from_pretrained(tmp_path / "prosody" / "final")
    head = model.emotion_head
    assert head.prosody_dim and model.injects_emotion
    assert not torch.allclose(head.prosody_mean, torch.zeros_like(head.prosody_mean))  # the training clips' statistics
    assert not torch.allclose(head.prosody_scale, torch.ones_like(head.prosody_scale))  # travelled with the checkpoint

    from emoslm.eval.hearing import evaluate

    result = evaluate(tmp_path / "prosody" / "final", tmp_path / "hearing", per_set=2, encoder_head=False,
                      think_budget=6, max_new_tokens=4)
    assert list(result["sets"]) == ["test", "same", "conflict", "chitchat"] and result["model"]["injects_emotion"]
    rows = json.loads((tmp_path / "hearing" / "hearing-think.json").read_text())["rows"]
    for name, clips in rows.items():
        assert len(clips) == 2 and all(r["think"].startswith("The user speaks with") for r in clips)
        hits = sum(r["think_tag"] == r["acted"] for r in clips) / 2
        assert result["sets"][name]["think"] == hits and all(r["think_tag"] in TAGS for r in clips)
    assert (tmp_path / "hearing" / "hearing-think.png").exists()
    assert "same sentence" in (tmp_path / "hearing" / "hearing-think.md").read_text()


def test_bad_inputs_are_clear(build, tmp_path):
    with pytest.raises(DataError, match="not an IEAT build"):
        load_examples(tmp_path, "1-1")
    (tmp_path / "bad").mkdir()
    with pytest.raises(EmoslmError, match="not a UnifiedSLM checkpoint"):
        train(config(build, tmp_path / "run", init=str(tmp_path / "bad")))
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "emoslm_unified_slm", "llm_config": {}}')
    with pytest.raises(EmoslmError, match="cannot load the checkpoint"):
        train(config(build, tmp_path / "run", init=str(tmp_path / "bad")))


def test_balanced_sampler_draws_the_target_shares_through_accelerate(tmp_path):
    from collections import Counter

    from emoslm.train.data import Example
    from emoslm.train.loop import accelerator_for, epoch_batches, make_loader

    examples = [Example(f"n{i}", f"n{i}", Path("x.wav"), "t", emotion="neutral") for i in range(90)]
    examples += [Example(f"s{i}", f"s{i}", Path("x.wav"), "t", emotion="sad") for i in range(10)]
    cfg = TrainConfig(stage="1-2", data="", out=str(tmp_path), batch_size=10, balance={"neutral": 0.5, "sad": 0.5})
    accelerator = accelerator_for(cfg, tmp_path)
    loader = make_loader(examples, lambda batch: {"tags": [e.emotion for e in batch]}, cfg, accelerator)
    epochs = [[t for b in epoch_batches(loader, accelerator, e) for t in b["tags"]] for e in range(8)]
    drawn = Counter(t for epoch in epochs for t in epoch)
    assert 0.4 < drawn["sad"] / sum(drawn.values()) < 0.6  # 10 % of the data, half of what is trained on
    assert epochs[0] == [t for b in epoch_batches(loader, accelerator, 0) for t in b["tags"]]  # seeded per epoch
    assert epochs[0] != epochs[1]
    with pytest.raises(DataError, match="none of the tags"):
        make_loader(examples, lambda b: b, replace(cfg, balance={"anger": 1.0}), accelerator)


def test_length_batches_through_accelerate_pad_less_and_reshuffle_each_epoch(tmp_path):
    from emoslm.train.data import Example
    from emoslm.train.loop import accelerator_for, epoch_batches, make_loader

    examples = [Example(f"e{i}", f"e{i}", Path("x.wav"), "t") for i in range(203)]
    lengths = {e.id: 40 + (i * 37) % 300 for i, e in enumerate(examples)}

    class Rows:  # the collator's two faces the loader uses: a row's length, and the batch
        def length(self, example):
            return lengths[example.id]

        def __call__(self, batch):
            return {"ids": [e.id for e in batch]}

    cfg = TrainConfig(stage="1-2", data="", out=str(tmp_path), batch_size=8)
    accelerator = accelerator_for(cfg, tmp_path)
    loader = make_loader(examples, Rows(), cfg, accelerator)
    epochs = [[b["ids"] for b in epoch_batches(loader, accelerator, e)] for e in range(2)]
    assert all(sorted(i for b in epoch for i in b) == sorted(lengths) for epoch in epochs)  # each once per epoch
    assert len(epochs[0]) == len(loader) and epochs[0] != epochs[1]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in epochs[0])
    assert padded < 0.8 * sum(8 * max(lengths[f"e{i}"] for i in range(k, min(k + 8, 203))) for k in range(0, 203, 8))
    resumed = [b["ids"] for b in epoch_batches(loader, accelerator, 1, skip=5)]
    assert resumed == epochs[1][5:]  # a resumed epoch goes on where the checkpoint was


def test_collator_length_is_its_row_s_width(build, tmp_path):
    from transformers import AutoTokenizer

    from emoslm.llm.hf import hf_checkpoint
    from emoslm.slm.model import UnifiedSLM

    tokenizer = AutoTokenizer.from_pretrained(hf_checkpoint("smollm2-135m-instruct"))
    collate = Collator(tokenizer, UnifiedSLM.speech_length, frame_cache(tmp_path))
    for example in load_examples(build, "1-2")[:3]:
        assert collate.length(example) == collate([example])["input_ids"].shape[1]


def test_slm_precision_uses_native_bf16_only_where_the_cpu_has_it():
    from emoslm.train.loop import slm_precision

    if torch.cuda.is_available():
        pytest.skip("the CPU rule applies without a GPU")
    assert slm_precision("auto", {"avx2", "avx512f", "avx512_bf16"}) == "bf16"
    assert slm_precision("auto", {"avx2", "avx512f"}) == "no"  # emulated bf16 is slower
    assert slm_precision("auto", {"avx512_bf16", "amx_tile", "amx_bf16"}) == "no"  # issue 31's AMX VMs
    assert slm_precision("no", {"avx512_bf16"}) == "no" and slm_precision("bf16", set()) == "bf16"


def test_held_out_by_voice_and_by_text(build, tmp_path):
    from emoslm.train.data import split, voices_by_key

    voiced = tmp_path / "voiced"
    voiced.mkdir()
    for name in ("recipe.json", "stage1_2.jsonl", "multiturn.jsonl"):
        (voiced / name).write_text((build / name).read_text())
    rows = [json.loads(line) for line in (build / "stage1_1.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        row["provenance"] = {"voiced_by": "kokoro:jf_alpha" if i % 3 == 0 else "piper"}
    (voiced / "stage1_1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert voices_by_key(voiced)["c0"] == "kokoro:jf_alpha"
    examples = load_examples(voiced, "1-2")  # the voice comes from stage 1-1's provenance, by source item
    train_set, held = split(examples, 0.0, 0, ["kokoro:jf_alpha"])
    assert {e.key for e in held} == {"c0", "c3"} and all(e.voice == "piper" for e in train_set)
    _, by_text = split(examples, 0.5, 0, ["kokoro:jf_alpha"])
    assert {e.key for e in by_text} > {"c0", "c3"}  # texts held out on top of the voice


def test_collapse_guard_reads_the_replies_not_the_loss():
    from emoslm.train.listening import CollapseGuard, distinct_2

    varied = ["I am so sorry about the rain today.", "That sounds like a wonderful surprise!", "Tell me more."]
    assert distinct_2(varied) == 1.0
    assert distinct_2(["9 9 9 9 9 9", "9 9 9 9"]) == pytest.approx(1 / 8, abs=1e-4)
    guard = CollapseGuard(min_distinct_2=0.3, max_repeats_think=0.2, min_relevance_share=0.5)
    assert guard.reasons({"distinct_2": 0.9, "reply_repeats_think": 0.0, "reply_relevance": 0.4}) == []
    assert guard.best_relevance == 0.4
    assert guard.reasons({"distinct_2": 0.9, "reply_repeats_think": 0.0, "reply_relevance": 0.3}) == []
    assert guard.best_relevance == 0.4  # the best so far, not the latest
    why = guard.reasons({"distinct_2": 0.1, "reply_repeats_think": 0.5, "reply_relevance": 0.1})
    assert len(why) == 3 and "distinct-2" in why[0] and "repeat the think" in why[1] and "relevance" in why[2]


def test_listening_scores_and_plots(tmp_path):
    from emoslm.train.listening import plot_curve, repeats_think, summarise

    assert repeats_think("The emotion I hear is sad. The most likely reason is the rain.",
                         "I hear you. The most likely reason is the rain today.")
    assert not repeats_think("The emotion I hear is sad. The most likely reason is the rain.", "I am sorry.")
    rows = [{"label": "sad", "acted": "sad", "think_tag": "sad", "repeats": False},
            {"label": "sad", "acted": "anger", "think_tag": "neutral", "repeats": True},
            {"label": "happy", "acted": "happy", "think_tag": "sad", "repeats": False},
            {"label": "sad", "acted": "", "think_tag": "sad", "repeats": False}]
    result = summarise(rows)
    assert result["think_vs_label"] == 0.5 and result["think_vs_acted"] == round(1 / 3, 4)
    assert result["recogniser_vs_acted"] == round(2 / 3, 4) and result["commonest_label"] == 0.75
    assert result["reply_repeats_think"] == 0.25 and result["confusion"]["sad"] == {"sad": 2, "neutral": 1}
    run = tmp_path / "run"
    run.mkdir()
    (run / "listening.jsonl").write_text("".join(json.dumps({"epoch": e, "step": e, **{k: v for k, v in result.items()
                                                                                    if k != "rows"}}) + "\n"
                                                 for e in range(3)))
    assert [p.name for p in plot_curve(run, tmp_path / "out")] == ["learning-curve.png", "confusion.png"]


def test_lora_learns_at_its_own_rate_and_the_best_check_by_relevance_is_kept(tmp_path):
    from emoslm.slm.generate import from_parts
    from emoslm.train.loop import Listening, param_groups
    from emoslm.train.stages import apply_stage

    model, _ = from_parts(adapter_dim=64)
    trainable = apply_stage(model, "1-2", lora_r=4, lora_alpha=8)
    cfg = TrainConfig(stage="1-2", data="unused", out=str(tmp_path), lr=1e-4, lora_lr=2e-5)
    groups = param_groups(model, trainable, cfg)
    lora = [g for g in groups if g.get("lr") == 2e-5]
    assert len(groups) == 2 and len(lora) == 1 and lora[0]["params"]
    named = {id(p): n for n, p in model.named_parameters()}
    assert all("lora_" in named[id(p)] for p in lora[0]["params"])
    assert not any("lora_" in named[id(p)] for p in groups[0]["params"]) and groups[0]["params"]
    assert len(param_groups(model, trainable, replace(cfg, lora_lr=0.0))) == 1  # 0: one rate for all

    listening = Listening(cfg, tmp_path, [], tokenizer=None)
    for relevance, kept in ((0.2, True), (0.3, True), (0.25, False), (0.3, True)):
        assert listening.better({"reply_relevance": relevance}) is kept
        if kept:
            listening.best_score = relevance
    listening.collapsed = ["distinct-2 0.1 < 0.3"]
    assert not listening.better({"reply_relevance": 0.9})  # a collapsed check is never kept
