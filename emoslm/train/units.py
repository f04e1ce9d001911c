"""Training the speech units: the tokenizer's VQ bottleneck (through the frozen Whisper decoder), the
k-means baseline, and the unit-to-mel decoder, on the same accelerate loop as the unified model.

Data: the project's voices speaking its scripts with each emotion's prosody (the perception corpus,
``emoslm.perception.corpus``): its train voices and scripts train, its test voices speaking the held-out
scripts evaluate (``emoslm units evaluate``), so every figure is on unheard voices and unseen texts.

Each part is a run folder (``OUT/tokenizer``, ``OUT/kmeans``, ``OUT/decoder``, ``OUT/decoder-kmeans``)
with ``log.jsonl``, TensorBoard logs, ``checkpoint/`` (resumed exactly: model, optimiser and RNG states
and the batches taken, skipped at the sampler) and ``final/`` (a ``from_pretrained`` folder).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from emoslm.errors import DataError, EmoslmError
from emoslm.progress import Start, silent
from emoslm.speech.units.decoder import DecoderConfig, UnitDecoder, UnitToMel, style_vector
from emoslm.speech.units.tokenizer import ENCODER_RATE, Bottleneck, SpeechTokenizer, TokenizerConfig, codebook_stats
from emoslm.train.data import LengthBatches
from emoslm.train.loop import accelerator_for, append_log, epoch_batches, resume_position, save_checkpoint, write_json

PARTS = ("tokenizer", "kmeans", "decoder", "decoder-kmeans")


@dataclass(frozen=True)
class SpeechClip:
    """One training or evaluation utterance: audio, what it says, who says it and how."""

    id: str
    audio: Path
    text: str
    lang: str
    voice: str
    split: str  # train | test
    emotion: str = "neutral"
    style: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)


@dataclass
class PartConfig:
    """One part's loop settings (the fields the shared accelerate helpers read)."""

    stage: str = "tokenizer"
    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3
    grad_accum: int = 1
    seed: int = 0
    save_every: int = 100
    log_every: int = 10
    mixed_precision: str = "auto"
    restart_every: int = 50  # tokenizer: dead-code restarts
    crop_units: int = 100  # decoder: random crops of this many units per clip


@dataclass
class UnitsRecipe:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    langs: list[str] = field(default_factory=lambda: ["en", "zh"])
    max_clips: int = 0  # 0: every clip of the corpus's train voices
    sources: list[dict[str, Any]] = field(default_factory=list)  # IEAT text sources spoken by the train voices
    parts: dict[str, PartConfig] = field(default_factory=dict)

    def part(self, name: str) -> PartConfig:
        return self.parts.get(name) or PartConfig(stage=name)


def load_recipe(path: Path) -> UnitsRecipe:
    """A units recipe (YAML, ``units:`` section); unknown keys are an error naming the key."""
    if not Path(path).exists():
        raise EmoslmError(f"{path}: no such recipe")
    data = (yaml.safe_load(Path(path).read_text()) or {}).get("units")
    if not isinstance(data, dict):
        raise EmoslmError(f"{path}: no `units:` section; see recipes/units-tiny.yaml")
    unknown = set(data) - {"langs", "max_clips", "sources", "tokenizer", "decoder", "train"}
    if unknown:
        raise EmoslmError(f"{path}: unknown units setting {sorted(unknown)[0]!r}")
    train = data.get("train") or {}
    shared = {k: v for k, v in train.items() if k not in PARTS}  # settings every part shares (seed, logging)
    try:
        parts = {name: PartConfig(stage=name, **{**shared, **(train.get(name) or {})}) for name in PARTS}
        return UnitsRecipe(TokenizerConfig(**data.get("tokenizer", {})), DecoderConfig(**data.get("decoder", {})),
                           list(data.get("langs", ["en", "zh"])), int(data.get("max_clips", 0)),
                           list(data.get("sources") or []), parts)
    except TypeError as exc:
        raise EmoslmError(f"{path}: {exc}") from None


# ---------------------------------------------------------------- data


def source_clips(sources: list[dict[str, Any]], langs: list[str], seed: int = 0) -> list[Any]:
    """Corpus clips for the sentences of IEAT text sources (e.g. ``{type: chitchat, limit: 3000}``), each
    spoken by one train voice of its language with a random emotion, all seeded by the sentence's id.

    The corpus alone has ~200 distinct training scripts, which a VQ bottleneck trained through Whisper's
    decoder learns by heart; these add the many distinct sentences it needs to learn speech instead."""
    import random

    from emoslm.emotions import TAGS
    from emoslm.ieat.recipe import SourceSpec
    from emoslm.ieat.sources import iter_source
    from emoslm.perception import corpus

    voices = {lang: [v for v in corpus.VOICES if v.lang == lang and v.split == "train"] for lang in langs}
    tested = {c.text for c in corpus.plan() if c.split == "test"}  # held-out scripts stay held out
    clips = []
    for raw in sources:
        try:
            spec = SourceSpec(**raw)
        except ValueError as exc:
            raise EmoslmError(f"units.sources: {str(exc).splitlines()[0]} in {raw}") from None
        for item in iter_source(spec):
            if item.kind != "text" or item.lang not in voices or not voices[item.lang] or item.text in tested:
                continue
            rng = random.Random(f"{seed}-{item.id}")
            voice, emotion = rng.choice(voices[item.lang]), rng.choice(TAGS)
            clips.append(corpus.make_clip(voice, "train", item.id, item.text or "", emotion, "neutral", 0))
    return clips


def corpus_clips(langs: list[str], progress: Start = silent, render: bool = True,
                 sources: list[dict[str, Any]] | None = None) -> list[SpeechClip]:
    """The perception corpus's train and test clips plus the sources' sentences (rendered here when missing),
    with their exact prosody."""
    from emoslm.perception import corpus

    # speed copies are left out: their audio no longer matches the prosody the decoder's style input states
    plan = [c for c in corpus.plan() if c.lang in langs and c.split in ("train", "test") and not c.source]
    plan += source_clips(sources or [], langs)
    root = corpus.corpus_root()
    missing = [c for c in plan if not (root / c.path).exists()]
    if missing and render:
        corpus.synthesize(plan, root, progress=progress("rendering the corpus", len(plan)))
    return [SpeechClip(c.id, root / c.path, c.text, c.lang, c.voice, c.split, c.emotion,
                       tuple(float(x) for x in style_vector(corpus.clip_prosody(c)))) for c in plan]


def _pick(clips: list[SpeechClip], split: str, limit: int) -> list[SpeechClip]:
    chosen = [c for c in clips if c.split == split]
    if limit and len(chosen) > limit:  # an even spread over voices, the same on every run
        chosen = sorted(chosen, key=lambda c: zlib.crc32(c.id.encode()))[:limit]
    if not chosen:
        raise DataError(f"no {split} clips to train on")
    return chosen


class FramesAndText(torch.utils.data.Dataset):
    """Encoder frames and transcript ids of each clip; ``lengths`` (frames, from the audio's length) lets
    ``fit`` batch clips of similar length."""

    def __init__(self, clips: list[SpeechClip], frames: Callable[[Path], np.ndarray], text: Any) -> None:
        import soundfile

        self.clips, self.frames = clips, frames
        self.ids = [text.ids(c.text, c.lang)[:200] for c in clips]
        self.lengths = [math.ceil(soundfile.info(str(c.audio)).duration * ENCODER_RATE) for c in clips]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"frames": torch.from_numpy(self.frames(self.clips[i].audio)), "ids": self.ids[i]}


def collate_frames(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    longest, width = max(len(i["frames"]) for i in items), items[0]["frames"].shape[1]
    frames, mask = torch.zeros(len(items), longest, width), torch.zeros(len(items), longest, dtype=torch.bool)
    tokens = max(len(i["ids"]) for i in items) - 1
    ids, labels = torch.zeros(len(items), tokens, dtype=torch.long), torch.full((len(items), tokens), -100)
    for k, item in enumerate(items):
        n, seq = len(item["frames"]), torch.tensor(item["ids"])
        frames[k, :n], mask[k, :n] = item["frames"], True
        ids[k, : len(seq) - 1], labels[k, : len(seq) - 1] = seq[:-1], seq[1:]
    return {"frames": frames, "mask": mask, "ids": ids, "labels": labels}


class UnitsAndMel(torch.utils.data.Dataset):
    """Units, target mel (normalised), speaker vector and style of each clip; cropped per epoch, seeded."""

    def __init__(self, clips: list[SpeechClip], codes: list[np.ndarray], mels: list[np.ndarray],
                 speakers: dict[str, np.ndarray], upsample: int, crop: int, seed: int) -> None:
        self.clips, self.codes, self.mels, self.speakers = clips, codes, mels, speakers
        self.upsample, self.crop, self.seed, self.epoch = upsample, crop, seed, 0

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        codes, mel = self.codes[i], self.mels[i]
        n = min(len(codes), mel.shape[1] // self.upsample)
        start = 0
        if n > self.crop:  # the crop depends on (seed, epoch, clip) only, so a resumed run sees the same one
            start = zlib.crc32(f"{self.seed}-{self.epoch}-{self.clips[i].id}".encode()) % (n - self.crop + 1)
        stop = min(n, start + self.crop)
        return {"codes": torch.from_numpy(codes[start:stop]),
                "mel": torch.from_numpy(mel[:, start * self.upsample:stop * self.upsample]),
                "speaker": torch.from_numpy(self.speakers[self.clips[i].voice]),
                "style": torch.tensor(self.clips[i].style, dtype=torch.float32)}


def collate_units(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    longest, up = max(len(i["codes"]) for i in items), items[0]["mel"].shape[1] // max(1, len(items[0]["codes"]))
    n_mels = items[0]["mel"].shape[0]
    codes, mask = torch.zeros(len(items), longest, dtype=torch.long), torch.zeros(len(items), longest * up)
    mel = torch.zeros(len(items), n_mels, longest * up)
    for k, item in enumerate(items):
        n = len(item["codes"])
        codes[k, :n], mel[k, :, : n * up], mask[k, : n * up] = item["codes"], item["mel"][:, : n * up], 1.0
    return {"codes": codes, "mel": mel, "mel_mask": mask, "speaker": torch.stack([i["speaker"] for i in items]),
            "style": torch.stack([i["style"] for i in items])}


# ---------------------------------------------------------------- the loop


def fit(part: PartConfig, out: Path, model: torch.nn.Module, dataset: torch.utils.data.Dataset, collate: Callable,
        loss_of: Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]],
        progress: Start = silent, stop_after: int | None = None,
        every_step: Callable[[Any, torch.nn.Module, dict[str, Any], int], dict[str, float]] | None = None) -> Any:
    """Train ``model`` for ``part.steps`` optimiser steps; resumes from ``out/checkpoint``. Returns the
    unwrapped model (rank 0 only matters) or None when stopped early by ``stop_after`` (tests)."""
    from torch.utils.data import DataLoader

    out.mkdir(parents=True, exist_ok=True)
    accelerator = accelerator_for(part, out)
    torch.manual_seed(part.seed)
    if hasattr(dataset, "lengths"):  # clips of similar length together: far less padding
        loader = DataLoader(dataset, batch_sampler=LengthBatches(dataset.lengths, part.batch_size, part.seed),
                            collate_fn=collate)
    else:
        loader = DataLoader(dataset, batch_size=part.batch_size, shuffle=True, collate_fn=collate, drop_last=False,
                            generator=torch.Generator().manual_seed(part.seed))
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=part.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / 50) *
                                                 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, part.steps)))))
    model, optimiser, loader, schedule = accelerator.prepare(model, optimiser, loader, schedule)
    accelerator.init_trackers("tb", config={k: v for k, v in asdict(part).items()})
    step, batches_done = resume_position(accelerator, out, part)
    per_epoch = len(loader)
    advance = progress(f"units {part.stage}", part.steps) if accelerator.is_main_process else (lambda n=1: None)
    advance(step)
    started = time.perf_counter()
    model.train()
    while step < part.steps:
        epoch, offset = divmod(batches_done, per_epoch)
        if hasattr(dataset, "epoch"):
            dataset.epoch = epoch
        for batch in epoch_batches(loader, accelerator, epoch, offset):
            with accelerator.accumulate(model):
                loss, parts = loss_of(model, batch)
                accelerator.backward(loss)
                optimiser.step()
                schedule.step()
                optimiser.zero_grad()
            batches_done += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            advance()
            extra = every_step(accelerator, model, batch, step) if every_step else {}
            if step % part.log_every == 0 or step == part.steps:
                record = {"step": step, "loss": round(float(accelerator.reduce(loss.detach(), "mean")), 5),
                          **{k: round(v, 5) for k, v in {**parts, **extra}.items()},
                          "seconds": round(time.perf_counter() - started, 1)}
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                if accelerator.is_main_process:
                    append_log(out / "log.jsonl", record)
            if step % part.save_every == 0 or step == part.steps:
                save_checkpoint(accelerator, out, part.stage, step, batches_done)
            if stop_after is not None and step >= stop_after:
                accelerator.end_training()
                return None
            if step >= part.steps:
                break
    unwrapped = accelerator.unwrap_model(model)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return unwrapped


# ---------------------------------------------------------------- the parts


def frame_cache(encoder_name: str, clips: list[SpeechClip], progress: Start = silent, layers: int = 0) -> Any:
    """Whisper encoder frames (of its first ``layers`` layers, 0: all) of every clip, computed once (shared
    with the unified model's cache, which the weights' hash keeps apart from a middle layer's)."""
    from emoslm.speech.mel_front_end import MelFrontEnd
    from emoslm.speech.whisper_ct2 import load_whisper_encoder
    from emoslm.train.frames import FrameCache

    encoder = load_whisper_encoder(encoder_name, layers)
    cache = FrameCache(encoder, MelFrontEnd.for_mels(int(encoder.config.num_mel_bins)))
    cache.fill([c.audio for c in clips], progress("encoder frames", len(clips)))
    return cache


def train_tokenizer(recipe: UnitsRecipe, clips: list[SpeechClip], out: Path, progress: Start = silent,
                    stop_after: int | None = None) -> SpeechTokenizer | None:
    """The VQ bottleneck, trained so that the frozen Whisper decoder can still write the transcript."""
    from emoslm.speech.whisper_ct2 import WhisperText, decode_logits, load_whisper_decoder

    config, part = recipe.tokenizer, recipe.part("tokenizer")
    train_clips = _pick(clips, "train", recipe.max_clips)
    held = [c for c in clips if c.split == "test"][:48]  # unheard voices speaking unseen texts
    frames = frame_cache(config.encoder, train_clips + held, progress, config.layers)
    decoder = load_whisper_decoder(config.encoder).requires_grad_(False)
    text = WhisperText(config.encoder)
    dataset = FramesAndText(train_clips, frames, text)
    held_set = FramesAndText(held, frames, text)
    held_batch = collate_frames([held_set[i] for i in range(len(held))]) if held else None
    torch.manual_seed(part.seed)
    bottleneck = Bottleneck(config)
    last: dict[str, Any] = {}

    def loss_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        decoder.to(batch["frames"].device)
        result = model(batch["frames"], batch["mask"])
        logits = decode_logits(decoder, batch["ids"], result["memory"], result["memory_mask"])
        text = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        last["result"] = result  # for the codebook statistics and dead-code restart after the step
        return text + config.commitment * result["commit"], {"text_loss": float(text.detach()),
                                                             "commit": float(result["commit"].detach())}

    def every_step(accelerator: Any, model: torch.nn.Module, batch: dict[str, Any], step: int) -> dict[str, float]:
        inner = accelerator.unwrap_model(model)
        result, mask = last["result"], _pooled_mask(inner, batch["mask"])
        codes = result["codes"][mask]
        stats = codebook_stats(codes, config.codes)
        stats["active_codes"] = float((inner.quantizer.usage >= config.dead_below).sum())
        if held_batch is not None and (step % part.save_every == 0 or step == part.steps):
            stats["held_out_text_loss"] = held_out_text_loss(inner, decoder, held_batch)
        if step == 1 or step % part.restart_every == 0:
            picks = torch.Generator().manual_seed(part.seed * 1_000_003 + step)  # by step: the same after a resume
            dead = inner.quantizer.restart_dead(result["latent"], mask, config.dead_below, picks)
            stats["restarted"] = float(dead)
        return stats

    trained = fit(part, out, bottleneck, dataset, collate_frames, loss_of, progress, stop_after, every_step)
    if trained is None:
        return None
    tokenizer = SpeechTokenizer(config, trained.cpu())
    tokenizer.save_pretrained(out / "final")
    return tokenizer


def held_out_text_loss(bottleneck: Bottleneck, decoder: Any, batch: dict[str, torch.Tensor]) -> float:
    """Transcript loss through the units on held-out clips: where it rises while the training loss falls, the
    bottleneck is learning the training texts rather than speech."""
    from emoslm.speech.whisper_ct2 import decode_logits

    device = next(bottleneck.parameters()).device
    was_training = bottleneck.training
    bottleneck.eval()
    with torch.no_grad():
        batch = {k: v.to(device) for k, v in batch.items()}
        result = bottleneck(batch["frames"], batch["mask"])
        logits = decode_logits(decoder, batch["ids"], result["memory"], result["memory_mask"])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    bottleneck.train(was_training)
    return float(loss)


def _pooled_mask(bottleneck: Bottleneck, mask: torch.Tensor) -> torch.Tensor:
    return bottleneck.pool(mask[..., None].float(), mask)[1].bool()


def train_kmeans(recipe: UnitsRecipe, clips: list[SpeechClip], out: Path, progress: Start = silent,
                 max_frames: int = 100_000) -> SpeechTokenizer:
    """The baseline: MiniBatchKMeans centroids of L2-normalised (pooled, and where the recipe says
    standardised) encoder frames of the train clips."""
    from sklearn.cluster import MiniBatchKMeans

    config = TokenizerConfig(**{**asdict(recipe.tokenizer), "kind": "kmeans"})
    train_clips = _pick(clips, "train", recipe.max_clips)
    frames = frame_cache(config.encoder, train_clips, progress, config.layers)
    bottleneck = Bottleneck(config)
    pooled = []
    for clip in train_clips:
        x = torch.from_numpy(frames(clip.audio))[None]
        pooled.append(bottleneck.pool(x, torch.ones(x.shape[:2], dtype=torch.bool))[0][0])
    rng = np.random.default_rng(recipe.part("kmeans").seed)
    sample = torch.cat(pooled)[torch.from_numpy(rng.permutation(sum(len(p) for p in pooled))[:max_frames])]
    if config.standardise:
        bottleneck.mean.copy_(sample.mean(0))
        bottleneck.std.copy_(sample.std(0) + 1e-5)
    data = bottleneck.kmeans_rows(sample).numpy()
    kmeans = MiniBatchKMeans(n_clusters=min(config.codes, len(data)), batch_size=4096, n_init=1, max_iter=30,
                             random_state=recipe.part("kmeans").seed).fit(data)
    centroids = torch.zeros(config.codes, config.width)
    centroids[: len(kmeans.cluster_centers_)] = torch.from_numpy(kmeans.cluster_centers_).float()
    bottleneck.centroids.copy_(torch.nn.functional.normalize(centroids, dim=-1))
    tokenizer = SpeechTokenizer(config, bottleneck)
    tokenizer.save_pretrained(out / "final")
    write_json(out / "summary.json", {"frames": int(len(data)), "inertia": float(kmeans.inertia_)})
    return tokenizer


def speaker_table(decoder: UnitDecoder, clips: list[SpeechClip], per_voice: int = 24) -> dict[str, np.ndarray]:
    """Each voice enrolled from up to ``per_voice`` of its clips (neutral ones first)."""
    from emoslm.audio import load_audio

    table = {}
    for voice in sorted({c.voice for c in clips}):
        own = sorted((c for c in clips if c.voice == voice), key=lambda c: (c.emotion != "neutral", c.id))
        table[voice] = decoder.speaker_of(load_audio(c.audio) for c in own[:per_voice])
    return table


def decoder_loss(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """The unit-to-mel network's loss: L1 on the real mel frames, plus the style head's error (weight 0.1)."""
    predicted = net(batch["codes"], batch["speaker"], batch["style"])
    mask = batch["mel_mask"][:, None, :]
    l1 = ((predicted - batch["mel"]).abs() * mask).sum() / (mask.sum() * predicted.shape[1]).clamp(min=1)
    inner = net.module if hasattr(net, "module") else net
    style = inner.predict_style(batch["mel"], batch["speaker"])
    style_loss = torch.nn.functional.mse_loss(style, batch["style"])
    return l1 + 0.1 * style_loss, {"mel_l1": float(l1.detach()), "style_mse": float(style_loss.detach())}


def train_decoder(recipe: UnitsRecipe, clips: list[SpeechClip], tokenizer_dir: Path, out: Path,
                  progress: Start = silent, stop_after: int | None = None, part_name: str = "decoder"
                  ) -> UnitDecoder | None:
    """The unit-to-mel network on the tokenizer's units of the train clips (L1 mel + style-head loss)."""
    from emoslm.audio import load_audio
    from emoslm.speech.vocoder import log_mel

    tokenizer = SpeechTokenizer.from_pretrained(tokenizer_dir)
    part = recipe.part(part_name)
    train_clips = _pick(clips, "train", recipe.max_clips)
    frames = frame_cache(tokenizer.config.encoder, train_clips, progress, tokenizer.config.layers)
    codes = [tokenizer.encode_frames(frames(c.audio)) for c in train_clips]
    mels = [log_mel(load_audio(c.audio)) for c in train_clips]
    every = np.concatenate([m[:, ::4] for m in mels], axis=1)
    config = DecoderConfig(**{**asdict(recipe.decoder), "codes": tokenizer.config.codes, "unit_rate": tokenizer.rate,
                              "mel_mean": round(float(every.mean()), 4), "mel_std": round(float(every.std()), 4),
                              "tokenizer": str(Path(tokenizer_dir).resolve())})
    decoder = UnitDecoder(config)
    decoder.speakers = speaker_table(decoder, train_clips)
    if not config.default_speaker:
        config.default_speaker = sorted(decoder.speakers)[0]
    mels = [decoder.normalise(m) for m in mels]
    dataset = UnitsAndMel(train_clips, codes, mels, decoder.speakers, config.upsample, part.crop_units, part.seed)
    torch.manual_seed(part.seed)
    model = UnitToMel(config)

    trained = fit(part, out, model, dataset, collate_units, decoder_loss, progress, stop_after)
    if trained is None:
        return None
    result = UnitDecoder(config, trained.cpu(), decoder.speakers)
    result.save_pretrained(out / "final")
    return result


def train_parts(recipe_path: Path, out: Path, parts: list[str], progress: Start = silent) -> dict[str, str]:
    """``emoslm units train``: the named parts in order (a decoder after the tokenizer it decodes), each
    resumed where a killed run stopped and skipped when its ``final/`` exists. Returns part → folder."""
    import shutil

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise EmoslmError(f"unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    recipe = load_recipe(recipe_path)
    if recipe.tokenizer.kind != "vq" and any(p in parts for p in ("tokenizer", "decoder")):
        raise EmoslmError(f"{recipe_path}: its tokenizer is {recipe.tokenizer.kind}, which has no VQ tokenizer to "
                          f"train; pass --part kmeans,decoder-kmeans")
    out.mkdir(parents=True, exist_ok=True)
    if Path(recipe_path).resolve() != (out / "recipe.yaml").resolve():
        shutil.copyfile(recipe_path, out / "recipe.yaml")  # the evaluation reads the languages from it
    clips = corpus_clips(recipe.langs, progress, sources=recipe.sources)
    done = {}
    for part in [p for p in PARTS if p in parts]:
        folder = out / part
        if not (folder / "final" / "config.json").exists():
            if part == "tokenizer":
                train_tokenizer(recipe, clips, folder, progress)
            elif part == "kmeans":
                train_kmeans(recipe, clips, folder, progress)
            else:
                source = out / ("tokenizer" if part == "decoder" else "kmeans") / "final"
                if not (source / "config.json").exists():
                    raise EmoslmError(f"{part} decodes the units of {source.parent.name}, which is not trained yet; "
                                      f"add it to --part")
                train_decoder(recipe, clips, source, folder, progress, part_name=part)
        done[part] = str(folder / "final")
    return done
