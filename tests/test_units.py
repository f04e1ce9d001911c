"""Speech units on the real models: the Whisper decoder conversion, tokenizer and decoder training with
exact resume, encode/decode rates and shapes, streaming = offline, save/load, the unit voice, the k-means
baseline, the CosyVoice loader's messages and the CLI's errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emoslm.audio import load_audio, save_audio  # noqa: E402
from emoslm.errors import EmoslmError  # noqa: E402
from emoslm.speech.units.decoder import UnitDecoder, style_vector  # noqa: E402
from emoslm.speech.units.tokenizer import SpeechTokenizer, TokenizerConfig, Units  # noqa: E402
from emoslm.train.units import (  # noqa: E402
    PartConfig,
    SpeechClip,
    UnitsRecipe,
    train_decoder,
    train_kmeans,
    train_parts,
    train_tokenizer,
)

LINES = {"en": ["I can't believe you did that again.", "The weather is lovely today.",
                "Please leave me alone for a while.", "We finally won the match last night!",
                "Where did you put the keys?", "That smell is absolutely awful."],
         "zh": ["今天天气很好。", "我真的很难过。"]}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[SpeechClip]:
    """A few clips spoken by espeak-ng (fast, deterministic), the last English one held out."""
    from emoslm.speech.prosody import acted
    from emoslm.speech.tts import EspeakTTS

    root = tmp_path_factory.mktemp("unit-clips")
    out = []
    for lang, lines in LINES.items():
        tts = EspeakTTS("en-us" if lang == "en" else "cmn-latn-pinyin")
        for k, text in enumerate(lines):
            emotion = ("neutral", "anger", "sad")[k % 3]
            path = save_audio(root / f"{lang}{k}.wav", tts.synthesize(text, acted(emotion)).at(16_000))
            split = "test" if (lang, k) == ("en", 5) else "train"
            out.append(SpeechClip(f"{lang}{k}", path, text, lang, f"espeak-{lang}", split, emotion,
                                  tuple(float(x) for x in style_vector(acted(emotion)))))
    return out


def recipe(steps: int = 4, codes: int = 64) -> UnitsRecipe:
    part = dict(steps=steps, batch_size=3, save_every=2, log_every=1, lr=1e-3, mixed_precision="no")
    return UnitsRecipe(tokenizer=TokenizerConfig(codes=codes, code_dim=16),
                       parts={"tokenizer": PartConfig(stage="tokenizer", restart_every=2, **part),
                              "decoder": PartConfig(stage="decoder", crop_units=40, **part)})


@pytest.fixture(scope="module")
def trained(clips, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("units-run")
    train_tokenizer(recipe(), clips, run / "tokenizer")
    train_decoder(recipe(), clips, run / "tokenizer" / "final", run / "decoder")
    return run


def test_converted_whisper_decoder_reads_the_encoder_and_masks_padding(clips):
    from emoslm.speech.whisper_ct2 import WhisperText, decode_logits, load_whisper_decoder

    tokenizer = SpeechTokenizer(TokenizerConfig())
    decoder, text = load_whisper_decoder("whisper-base"), WhisperText("whisper-base")
    frames = tokenizer.frames(np.asarray(load_audio(clips[1].audio)))[None]
    ids = torch.tensor([text.ids(clips[1].text, "en")])
    with torch.no_grad():
        logits = decode_logits(decoder, ids[:, :-1], frames)
        plain = decoder(input_ids=ids[:, :-1], encoder_hidden_states=frames).last_hidden_state
        padded = torch.cat([frames, torch.randn(1, 30, frames.shape[2])], 1)
        mask = torch.zeros(1, padded.shape[1], dtype=torch.bool)
        mask[:, : frames.shape[1]] = True
        masked = decode_logits(decoder, ids[:, :-1], padded, mask)
        wrong = torch.tensor([text.ids(clips[3].text, "en")])
        loss_right = torch.nn.functional.cross_entropy(logits[0, 3:], ids[0, 4:])
        wrong_logits = decode_logits(decoder, wrong[:, :-1], frames)
        loss_wrong = torch.nn.functional.cross_entropy(wrong_logits[0, 3:], wrong[0, 4:])
    assert torch.allclose(logits, plain @ decoder.embed_tokens.weight.T, atol=1e-4)
    assert torch.allclose(logits, masked, atol=1e-3)  # padding frames are not attended to
    assert float(loss_right) < 2.0 and float(loss_wrong) > 2 * float(loss_right)  # it hears the clip's words


def test_tokenizer_resumes_exactly_and_encodes_at_its_rate(clips, trained, tmp_path):
    train_tokenizer(recipe(), clips, tmp_path / "tok", stop_after=2)
    assert (tmp_path / "tok" / "checkpoint" / "position.json").exists()
    train_tokenizer(recipe(), clips, tmp_path / "tok")
    whole = [json.loads(x) for x in (trained / "tokenizer" / "log.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (tmp_path / "tok" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in whole], abs=1e-4)
    assert {"codes_used", "perplexity", "active_codes", "held_out_text_loss"} <= set(whole[-1])

    tokenizer = SpeechTokenizer.from_pretrained(trained / "tokenizer" / "final")
    audio = load_audio(clips[0].audio)
    units = tokenizer.encode(audio)
    assert units.rate == 50.0 and units.codes.dtype == np.int64
    assert abs(len(units.codes) - len(audio) / 320) <= 1
    assert 0 <= units.codes.min() and units.codes.max() < 64
    tokenizer.save_pretrained(tmp_path / "copy")
    assert np.array_equal(SpeechTokenizer.from_pretrained(tmp_path / "copy").encode(audio).codes, units.codes)


def test_pooled_tokenizer_gives_25_hz_units():
    config = TokenizerConfig(codes=32, code_dim=8, pool=2)
    tokenizer = SpeechTokenizer(config)
    frames = torch.randn(101, 512)
    assert config.rate == 25.0 and len(tokenizer.encode_frames(frames)) == 50


def test_decoder_decodes_units_to_audio_and_streams_like_offline(clips, trained, tmp_path):
    decoder = UnitDecoder.from_pretrained(trained / "decoder" / "final")
    assert decoder.speakers and decoder.config.default_speaker in decoder.speakers
    codes = SpeechTokenizer.from_pretrained(trained / "tokenizer" / "final").encode(
        load_audio(clips[2].audio)).codes
    whole, spk, sty = streams_like_offline(decoder, codes)
    decoder.save_pretrained(tmp_path / "copy")
    again = UnitDecoder.from_pretrained(tmp_path / "copy")
    assert np.allclose(again.mel(codes, spk, sty), whole, atol=1e-4)
    with pytest.raises(EmoslmError, match="unknown speaker"):
        decoder.decode(codes, "nobody")


def test_random_decoder_streams_like_offline(tmp_path):
    """The streaming = offline equivalence on a tiny random decoder (fast tier; the trained one is slow tier)."""
    from emoslm.speech.units.decoder import DecoderConfig

    torch.manual_seed(0)
    config = DecoderConfig(codes=32, channels=32, unit_blocks=1, mel_blocks=1, default_speaker="test")
    decoder = UnitDecoder(config, speakers={"test": np.zeros(80, np.float32)})
    streams_like_offline(decoder, np.random.default_rng(0).integers(0, 32, 90))


def streams_like_offline(decoder: UnitDecoder, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mel exactly as offline whatever the chunking; audio close to offline (the vocoder's context cache and
    the cross-fade). Returns the offline mel and the speaker and style vectors it used."""
    from emoslm.speech.units.decoder import _MelStream

    offline = decoder.decode(Units(codes, 50.0))
    assert offline.dtype == np.float32 and len(offline) == len(codes) * 320
    spk, sty = decoder.speaker_vector(None), decoder.style_vector("anger")
    whole = decoder.mel(codes, spk, sty)
    for size in (1, 3, 17):
        stream = _MelStream(decoder, spk, sty, chunk=5)
        pieces = [m for k in range(0, len(codes), size) for m in stream.feed(codes[k:k + size])]
        assert np.allclose(np.concatenate(pieces + list(stream.flush()), axis=1), whole, atol=1e-4)
    streamed = np.concatenate(list(decoder.decode_stream([codes[k:k + 7] for k in range(0, len(codes), 7)])))
    assert len(streamed) == len(offline)
    snr = 10 * np.log10(np.sum(offline ** 2) / max(1e-12, np.sum((offline - streamed) ** 2)))
    assert snr > 15.0, snr
    return whole, spk, sty


def test_decoder_training_resumes_exactly(clips, trained, tmp_path):
    tok = trained / "tokenizer" / "final"
    train_decoder(recipe(), clips, tok, tmp_path / "dec", stop_after=2)
    train_decoder(recipe(), clips, tok, tmp_path / "dec")
    whole = [json.loads(x)["loss"] for x in (trained / "decoder" / "log.jsonl").read_text().splitlines()]
    resumed = [json.loads(x)["loss"] for x in (tmp_path / "dec" / "log.jsonl").read_text().splitlines()]
    assert resumed == pytest.approx(whole, abs=1e-4)
    assert whole[-1] < whole[0]  # it learns


def test_unit_voice_speaks_text_and_units(trained):
    from emoslm.speech.prosody import reply
    from emoslm.speech.units.voice import UnitVoice
    from emoslm.speech.voice import voice_pool

    voice = voice_pool().voice(f"units:{trained / 'decoder' / 'final'}", "en")
    assert isinstance(voice, UnitVoice) and voice.sample_rate == 16_000
    chunks = list(voice.stream("Hello there. How are you today?", reply("sad")))
    assert len(chunks) == 2 and all(c.audio.size > 3200 for c in chunks)
    audio = list(voice.stream_units([np.arange(10) % 64, np.arange(30) % 64]))
    assert sum(c.audio.size for c in audio) == 40 * 320


def test_kmeans_baseline_encodes(clips, tmp_path):
    tokenizer = train_kmeans(recipe(codes=16), clips, tmp_path / "km")
    again = SpeechTokenizer.from_pretrained(tmp_path / "km" / "final")
    assert again.config.kind == "kmeans"
    audio = load_audio(clips[0].audio)
    codes = again.encode(audio).codes
    assert np.array_equal(codes, tokenizer.encode(audio).codes) and len(set(codes.tolist())) > 1


def test_middle_layer_kmeans_standardises_its_frames_and_reloads(clips, tmp_path):
    from dataclasses import replace

    from emoslm.speech.mel_front_end import MelFrontEnd
    from emoslm.speech.whisper_ct2 import load_whisper_encoder

    base = recipe(codes=16)
    tokenizer = train_kmeans(replace(base, tokenizer=replace(base.tokenizer, layers=4, standardise=True)), clips,
                             tmp_path / "km4")
    again = SpeechTokenizer.from_pretrained(tmp_path / "km4" / "final")
    assert (again.config.layers, again.config.standardise) == (4, True) and len(again.encoder.layers) == 4
    assert again.bottleneck.mean.abs().max() > 0.1 and not torch.allclose(again.bottleneck.std, torch.ones(512))
    audio = load_audio(clips[1].audio)
    codes = again.encode(audio).codes
    assert np.array_equal(codes, tokenizer.encode(audio).codes) and len(set(codes.tolist())) > 1

    full = load_whisper_encoder("whisper-base")  # the 4th layer's output of the whole encoder, by hand
    with torch.inference_mode():
        x = MelFrontEnd.for_mels(80).tensor(audio)[None]
        x = torch.nn.functional.gelu(full.conv2(torch.nn.functional.gelu(full.conv1(x)))).permute(0, 2, 1)
        x = x + full.embed_positions.weight[: x.shape[1]]
        for layer in full.layers[:4]:
            x = layer(x, attention_mask=None)
    assert torch.allclose(again.frames(audio), x[0], atol=1e-4)
    with pytest.raises(EmoslmError, match="has 6 encoder layers, not 7"):
        load_whisper_encoder("whisper-base", 7)


def test_cosyvoice_loader_says_what_is_missing(tmp_path):
    from emoslm.speech.units.cosyvoice import CosyVoiceDecoder, CosyVoiceTokenizer

    with pytest.raises(EmoslmError, match="no such CosyVoice model folder"):
        CosyVoiceTokenizer(tmp_path / "nothing")
    with pytest.raises(EmoslmError, match="speech_tokenizer_v1.onnx or speech_tokenizer_v2.onnx"):
        CosyVoiceTokenizer(tmp_path)
    (tmp_path / "speech_tokenizer_v2.onnx").write_bytes(b"")
    with pytest.raises(EmoslmError, match="needs the CosyVoice code"):
        CosyVoiceDecoder(tmp_path)


def test_cosyvoice_tokenizer_feeds_its_onnx_the_published_inputs(tmp_path):
    """A fake tokenizer ONNX with CosyVoice's input names and shapes (the real one cannot be installed here):
    it returns one token per two mel frames, the index of the loudest of the first 16 bins."""
    pytest.importorskip("onnx")
    from emoslm.speech.units.cosyvoice import CosyVoiceTokenizer
    from tests.tiny import fake_s3_tokenizer

    fake_s3_tokenizer(tmp_path)
    tokenizer = CosyVoiceTokenizer(tmp_path)
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(32_000) / 16_000)).astype(np.float32)
    feats, length = tokenizer.features(audio)
    assert feats.shape == (1, 128, 200) and length.tolist() == [200] and length.dtype == np.int32
    units = tokenizer.encode(audio)
    assert units.rate == 50.0 and len(units.codes) == 100 and units.codes.max() < 16
    with pytest.raises(EmoslmError, match="at most 30 s"):
        tokenizer.encode(np.zeros(31 * 16_000, np.float32))


@pytest.mark.slow
def test_units_cli_round_trip_and_clear_errors(clips, trained, tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "emoslm.cli", "units", *args], capture_output=True, text=True,
                              timeout=300)

    units = tmp_path / "u.json"
    tok, dec = str(trained / "tokenizer" / "final"), str(trained / "decoder" / "final")
    encoded = cli("encode", str(clips[0].audio), "--tokenizer", tok, "--out", str(units))
    assert encoded.returncode == 0, encoded.stderr
    assert json.loads(units.read_text())["rate"] == 50.0
    decoded = cli("decode", str(units), "--decoder", dec, "--out", str(tmp_path / "o.wav"), "--emotion", "happy")
    assert decoded.returncode == 0, decoded.stderr
    assert (tmp_path / "o.wav").stat().st_size > 1000
    out_wav = str(tmp_path / "r.wav")
    resynth = cli("resynth", str(clips[1].audio), "--tokenizer", tok, "--decoder", dec, "--out", out_wav)
    assert resynth.returncode == 0, resynth.stderr
    assert "units" in resynth.stdout and (tmp_path / "r.wav").stat().st_size > 1000
    (tmp_path / "bad.json").write_text("[1, 2")
    bad = cli("decode", str(tmp_path / "bad.json"), "--decoder", dec)
    assert bad.returncode != 0 and "not a units file" in bad.stderr and "Traceback" not in bad.stderr
    missing = cli("encode", str(clips[0].audio), "--tokenizer", str(tmp_path / "none"))
    assert missing.returncode != 0 and "CosyVoice model folder" in missing.stderr and "Traceback" not in missing.stderr


def test_recipe_rejects_unknown_settings(tmp_path):
    from emoslm.train.units import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("units:\n  tokenizer: {codes: 64, colour: red}\n")
    with pytest.raises(EmoslmError, match="colour"):
        load_recipe(path)
    path.write_text("units:\n  train: {tokenizer: {steps: 3}, seed: 4}\n")
    assert load_recipe(path).part("tokenizer").seed == 4 and load_recipe(path).part("tokenizer").steps == 3
    assert load_recipe(path).part("decoder").stage == "decoder" and load_recipe(path).part("decoder").seed == 4
    path.write_text("units:\n  tokenizer: {kind: kmeans}\n")
    with pytest.raises(EmoslmError, match="--part kmeans,decoder-kmeans"):
        train_parts(path, tmp_path / "run", ["tokenizer", "kmeans"])
    path.write_text("units:\n  max_clip: 3\n")
    with pytest.raises(EmoslmError, match="max_clip"):
        load_recipe(path)


@pytest.mark.parametrize("name", ["units-tiny.yaml", "units-gpu.yaml", "units-kmeans.yaml"])
def test_committed_units_recipes_load_and_build(name):
    """The GPU recipe cannot be trained here; this at least catches a setting it misspells or a decoder shape
    it cannot build (its 4,096-code, 512-channel decoder runs one forward pass on random units)."""
    from dataclasses import replace

    from emoslm.speech.units.decoder import STYLE_DIM, UnitToMel
    from emoslm.train.units import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / name)
    assert recipe.part("tokenizer").steps > 0 and recipe.part("decoder").steps > 0
    config = replace(recipe.decoder, codes=recipe.tokenizer.codes, unit_rate=recipe.tokenizer.rate)
    model = UnitToMel(config)
    units = 25
    codes = torch.randint(0, config.codes, (2, units))
    mel = model(codes, torch.zeros(2, config.n_mels), torch.zeros(2, STYLE_DIM))
    assert mel.shape == (2, config.n_mels, units * config.upsample)
    if name == "units-gpu.yaml":  # CosyVoice v1's shape: 4,096 codes at 50 Hz, bf16 on the accelerator
        assert (recipe.tokenizer.codes, recipe.tokenizer.rate) == (4096, 50.0)
        assert recipe.part("tokenizer").mixed_precision == "bf16"


@pytest.mark.slow
def test_units_evaluation_writes_the_report(clips, trained, recogniser_home, monkeypatch, tmp_path):
    from emoslm.eval.units import evaluate

    monkeypatch.setenv("EMOSLM_HOME", str(recogniser_home))
    results = evaluate(trained, clips, tmp_path / "report", per_lang=2)
    vq = results["pairs"]["vq"]
    assert results["clips"] == 1 and set(results["original"]) == {"en"}
    assert 0.0 <= vq["error"]["en"] and vq["units_error"]["en"] is not None
    assert 0.0 <= vq["emotion_agreement"] <= 1.0 and vq["decoder_rtf"] > 0 and vq["first_chunk_ms"] > 0
    assert vq["stream_length_diff"] == 0 and vq["stream_snr_db"] > 15
    report = (tmp_path / "report" / "report.md").read_text()
    assert "WER en resynthesis" in report and (tmp_path / "report" / "errors.png").exists()
    # the vocoder's ceiling: the original's own mel through HiFi-GAN keeps espeak's words
    assert 0.0 <= results["vocoded"]["en"] <= 0.5 and "through the vocoder" in report
    # one voice here, so its row is the language's figure, for the original and for the resynthesis
    assert list(results["original_by_voice"].values()) == [results["original"]["en"]]
    assert list(vq["error_by_voice"].values()) == [vq["error"]["en"]] and "Per held-out voice" in report


def test_text_sources_add_distinct_sentences_spoken_by_train_voices(tmp_path):
    from emoslm.perception import corpus
    from emoslm.train.units import source_clips

    manifest = tmp_path / "q.jsonl"
    lines = [{"id": f"q{k}", "lang": "en", "text": f"Sentence number {k} is about the weather again"} for k in range(6)]
    lines.append({"id": "held", "lang": "en", "text": corpus.split_scripts("en")["test"][0][2]})
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    clips = source_clips([{"type": "jsonl", "path": str(manifest), "name": "q"}], ["en"])
    assert len(clips) == 6  # the corpus's held-out script is not trained on
    train_voices = {v.name for v in corpus.VOICES if v.split == "train" and v.lang == "en"}
    assert {c.voice for c in clips} <= train_voices and all(c.split == "train" for c in clips)
    assert clips == source_clips([{"type": "jsonl", "path": str(manifest), "name": "q"}], ["en"])  # seeded
    with pytest.raises(EmoslmError, match="units.sources"):
        source_clips([{"type": "nonsense"}], ["en"])


def test_length_batches_cover_every_clip_once_with_little_padding():
    from emoslm.train.data import LengthBatches

    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 1300, size=1000).tolist()
    sampler = LengthBatches(lengths, batch_size=16, seed=3, window=10)
    first = list(sampler)
    assert len(first) == len(sampler)
    assert sorted(i for b in first for i in b) == list(range(1000))  # every clip once per epoch
    assert all(len(b) == 16 for b in first[:-1])  # the one short batch comes last (accelerate's shards)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in first)
    shuffled = rng.permutation(1000).tolist()
    random_padded = sum(16 * max(lengths[i] for i in shuffled[k:k + 16]) for k in range(0, 1000, 16))
    assert padded < 0.6 * random_padded
    assert list(sampler) == first  # the same epoch is the same order (resume, every rank)
    sampler.set_epoch(1)
    assert list(sampler) != first
