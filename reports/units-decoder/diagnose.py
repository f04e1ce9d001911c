"""Where do the words go: the units, or the unit-to-mel decoder?

``reports/units-3`` resynthesises held-out English at WER 0.61-0.64, while the original's own mel through the
same HiFi-GAN keeps the words (0.15). Both the units and the small unit-to-mel network sit between the two.
This script trains ``recipes/units-tiny.yaml``'s decoder on the same English clips, steps and seed from three
inputs and measures the resynthesis WER of each on held-out voices speaking held-out texts and on training
clips:

- ``kmeans``: the k-means baseline's 1,024 units of Whisper base's frames (as ``emoslm units train``);
- ``frames``: the continuous Whisper frames themselves (a LayerNorm + linear map in place of the unit
  embedding): the ceiling of this decoder fed everything the encoder keeps, with no quantiser at all;
- ``kmeans-centred``: 1,024 k-means units of frames less their clip's mean (a voice's constant offset);
- ``kmeans-4096``: 4,096 k-means units (CosyVoice's codebook size);
- ``kmeans-layerL``: 1,024 k-means units of the output of the encoder's first L layers (of 6; L = 6 is the
  usual frames), each dimension standardised on the training frames (HuBERT's best units come from a middle
  layer, and in Whisper's frames a few dimensions dwarf the rest; ``kmeans-layer6`` is the usual frames,
  standardised);
- ``original`` and ``vocoded`` (no training): the clips as they are, and their own mel through HiFi-GAN.

The decoder is the library's ``UnitToMel``, trained by the library's loop (``emoslm.train.units.fit``) with
the same L1 mel + style loss; only the input layer differs. Decoding uses each clip's true style vector and
the voice's speaker vector enrolled from its other clips (the held-out voices were never heard in training).

    python reports/units-decoder/diagnose.py prepare            # render the English corpus, frames, k-means
    python reports/units-decoder/diagnose.py fit kmeans-centred|kmeans-4096|kmeans-layer4
    python reports/units-decoder/diagnose.py train VARIANT STEPS
    python reports/units-decoder/diagnose.py eval VARIANT [CLIPS [SPEAKER [SPLITS]]] >> reports/units-decoder/runs.jsonl

``SPLITS`` (default ``test,train``; ``cross``: two train voices speaking the held-out scripts).
``SPEAKER`` (default ``own``: the clip's voice, enrolled from 8 of its other clips) may name a train voice,
to see whether an unheard voice's speaker vector is what the decoder fails on.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RUN = ROOT / "runs" / "units-decoder"
WIDTH = 512  # Whisper base's frame width


def logged(label: str, total: int):  # noqa: ANN201 - progress as log lines (these run in the background)
    done = [0]

    def advance(n: int = 1) -> None:
        done[0] += n
        if total and (done[0] == total or done[0] % max(1, total // 10) == 0):
            print(f"{label}: {done[0]}/{total}", file=sys.stderr, flush=True)

    return advance


def recipe():  # noqa: ANN201 - a UnitsRecipe: English only, no extra text sources (the decoder is local)
    from emoslm.train import units

    base = units.load_recipe(ROOT / "recipes" / "units-tiny.yaml")  # its k-means standardises since stop 30
    return replace(base, langs=["en"], sources=[], tokenizer=replace(base.tokenizer, standardise=False))


def cross_clips() -> list:
    """Two train voices speaking the held-out scripts (split ``cross``): an unseen text in a heard voice, to
    tell what the units lose on a new voice from what they lose on new words. Rendered under the run folder."""
    from emoslm.perception import corpus
    from emoslm.speech.units.decoder import style_vector
    from emoslm.train.units import SpeechClip

    root = RUN / "cross-clips"
    plan = [corpus.make_clip(corpus.VOICE_BY_NAME[v], "test", sid, text, "neutral", "neutral", 0)
            for v in ("piper-joe", "flite-rms") for sid, _, text in corpus.split_scripts("en")["test"]]
    corpus.synthesize(plan, root)
    return [SpeechClip(c.id, root / c.path, c.text, c.lang, c.voice, "cross", c.emotion,
                       tuple(float(x) for x in style_vector(corpus.clip_prosody(c)))) for c in plan]


def data():  # noqa: ANN201
    from emoslm.train import units

    r = recipe()
    clips = units.corpus_clips(r.langs, render=False, sources=r.sources) + cross_clips()
    return r, clips, units.frame_cache(r.tokenizer.encoder, clips)


def prepare() -> None:
    from emoslm.train import units

    r = recipe()
    clips = units.corpus_clips(r.langs, logged, sources=r.sources)
    units.frame_cache(r.tokenizer.encoder, clips, logged)
    if not (RUN / "kmeans" / "final" / "config.json").exists():
        units.train_kmeans(r, clips, RUN / "kmeans", logged)
    print(json.dumps({"clips": len(clips), "train": sum(c.split == "train" for c in clips)}))


def inputs(variant: str, clips: list, frames) -> list[np.ndarray]:  # noqa: ANN001
    from emoslm.speech.units.tokenizer import SpeechTokenizer

    if variant == "frames":
        return [np.asarray(frames(c.audio), np.float32) for c in clips]
    if variant.startswith("kmeans-layer"):
        layer, folder = int(variant.removeprefix("kmeans-layer")), RUN / variant
        centroids, (mean, std) = np.load(folder / "centroids.npy"), np.load(folder / "standard.npy")
        cache = layer_frames(layer, clips)
        return [(_unit_rows((cache(c.audio) - mean) / std) @ centroids.T).argmax(1) for c in clips]
    if variant in ("kmeans-centred", "kmeans-4096"):
        centroids, centre = np.load(RUN / variant / "centroids.npy"), variant == "kmeans-centred"
        return [(_unit_rows(_centred(frames(c.audio)) if centre else frames(c.audio)) @ centroids.T).argmax(1)
                for c in clips]
    tokenizer = SpeechTokenizer.from_pretrained(RUN / "kmeans" / "final")
    return [tokenizer.encode_frames(frames(c.audio)) for c in clips]


def _centred(x: np.ndarray) -> np.ndarray:
    """A clip's frames less their mean: the voice's constant offset in Whisper's space goes, the phones stay."""
    x = np.asarray(x, np.float32)
    return x - x.mean(0, keepdims=True)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def layer_frames(layer: int, clips: list):  # noqa: ANN201 - the library's FrameCache of the first layers
    from emoslm.train import units

    return units.frame_cache(recipe().tokenizer.encoder, clips, logged, layer)


def fit_layer(variant: str, max_frames: int = 100_000) -> None:
    """``kmeans-layerL``: 1,024 codes of the first L layers' frames, standardised per dimension, L2-normalised.

    What ``train_kmeans`` does with ``layers: L, standardise: true``, kept here as it was run: the library
    samples the frames in another clip order, and a k-means of 1,024 codes is not stable to that (the two
    codebooks' partitions of 40 held-out clips agree on 63 % of frames), so the rows above come from this."""
    from sklearn.cluster import MiniBatchKMeans

    _, clips, _ = data()
    cache = layer_frames(int(variant.removeprefix("kmeans-layer")), clips)
    rows = np.concatenate([cache(c.audio) for c in clips if c.split == "train"])
    rows = rows[np.random.default_rng(0).permutation(len(rows))[:max_frames]]
    mean, std = rows.mean(0), rows.std(0) + 1e-5
    rows = _unit_rows((rows - mean) / std)
    kmeans = MiniBatchKMeans(n_clusters=1024, batch_size=4096, n_init=1, max_iter=30, random_state=0).fit(rows)
    (RUN / variant).mkdir(parents=True, exist_ok=True)
    np.save(RUN / variant / "standard.npy", np.stack([mean, std]).astype(np.float32))
    np.save(RUN / variant / "centroids.npy", _unit_rows(kmeans.cluster_centers_).astype(np.float32))


def fit_kmeans(variant: str, max_frames: int = 100_000) -> None:
    """k-means as ``train_kmeans`` (same settings) on L2-normalised frames: ``kmeans-centred`` 1,024 codes of
    clip-centred frames, ``kmeans-4096`` 4,096 codes (CosyVoice's codebook size) of the frames as they are."""
    from sklearn.cluster import MiniBatchKMeans

    _, clips, frames = data()
    codes, centre = (1024, True) if variant == "kmeans-centred" else (4096, False)
    rows = np.concatenate([_unit_rows(_centred(frames(c.audio)) if centre else np.asarray(frames(c.audio)))
                           for c in clips if c.split == "train"])
    rows = rows[np.random.default_rng(0).permutation(len(rows))[:max_frames]]
    kmeans = MiniBatchKMeans(n_clusters=codes, batch_size=4096, n_init=1, max_iter=30, random_state=0).fit(rows)
    (RUN / variant).mkdir(parents=True, exist_ok=True)
    np.save(RUN / variant / "centroids.npy", _unit_rows(kmeans.cluster_centers_).astype(np.float32))


def build(variant: str, r, mel_mean: float, mel_std: float):  # noqa: ANN001, ANN201
    from emoslm.speech.units.decoder import DecoderConfig, UnitToMel

    codes = 4096 if variant == "kmeans-4096" else r.tokenizer.codes
    config = DecoderConfig(**{**asdict(r.decoder), "codes": codes, "mel_mean": mel_mean, "mel_std": mel_std})
    torch.manual_seed(0)
    model = UnitToMel(config)
    if variant == "frames":
        model.embed = nn.Sequential(nn.LayerNorm(WIDTH), nn.Linear(WIDTH, config.channels))
    return config, model


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """``collate_units`` for either int codes (batch, units) or frames (batch, units, width)."""
    from emoslm.train.units import collate_units

    if items[0]["codes"].dtype != torch.float32:
        return collate_units(items)
    longest = max(len(i["codes"]) for i in items)
    padded = [{**i, "codes": torch.zeros(len(i["codes"]), dtype=torch.long)} for i in items]
    batch = collate_units(padded)
    x = torch.zeros(len(items), longest, items[0]["codes"].shape[1])
    for k, item in enumerate(items):
        x[k, : len(item["codes"])] = item["codes"]
    batch["codes"] = x
    return batch


def train(variant: str, steps: int) -> None:
    from emoslm.audio import load_audio
    from emoslm.speech.units.decoder import UnitDecoder
    from emoslm.speech.vocoder import log_mel
    from emoslm.train import units

    r, clips, frames = data()
    train_clips = [c for c in clips if c.split == "train"]
    x = inputs(variant, train_clips, frames)
    mels = [log_mel(load_audio(c.audio)) for c in train_clips]
    every = np.concatenate([m[:, ::4] for m in mels], axis=1)
    config, model = build(variant, r, round(float(every.mean()), 4), round(float(every.std()), 4))
    shell = UnitDecoder(config)
    speakers = units.speaker_table(shell, train_clips)
    mels = [shell.normalise(m) for m in mels]
    part = replace(r.part("decoder"), steps=steps, stage=f"decoder-{variant}")
    dataset = units.UnitsAndMel(train_clips, x, mels, speakers, config.upsample, part.crop_units, part.seed)

    began = time.perf_counter()
    trained = units.fit(part, RUN / variant, model, dataset, collate, units.decoder_loss, logged)
    torch.save({"config": asdict(config), "state": trained.state_dict()}, RUN / variant / "model.pt")
    print(json.dumps({"variant": variant, "steps": steps, "minutes": round((time.perf_counter() - began) / 60, 1)}))


def evaluate(variant: str, per_split: int = 40, speaker_from: str = "own",
             splits: tuple[str, ...] = ("test", "train")) -> None:
    from emoslm.audio import load_audio
    from emoslm.perception.asr import FasterWhisperASR
    from emoslm.speech.units.decoder import DecoderConfig, UnitDecoder
    from emoslm.textnorm import edit_distance, tokens

    r, clips, frames = data()
    if variant in ("original", "vocoded"):
        return reference(variant, clips, per_split, splits)
    saved = torch.load(RUN / variant / "model.pt", weights_only=False)
    config = DecoderConfig(**saved["config"])
    _, model = build(variant, r, config.mel_mean, config.mel_std)
    model.load_state_dict(saved["state"])
    decoder = UnitDecoder(config, model)
    asr = FasterWhisperASR("whisper-base")

    row = {"variant": variant, "steps": _steps(variant), "speaker": speaker_from}
    for split in splits:
        chosen = _spread(clips, split, per_split)
        x = inputs(variant, chosen, frames)
        edits = words = 0
        for clip, inp in zip(chosen, x, strict=True):
            voice = clip.voice if speaker_from == "own" else speaker_from  # a train voice for every clip
            others = [c for c in clips if c.voice == voice and c.id != clip.id][:8]
            speaker = decoder.speaker_of(load_audio(c.audio) for c in others)
            with torch.inference_mode():
                mel = model(torch.as_tensor(inp)[None], torch.from_numpy(speaker)[None],
                            torch.tensor(clip.style, dtype=torch.float32)[None])[0].numpy()
            audio = decoder.vocoder.mel_to_audio(mel * config.mel_std + config.mel_mean)
            ref = tokens(clip.text)
            edits += edit_distance(ref, tokens(asr.transcribe(audio, language="en").text))
            words += len(ref)
        row[f"wer_{split}"] = round(edits / max(1, words), 3)
    print(json.dumps(row), flush=True)


def _spread(clips: list, split: str, n: int) -> list:
    return sorted((c for c in clips if c.split == split), key=lambda c: zlib.crc32(c.id.encode()))[:n]


def reference(variant: str, clips: list, per_split: int, splits: tuple[str, ...]) -> None:
    """WER of the same clips as they are (``original``) and of their own mel through HiFi-GAN (``vocoded``)."""
    from emoslm.audio import load_audio
    from emoslm.perception.asr import FasterWhisperASR
    from emoslm.speech.vocoder import HifiGanVocoder, log_mel
    from emoslm.textnorm import edit_distance, tokens

    asr, vocoder, row = FasterWhisperASR("whisper-base"), HifiGanVocoder("hifigan-16k"), {"variant": variant}
    for split in splits:
        edits = words = 0
        for clip in _spread(clips, split, per_split):
            audio = load_audio(clip.audio)
            audio = vocoder.mel_to_audio(log_mel(audio)) if variant == "vocoded" else audio
            ref = tokens(clip.text)
            edits += edit_distance(ref, tokens(asr.transcribe(audio, language="en").text))
            words += len(ref)
        row[f"wer_{split}"] = round(edits / max(1, words), 3)
    print(json.dumps(row), flush=True)


def _steps(variant: str) -> int:
    log = RUN / variant / "log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    torch.set_num_threads(2)
    if command == "prepare":
        prepare()
    elif command == "train":
        train(rest[0], int(rest[1]))
    elif command == "fit":
        (fit_layer if rest[0].startswith("kmeans-layer") else fit_kmeans)(rest[0])
    elif command == "eval":
        evaluate(rest[0], int(rest[1]) if len(rest) > 1 else 40, rest[2] if len(rest) > 2 else "own",
                 tuple(rest[3].split(",")) if len(rest) > 3 else ("test", "train"))
