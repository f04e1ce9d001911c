"""Phoneme units (issue 34): Kokoro's symbols as the embedded default's own-voice units.

Real parts: misaki/hibari G2P, Kokoro's packaged ONNX model, Whisper (tiny.en for English, base for
Mandarin), SmolLM2's tokenizer for the lock-step layout, and the tiny unified model for the writer and stage 2.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emoslm.slm.speak import SpeechSpec, UnitWriter, text_steps  # noqa: E402
from emoslm.speech.units.phonemes import (  # noqa: E402
    STYLES,
    KokoroUnitDecoder,
    PhonemeVocab,
    phonemize,
    text_units,
    word_phonemes,
)
from emoslm.textnorm import edit_distance, tokens  # noqa: E402

REPLY = "I'm so sorry your day went badly, that sounds exhausting. Would a short walk help you unwind tonight?"


@pytest.fixture(scope="module")
def vocab() -> PhonemeVocab:
    return PhonemeVocab.kokoro()


@pytest.fixture(scope="module")
def decoder() -> KokoroUnitDecoder:
    return KokoroUnitDecoder()


def test_codes_hold_kokoros_symbols_then_styles_then_hold(vocab):
    assert vocab.size == len(vocab.symbols) + len(STYLES) + 1 and vocab.hold == vocab.size - 1
    assert " " in vocab.symbols and "." in vocab.symbols
    units = text_units("Hello there, friend.", "sad", vocab)
    style, phonemes = vocab.decode(units.codes)
    assert style == "sad" and units.codes[0] == vocab.style("sad")
    assert phonemes == " ".join(p for _, _, p in word_phonemes("Hello there, friend."))
    assert vocab.decode([*units.codes, vocab.hold, vocab.size + 1]) == (style, phonemes)  # markers are skipped


def test_words_keep_their_characters_and_reduced_forms():
    words = word_phonemes("I want to go home.")
    assert ["I", "want", "to", "go", "home."] == ["I want to go home."[a:b] for a, b, _ in words]
    assert " ".join(p for _, _, p in words) == phonemize("I want to go home.")  # said as a whole, split at blanks
    zh = word_phonemes("你好，我很难过。")
    assert len(zh) == 2 and all(p for _, _, p in zh)


@pytest.mark.parametrize("lang,text,asr,limit", [
    ("en", REPLY, "whisper-tiny.en", 0.10),
    ("zh", "听到你今天这么累，我真的很心疼。要不要早点休息一下？", "whisper-base", 0.20),
])
def test_text_to_units_to_kokoro_keeps_the_words(decoder, lang, text, asr, limit):
    """The round trip the own voice relies on: text → units → Kokoro → Whisper hears the same words."""
    from emoslm.perception.asr import FasterWhisperASR
    from emoslm.textnorm import simplified

    audio = decoder.decode(text_units(text, "neutral"))
    assert audio.dtype == np.float32 and 1.0 < len(audio) / decoder.sample_rate < 15.0
    heard = FasterWhisperASR(asr).transcribe(audio, lang).text
    ref, hyp = (list(text), list(simplified(heard))) if lang == "zh" else (tokens(text), tokens(heard))
    if lang == "zh":
        keep = [c for c in ref if "\u4e00" <= c <= "\u9fff"]
        ref, hyp = keep, [c for c in hyp if "\u4e00" <= c <= "\u9fff"]
    assert edit_distance(ref, hyp) / len(ref) <= limit, heard


def test_the_style_code_chooses_the_reply_prosody(decoder, vocab):
    """A sad user's reply is slower and softer (the teacher's reply table), chosen by the units themselves."""
    sad = decoder.decode(text_units("That must be really hard for you.", "sad", vocab))
    happy = decoder.decode(text_units("That must be really hard for you.", "happy", vocab))
    assert len(sad) > 1.1 * len(happy)
    assert np.sqrt(np.mean(sad ** 2)) < np.sqrt(np.mean(happy ** 2))


def test_streaming_renders_the_first_clause_before_the_rest_is_written(decoder, vocab):
    units = text_units(REPLY, "neutral", vocab).codes
    streamer = decoder.streamer()
    fed, first = 0, None
    chunks = []
    for start in range(0, len(units), 3):  # as a branch writes them, a few per step
        ready = streamer.feed(units[start:start + 3])
        fed = start + 3
        if ready and first is None:
            first = fed
        chunks += ready
    chunks += streamer.flush()
    assert first is not None and first < len(units) // 2  # the first clause spoke long before the end
    assert len(chunks) >= 2
    offline = decoder.decode(units)
    assert abs(sum(len(c) for c in chunks) - len(offline)) < 0.2 * len(offline)


def _spec(vocab: PhonemeVocab, group: int = 4) -> SpeechSpec:
    return SpeechSpec(units=vocab.size, layers=2, group=group, hold=vocab.hold, decoder="kokoro")


def test_lock_step_layout_says_each_word_after_its_tokens_and_stops(vocab):
    from emoslm.train.frames import PhonemeTargets
    from tests.tiny import smollm_tokenizer

    tokenizer, spec = smollm_tokenizer(), _spec(vocab)
    offsets = tokenizer(REPLY, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    starts = [a for a, _ in offsets]
    words = PhonemeTargets().words(REPLY)
    inputs, targets, index = text_steps(words, starts, spec, [vocab.style("sad")])
    flat = [int(c) for c in targets.reshape(-1) if c != -100]
    said = [c for c in flat if c not in (vocab.hold, spec.eos)]
    assert said == [vocab.style("sad")] + [c for _, _, codes in words for c in codes]  # everything, in order
    assert flat[-1] == spec.eos and flat.count(spec.eos) == 1
    assert index[-1] == len(starts) and (np.diff(index) >= 0).all()  # steps past the text read the end token
    for row in targets:  # after a hold or EOS, the group's other heads learn nothing
        marks = [k for k, c in enumerate(row) if c in (vocab.hold, spec.eos)]
        assert not marks or all(c == -100 for c in row[marks[0] + 1:])
    ends, total = [], 1  # after the style code: where each word's codes end in the spoken sequence
    for _, _, codes in words:
        total += len(codes)
        ends.append(total)
    emitted = 0  # a word's codes are all out only after the token that finishes it has been read
    for step, row in enumerate(targets):
        emitted += sum(1 for c in row if c not in (-100, vocab.hold, spec.eos))
        for (_, stop, _), end in zip(words, ends, strict=True):
            if end <= emitted:
                assert step > max(j for j, s in enumerate(starts) if s < stop)
    assert (inputs[0] == spec.bos).all()
    assert (inputs[1:] == np.where(targets[:-1] == -100, vocab.hold, targets[:-1])).all()


class _Fixed(torch.nn.Module):
    """A head that always chooses one code (the writer's rules are tested apart from learning)."""

    def __init__(self, code: int, vocab: int) -> None:
        super().__init__()
        self.code, self.vocab = code, vocab

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((*x.shape[:-1], self.vocab), -10.0)
        out[..., self.code] = 10.0
        return out


def test_the_writer_stops_a_step_at_hold_and_the_speech_at_eos(vocab):
    from emoslm.slm.speak import SpeechBranch
    from tests.tiny import tiny_llama_config

    spec = _spec(vocab)
    branch = SpeechBranch(tiny_llama_config(), spec).eval()
    a, b = 5, 9
    branch.heads = torch.nn.ModuleList(_Fixed(c, spec.vocab) for c in (a, b, vocab.hold, a))
    writer = UnitWriter(branch)
    hidden = torch.zeros(1, tiny_llama_config().hidden_size)
    assert writer.step(hidden) == [a, b] and not writer.done  # the head after hold is ignored
    branch.heads = torch.nn.ModuleList(_Fixed(c, spec.vocab) for c in (b, spec.eos, a, a))
    assert writer.step(hidden) == [b] and writer.done
    assert writer.step(hidden) == []


def test_stage_2_on_phoneme_units_needs_no_spoken_replies_learns_and_stops(tmp_path, vocab):
    """Stage 2 with ``unit_decoder: kokoro`` on a build whose replies were never spoken: the unit loss falls,
    the checkpoint names its units, and the trained branch ends its speech with EOS in lock-step generation."""
    from emoslm.slm.generate import generate
    from emoslm.slm.model import UnifiedSLM
    from emoslm.train.loop import TrainConfig, train
    from tests.test_train import write_build
    from tests.tiny import tiny_slm

    build = write_build(tmp_path / "build")  # replies as text only
    model, tokenizer = tiny_slm()
    model.save_pretrained(tmp_path / "init")
    tokenizer.save_pretrained(tmp_path / "init")
    config = TrainConfig(stage="2", data=str(build), out=str(tmp_path / "run"), init=str(tmp_path / "init"),
                         batch_size=4, max_steps=30, save_every=30, held_out=0.2, lr=3e-3, unit_decoder="kokoro",
                         speech_layers=2, speech_group=4, max_unit_steps=60)
    summary = train(config)
    log = [__import__("json").loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert np.mean([r["unit_loss"] for r in log[-3:]]) < 0.5 * np.mean([r["unit_loss"] for r in log[:3]])
    assert summary["held_out_unit_loss"] is not None
    final = UnifiedSLM.from_pretrained(tmp_path / "run" / "final")
    spec = final.speech_spec
    assert (spec.units, spec.hold, spec.decoder) == (vocab.size, vocab.hold, "kokoro:jm_kumo")
    mel = torch.zeros(80, 200)
    result = generate(final, tokenizer, mel, think_budget=4, max_new_tokens=12, speak=True)
    assert result.units and len(result.units) < 60 * spec.group  # stopped by EOS, not by the step cap
    style, phonemes = vocab.decode(result.units)
    assert style in STYLES and phonemes.strip()


def test_speech_data_builds_stage_2_samples_from_the_corpus(tmp_path):
    """`emoslm data speech`: voiced corpus turns (held-out texts by the held-out voice), the teacher's and the
    model's own replies, text-only chitchat samples; stage 2 reads it without spoken replies."""
    from emoslm.train.data import load_examples, voices_by_key
    from emoslm.train.speech_data import HELD_VOICE, build, held
    from tests.tiny import tiny_slm

    model, tokenizer = tiny_slm()
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    counts = build(tmp_path / "ckpt", tmp_path / "data", limit=12, think_budget=4, max_new_tokens=6, extra=5)
    assert counts["turns"] == 12 and counts["own_replies"] == 12 and counts["chitchat_replies"] == 5
    examples = load_examples(tmp_path / "data", "2", reply_audio=False)
    assert len(examples) == counts["samples"]
    assert all(e.audio.exists() for e in examples if e.user_text is None)
    voices = voices_by_key(tmp_path / "data")
    assert all((voices[k] == HELD_VOICE) == held(k) for k in voices)
    teacher = [e for e in examples if e.id.endswith("#teacher")]
    assert len(teacher) == 12 and all(e.emotion and "</think>" in e.target for e in teacher)
    chat = [e for e in examples if e.id.endswith("#chitchat")]
    assert len(chat) == 5 and all(e.audio is None and e.user_text and e.emotion == "neutral" for e in chat)
    assert all(e.target.startswith("\n</think>\n\n") for e in chat)  # an empty think: neutral style
    again = build(tmp_path / "ckpt", tmp_path / "data", limit=12, think_budget=4, max_new_tokens=6, extra=5)
    assert again == counts  # resumes: nothing voiced or written twice
    from emoslm.train.loop import TrainConfig, train  # batches that mix clips and text-only rows train

    config = TrainConfig(stage="2", data=str(tmp_path / "data"), out=str(tmp_path / "run"), init=str(tmp_path / "ckpt"),
                         batch_size=6, max_steps=3, save_every=3, held_out=0.2, lr=3e-3, unit_decoder="kokoro",
                         speech_layers=2, max_unit_steps=60)
    assert train(config)["steps"] == 3


def test_stage_2_takes_a_cosyvoice_folder_as_its_units(tmp_path):
    """The GPU configuration: ``unit_decoder: COSYVOICE_DIR`` trains the branch on the S3 tokenizer's units (a
    CosyVoice-shaped ONNX here: 4,096 codes at 50 Hz), cached by the tokenizer file alone."""
    pytest.importorskip("onnx")
    from emoslm.slm.model import UnifiedSLM
    from emoslm.train.loop import TrainConfig, train
    from tests.test_train import write_build
    from tests.tiny import fake_s3_tokenizer, tiny_slm

    fake_s3_tokenizer(tmp_path / "CosyVoice-300M")
    (tmp_path / "CosyVoice-300M" / "llm.pt").write_bytes(b"weights the cache key must not read")
    build = write_build(tmp_path / "build", spoken_replies=True)
    model, tokenizer = tiny_slm()
    model.save_pretrained(tmp_path / "init")
    tokenizer.save_pretrained(tmp_path / "init")
    config = TrainConfig(stage="2", data=str(build), out=str(tmp_path / "run"), init=str(tmp_path / "init"),
                         batch_size=2, max_steps=3, save_every=3, held_out=0.2, lr=3e-3,
                         unit_decoder=str(tmp_path / "CosyVoice-300M"), speech_layers=2, max_unit_steps=40)
    assert train(config)["steps"] == 3
    spec = UnifiedSLM.from_pretrained(tmp_path / "run" / "final").speech_spec
    assert (spec.units, spec.rate, spec.hold) == (4096, 50.0, -1)
    assert spec.decoder == str((tmp_path / "CosyVoice-300M").resolve())


def test_precomputed_text_states_equal_the_full_forward(vocab):
    """Stage 2's cached branch inputs (the forward stopped at layer n) are the full forward's layer-n states."""
    from tests.tiny import tiny_slm

    model, _ = tiny_slm()
    model.add_speech_branch(_spec(vocab))
    torch.manual_seed(1)
    ids = torch.randint(0, 1000, (2, 12))
    positions = torch.tensor([[3, 4, 5, 11], [0, 2, 2, 7]])
    with torch.inference_mode():
        full = model.llm(input_ids=ids, output_hidden_states=True).hidden_states
    cached = model.unit_text_states(input_ids=ids, unit_positions=positions)
    assert torch.allclose(cached, model.states_at(full, positions), atol=1e-6)
