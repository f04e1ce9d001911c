"""Speak: the unified model's speech branch on the real SmolLM2 + Whisper tiny.en — the copied top-k layers,
multi-token grouping, the think never voiced, lock-step streaming equal to the blocking call and to a
teacher-forced forward, stage 2 training that learns and resumes exactly, and a saved stage 2 model that
reloads and speaks through the streaming unit decoder.

The speech tokenizer and unit decoder here are untrained (random weights, 32 codes): these tests are about
the branch's machinery, which does not depend on what the units mean (`test_units.py` trains those)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from emoslm.slm.speak import SpeechSpec, UnitPiece, UnitWriter, group_units  # noqa: E402
from emoslm.train.loop import TrainConfig, train  # noqa: E402
from tests.test_train import write_build  # noqa: E402

CODES = 32


@pytest.fixture(scope="module")
def unit_decoder(tmp_path_factory) -> Path:
    """A random 32-code tokenizer (on Whisper base) and a small random decoder that names it."""
    from emoslm.speech.units.decoder import DecoderConfig, UnitDecoder
    from emoslm.speech.units.tokenizer import SpeechTokenizer, TokenizerConfig

    root = tmp_path_factory.mktemp("units")
    torch.manual_seed(0)
    SpeechTokenizer(TokenizerConfig(codes=CODES, code_dim=16)).save_pretrained(root / "tokenizer" / "final")
    config = DecoderConfig(codes=CODES, channels=32, unit_blocks=1, mel_blocks=1, default_speaker="test",
                           tokenizer=str(root / "tokenizer" / "final"))
    UnitDecoder(config, speakers={"test": np.zeros(80, np.float32)}).save_pretrained(root / "decoder" / "final")
    return root / "decoder" / "final"


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    return write_build(tmp_path_factory.mktemp("build"), spoken_replies=True)


@pytest.fixture(scope="module", params=["tiny", pytest.param("smollm2", marks=pytest.mark.slow)])
def speaking(request):
    """A 2-layer speech branch on the tiny random model (fast tier, golden outputs) or on SmolLM2 + Whisper
    tiny.en with a fresh adapter (slow tier): the same machinery at two sizes."""
    from emoslm.slm.generate import from_parts
    from tests.tiny import tiny_slm

    if request.param == "tiny":
        model, tokenizer = tiny_slm()
    else:
        torch.manual_seed(0)
        model, tokenizer = from_parts(adapter_dim=64)
    torch.manual_seed(0)
    model.add_speech_branch(SpeechSpec(units=CODES, layers=2, group=4))
    model.size = request.param  # which golden outputs apply
    return model.eval(), tokenizer


def test_units_are_grouped_for_multi_token_prediction():
    spec = SpeechSpec(units=10, group=4)
    inputs, targets = group_units([1, 2, 3, 4, 5, 6, 7], spec)
    assert targets.tolist() == [[1, 2, 3, 4], [5, 6, 7, spec.eos]]  # the units, then end of speech
    assert inputs.tolist() == [[spec.bos] * 4, [1, 2, 3, 4]]  # step i reads group i-1
    _, exact = group_units([1, 2, 3, 4], spec)
    assert exact.tolist() == [[1, 2, 3, 4], [spec.eos, -100, -100, -100]]  # padding is ignored by the loss
    _, cut = group_units(list(range(9)), spec, max_steps=2)
    assert cut.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]  # cropped speech has no end marker


def test_branch_is_a_copy_of_the_top_layers_and_outputs_are_typed(speaking, tmp_path):
    model, tokenizer = speaking
    branch, layers = model.speech_branch, model.llm.model.layers
    assert model.speech_layer == len(layers) - 2
    for mine, theirs in zip(branch.body.layers, layers[-2:], strict=True):
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    assert torch.equal(branch.body.norm.weight, model.llm.model.norm.weight)
    assert len(branch.heads) == 4 and branch.heads[0].out_features == CODES + 2
    inputs, targets = group_units([3, 4, 5, 6, 7], model.speech_spec)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        out = model(ids, labels=ids, unit_inputs=torch.from_numpy(inputs)[None],
                    unit_targets=torch.from_numpy(targets)[None], unit_positions=torch.tensor([[4, 5]]))
    assert out.unit_logits.shape == (1, 2, 4, CODES + 2) and out.logits.shape[:2] == (1, 6)
    assert float(out.loss) == pytest.approx(float(out.text_loss) + float(out.unit_loss), rel=1e-5)
    model.save_pretrained(tmp_path / "m")
    from emoslm.slm.model import UnifiedSLM

    again = UnifiedSLM.from_pretrained(tmp_path / "m")
    assert again.speech_spec == model.speech_spec
    assert torch.equal(again.speech_branch.heads[3].weight, branch.heads[3].weight)


def test_incremental_unit_writing_equals_the_teacher_forced_branch(speaking):
    model, _ = speaking
    branch = model.speech_branch
    torch.manual_seed(1)
    states = torch.randn(6, model.config.llm().hidden_size) * 3
    writer = UnitWriter(branch, max_steps=6)
    groups = []
    for state in states:
        if writer.done:  # a random branch may write end of speech early: compare the steps it took
            break
        writer.step(state[None])
        groups.append(writer.previous.view(-1).tolist())
    assert len(groups) >= 2
    previous = torch.tensor([[model.speech_spec.bos] * 4] + groups[:-1])[None]
    with torch.no_grad():
        logits, _ = branch(branch.inputs(states[None, :len(groups)], previous))
    logits[..., model.speech_spec.bos] = float("-inf")
    assert logits.argmax(-1)[0].tolist() == groups  # the KV-cached steps = one causal forward


def _clip() -> torch.Tensor:
    from emoslm.speech.mel_front_end import MelFrontEnd
    from emoslm.speech.prosody import acted
    from emoslm.speech.tts import EspeakTTS

    audio = EspeakTTS("en-us+f2").synthesize("I lost my keys again today.", acted("sad")).at(16_000)
    return MelFrontEnd.for_mels(80).tensor(audio)


def test_speech_follows_the_think_in_lock_step_and_streaming_equals_blocking(speaking):
    from emoslm.slm.generate import generate, generate_stream
    from emoslm.streams import drain

    model, tokenizer = speaking
    mel = _clip()
    stream = generate_stream(model, tokenizer, mel, think_budget=8, max_new_tokens=12, speak=True,
                             max_unit_steps=20)
    pieces = []
    result = None
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as end:
            result = end.value
            break
    kinds = [p.part for p in pieces]
    assert "think" in kinds and "units" in kinds
    assert max(i for i, k in enumerate(kinds) if k == "think") < kinds.index("units")  # the think is never voiced
    assert kinds.index("reply") < kinds.index("units")  # a step follows the reply token that drives it
    units = [c for p in pieces if isinstance(p, UnitPiece) for c in p.codes]
    assert units == result.units and all(0 <= c < CODES for c in units)
    steps = sum(isinstance(p, UnitPiece) for p in pieces)
    assert steps == 20 or len(units) < 4 * steps  # up to the step budget, or the branch wrote end of speech
    blocking = generate(model, tokenizer, mel, think_budget=8, max_new_tokens=12, speak=True)
    assert blocking.reply == result.reply and blocking.think == result.think
    assert blocking.units[: len(units)] == units[: len(blocking.units)]
    plain = drain(generate_stream(model, tokenizer, mel, think_budget=8, max_new_tokens=12))
    assert plain.reply == result.reply and plain.units == []  # speaking does not change the text
    if model.size == "tiny":  # committed: a change to the prompt, the bridge or the branch shows here
        from tests.tiny import golden

        mine = {"think": result.think, "reply": result.reply, "units": units}
        assert mine == golden("tiny-speak-lock-step", mine)


def config(build: Path, out: Path, decoder: Path, **kw) -> TrainConfig:
    return TrainConfig(stage="2", data=str(build), out=str(out), adapter_dim=64, batch_size=2, max_steps=6,
                       save_every=2, held_out=0.2, lr=3e-3, unit_decoder=str(decoder), speech_layers=2,
                       max_unit_steps=40, **kw)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_stage_2_learns_units_resumes_exactly_and_the_saved_model_speaks(build, unit_decoder, tmp_path):
    whole = train(config(build, tmp_path / "whole", unit_decoder))
    assert whole["steps"] == 6 and whole["held_out_unit_loss"] > 0
    log = rows(tmp_path / "whole")
    # the text path is frozen (no LoRA): its states are computed once and only the branch's loss is trained
    assert "unit_loss" in log[0] and "text_loss" not in log[0] and log[0]["loss"] == pytest.approx(log[0]["unit_loss"])
    assert np.mean([r["unit_loss"] for r in log[-2:]]) < np.mean([r["unit_loss"] for r in log[:2]])  # it learns

    assert train(config(build, tmp_path / "cut", unit_decoder), stop_after=3) == {"stopped_at": 3}
    train(config(build, tmp_path / "cut", unit_decoder))
    assert [r["loss"] for r in rows(tmp_path / "cut")] == pytest.approx([r["loss"] for r in log], abs=1e-4)

    from emoslm.agents.events import AudioChunk, TextDelta, ThinkDelta
    from emoslm.agents.slm import SLMAgent
    from emoslm.audio import load_audio

    final = tmp_path / "whole" / "final"
    agent = SLMAgent(final, think_budget=6, max_new_tokens=8)
    assert agent.own_voice and agent.model.speech_spec.decoder == str(unit_decoder.resolve())
    assert agent.text is not None and agent.text.hidden_layer == agent.model.speech_layer  # llama.cpp writes
    clip = load_audio(build / "audio" / "clips" / "c2.wav")
    events = list(agent.stream([], clip, "en"))
    kinds = [type(e) for e in events]
    assert AudioChunk in kinds and TextDelta in kinds
    last_think = max(i for i, k in enumerate(kinds) if k is ThinkDelta) if ThinkDelta in kinds else -1
    assert last_think < kinds.index(AudioChunk)
    reply = events[-1].reply
    assert reply.audio is not None and reply.audio.size % 320 == 0  # whole units of 20 ms
    assert "first_audio" in reply.timings and "unit_decoder" in reply.timings
    # the audio streamed chunk by chunk is the offline decoding of the same units (stated tolerance)
    from emoslm.audio import trim_to_speech
    from emoslm.slm.generate import generate
    from emoslm.speech.prosody import reply as reply_prosody
    from emoslm.think import tag_in_think

    units = generate(agent.model, agent.tokenizer, agent.mels.tensor(trim_to_speech(clip, pad=0.3)),
                     think_budget=6, max_new_tokens=8, speak=True, text=agent.text).units
    offline = agent.own("en").decoder.decode(units, None, reply_prosody(tag_in_think(reply.think) or "neutral"))
    assert len(offline) == len(reply.audio)
    snr = 10 * np.log10(np.sum(offline ** 2) / max(1e-12, np.sum((offline - reply.audio) ** 2)))
    assert snr > 15.0, snr


def test_the_llama_cpp_text_stream_speaks_what_the_torch_stream_speaks(speaking):
    """The branch fed by llama.cpp's layer-n states (exact f32 export) writes the torch path's units."""
    from emoslm.slm.generate import generate
    from emoslm.slm.llama_text import llama_text

    model, tokenizer = speaking
    mel = _clip()
    text = llama_text(model, "f32")
    try:
        assert text.hidden_layer == model.speech_layer
        fast = generate(model, tokenizer, mel, think_budget=8, max_new_tokens=12, speak=True, text=text)
    finally:
        text.close()
    slow = generate(model, tokenizer, mel, think_budget=8, max_new_tokens=12, speak=True)
    assert (fast.think, fast.reply) == (slow.think, slow.reply) and fast.units
    assert len(fast.units) == len(slow.units)
    same = sum(a == b for a, b in zip(fast.units, slow.units, strict=True))
    assert same >= 0.95 * len(slow.units)  # float sums in another order


def test_stage_2_errors_are_clear(build, unit_decoder, tmp_path):
    from emoslm.errors import DataError, EmoslmError

    with pytest.raises(EmoslmError, match="unit_decoder"):
        train(replace(config(build, tmp_path / "x", unit_decoder), unit_decoder=str(tmp_path / "nowhere")))
    silent = write_build(tmp_path / "silent")  # replies never spoken
    with pytest.raises(DataError, match="stage2.synthesize"):
        train(config(silent, tmp_path / "y", unit_decoder))
