"""Short ablations of the VQ speech tokenizer: what keeps its transcript loss high?

Each variant trains ``recipes/units-tiny.yaml``'s bottleneck from scratch on the same cached encoder frames,
batches and learning-rate schedule (warm-up 50, cosine over 1,200 steps), and every 50 steps prints the
transcript loss through the units on the 48 held-out clips ``emoslm units train`` also watches. Variants are
patched in here, not in the library, because most of them lost (see README.md beside this file).

    python reports/units-ablation/ablation.py VARIANT STEPS [THREADS] >> reports/units-ablation/runs.jsonl
    python reports/units-ablation/ablation.py --plot
    python reports/units-ablation/ablation.py --gap runs/units-3/tokenizer/final

``--gap`` compares the transcript loss through a trained tokenizer's units on 48 random training clips and on
the 48 held-out ones, and the frozen decoder's loss on the real frames of both: it tells memorising (low on
training clips) from underfitting (high on both).

Variants (names combine): ``base`` the recipe as is; ``cont`` no quantiser (the normalised 64-d latent goes
straight on); ``deep`` three rebuild layers instead of one; ``ln`` the rebuilt memory ends in a LayerNorm
started from Whisper's final encoder norm; ``rec`` adds a frame loss (weight 1: the MSE of the rebuilt
memory to the real frames, in units of their variance); ``preN`` trains on the frame loss alone for the first
N steps; ``vocab`` trains through a softmax over only the tokens the training transcripts use (a cheaper
step; held-out losses still use the full vocabulary); ``kl`` adds the KL divergence to the frozen decoder's
own next-token distribution on the real frames (WhisperSpeech's distillation target).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def frame_distance(memory: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of the rebuilt memory from the encoder's frames over real frames only, in units of
    the variance of all their values (1.0: no better than one constant, their mean)."""
    target = frames[:, : memory.shape[1]][mask.bool()]
    return ((memory[mask.bool()] - target) ** 2).mean() / target.var().clamp(min=1e-6)


def run(variant: str, steps: int, threads: int) -> None:
    from emoslm.speech.units.tokenizer import Bottleneck
    from emoslm.speech.whisper_ct2 import decode_logits, load_whisper_decoder, load_whisper_encoder
    from emoslm.train import units
    from emoslm.train.data import LengthBatches

    torch.set_num_threads(threads)
    recipe = units.load_recipe(HERE.parent.parent / "recipes" / "units-tiny.yaml")
    clips = units.corpus_clips(recipe.langs, render=False, sources=recipe.sources)
    train = [c for c in clips if c.split == "train"]
    held = [c for c in clips if c.split == "test"][:48]
    frames = units.frame_cache("whisper-base", train + held)
    decoder = load_whisper_decoder("whisper-base").requires_grad_(False)
    text = units.WhisperText("whisper-base")
    dataset, held_set = units.FramesAndText(train, frames, text), units.FramesAndText(held, frames, text)
    held_batch = units.collate_frames([held_set[i] for i in range(len(held))])
    torch.manual_seed(0)
    config = recipe.tokenizer
    model = Bottleneck(config)
    if "deep" in variant:
        layer = nn.TransformerEncoderLayer(512, nhead=8, dim_feedforward=1024, dropout=0.0, batch_first=True,
                                           norm_first=True)
        model.mixer = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)
    if "ln" in variant:
        norm = nn.LayerNorm(512)
        norm.load_state_dict(load_whisper_encoder("whisper-base").layer_norm.state_dict())
        rebuild = model._memory

        def normed(quantised: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            memory, memory_mask = rebuild(quantised, mask)
            return norm(memory), memory_mask

        model.final, model._memory = norm, normed  # as a submodule, the norm is trained with the rest
    if "cont" in variant:
        model.quantizer.forward = lambda x, mask: (nn.functional.normalize(x, dim=-1),
                                                   torch.zeros(x.shape[:2], dtype=torch.long), x.sum() * 0)
    collate, train_decoder = units.collate_frames, decoder
    if "vocab" in variant:  # the softmax over the tokens the training transcripts use, not all 51,865
        from types import SimpleNamespace

        used = sorted({t for ids in dataset.ids for t in ids})
        index = torch.full((decoder.embed_tokens.weight.shape[0],), -100, dtype=torch.long)
        index[used] = torch.arange(len(used))
        train_decoder = SimpleNamespace(  # what decode_logits reads, with the smaller token table
            embed_tokens=nn.Embedding.from_pretrained(decoder.embed_tokens.weight[used].clone()),
            embed_positions=decoder.embed_positions, layers=decoder.layers, layer_norm=decoder.layer_norm)

        def collate(items: list[dict]) -> dict[str, torch.Tensor]:
            batch = units.collate_frames(items)
            labels = batch["labels"]
            batch["ids"] = index[batch["ids"]].clamp(min=0)
            batch["labels"] = torch.where(labels == -100, labels, index[labels.clamp(min=0)])
            return batch

        print(json.dumps({"variant": variant, "vocabulary": len(used)}), file=sys.stderr)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=LengthBatches(dataset.lengths, 16, 0),
                                         collate_fn=collate)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / 1200))))
    pre = int(variant.split("pre")[1]) if "pre" in variant else 0
    step, started, losses = 0, time.perf_counter(), []

    def loss_of(batch: dict[str, torch.Tensor], training: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        result = model(batch["frames"], batch["mask"])
        commit = config.commitment * result["commit"]
        if training and ("rec" in variant or step < pre):
            distance = frame_distance(result["memory"], batch["frames"], result["memory_mask"])
        if training and step < pre:
            return distance, distance + commit
        logits = decode_logits(train_decoder if training else decoder, batch["ids"], result["memory"],
                               result["memory_mask"])
        ce = nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        total = ce + commit + (distance if training and "rec" in variant else 0)
        if "kl" in variant and training:
            with torch.no_grad():
                teacher = decode_logits(decoder, batch["ids"], batch["frames"], batch["mask"])
            keep = batch["labels"] != -100
            total = total + nn.functional.kl_div(logits[keep].log_softmax(-1), teacher[keep].log_softmax(-1),
                                                 log_target=True, reduction="batchmean")
        return ce, total

    restarts = torch.Generator().manual_seed(1)
    while step < steps:
        for batch in loader:
            model.train()
            shown, total = loss_of(batch)
            total.backward()
            optimiser.step()
            schedule.step()
            optimiser.zero_grad()
            step += 1
            losses.append(float(shown.detach()))
            if "cont" not in variant and (step == 1 or step % 25 == 0):
                with torch.no_grad():
                    latent = model(batch["frames"], batch["mask"])["latent"]
                model.quantizer.restart_dead(latent, units._pooled_mask(model, batch["mask"]), config.dead_below,
                                             restarts)
            if step % 50 == 0 or step == pre:
                model.eval()
                with torch.no_grad():
                    held_loss = float(loss_of(held_batch, training=False)[0])
                print(json.dumps({"variant": variant, "step": step, "train": round(float(np.mean(losses[-50:])), 3),
                                  "held": round(held_loss, 3), "s": round(time.perf_counter() - started)}), flush=True)
            if step >= steps:
                break


def gap(tokenizer_dir: str) -> None:
    import random

    from emoslm.speech.units.tokenizer import SpeechTokenizer
    from emoslm.speech.whisper_ct2 import decode_logits, load_whisper_decoder
    from emoslm.train import units

    recipe = units.load_recipe(HERE.parent.parent / "recipes" / "units-tiny.yaml")
    clips = units.corpus_clips(recipe.langs, render=False, sources=recipe.sources)
    held = [c for c in clips if c.split == "test"][:48]
    train = random.Random(0).sample([c for c in clips if c.split == "train"], 48)
    frames = units.frame_cache("whisper-base", held + train)
    decoder, text = load_whisper_decoder("whisper-base"), units.WhisperText("whisper-base")
    model = SpeechTokenizer.from_pretrained(tokenizer_dir).bottleneck.eval()
    for name, chosen in (("held-out", held), ("training", train)):
        dataset = units.FramesAndText(chosen, frames, text)
        batch = units.collate_frames([dataset[i] for i in range(len(chosen))])

        def ce(logits: torch.Tensor, batch: dict[str, torch.Tensor] = batch) -> float:
            return float(nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                                     ignore_index=-100))

        with torch.no_grad():
            real = ce(decode_logits(decoder, batch["ids"], batch["frames"], batch["mask"]))
            result = model(batch["frames"], batch["mask"])
            through = ce(decode_logits(decoder, batch["ids"], result["memory"], result["memory_mask"]))
        print(json.dumps({"clips": name, "real_frames": round(real, 3), "through_units": round(through, 3)}))


def plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (HERE / "runs.jsonl").read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    top = 4.2
    for variant in dict.fromkeys(r["variant"] for r in rows):
        points = [(r["step"], r["held"]) for r in rows if r["variant"] == variant]
        best = min(h for _, h in points)
        label = variant if best < top else f"{variant} (above the chart: best {best:.2f})"
        ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set_ylim(2.4, top)
    ax.set_xlim(40, 210)
    ax.set(xlabel="step", ylabel="held-out transcript loss (real frames: 0.53)",
           title="VQ tokenizer ablations, 48 held-out clips")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "held_out.png", dpi=110)


if __name__ == "__main__":
    if sys.argv[1:] == ["--plot"]:
        plot()
    elif sys.argv[1] == "--gap":
        gap(sys.argv[2])
    else:
        run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 2)
