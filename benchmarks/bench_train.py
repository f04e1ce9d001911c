"""Training speed of the SLM stages: random batches against batches of similar length, fp32 against bf16 autocast.

Measured side by side in one run on a real build (default: ``make learn``'s, ``runs/learn-en``), stage 1-2 from
stage 1-1's final/ as the recipe trains it:

- padding: the tokens a batch holds (its rows padded to the longest) over the real tokens, for one epoch of each
  stage, random batches against ``LengthBatches``;
- speed: real (unpadded) tokens per second over ``--steps`` optimiser steps of stage 1-2 for each variant, and
  what that makes one epoch of the stage last. The held-out loss each run ends with is not counted.

Writes ``benchmarks/results/train.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.native import cpu_flags, cpu_name  # noqa: E402
from emoslm.train.recipe import train_config  # noqa: E402

VARIANTS = {  # name → (mixed_precision, length_batches)
    "fp32, random batches (before)": ("no", False),
    "fp32, length batches": ("no", True),
    "bf16 autocast, length batches": ("bf16", True),
}


def padding(recipe: Path, stage: str, batch_size: int) -> dict[str, float]:
    """Padded over real tokens for one epoch of ``stage``'s training examples, random vs length-sorted batches."""
    from transformers import AutoTokenizer

    from emoslm.llm.hf import hf_checkpoint
    from emoslm.slm.model import UnifiedSLM
    from emoslm.train.data import Collator, LengthBatches, load_examples, split

    config = train_config(recipe, stage)
    examples, _ = split(load_examples(Path(config.data), stage, reply_audio=False), config.held_out, config.seed,
                        config.held_out_voices)

    class Duration:  # a row's speech positions from the clip's length (no encoder needed)
        def shape(self, audio: Path) -> tuple[int, int]:
            import soundfile

            return (int(soundfile.info(str(audio)).duration * 50), 1)  # 50 encoder frames a second

    collate = Collator(AutoTokenizer.from_pretrained(hf_checkpoint(config.llm)), UnifiedSLM.speech_length, Duration(),
                       config.max_target_tokens)
    lengths = [collate.length(e) for e in examples]
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]

    def held(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    real = sum(lengths)
    return {"examples": len(lengths), "real_tokens": real, "random": round(held(shuffled) / real, 3),
            "length_batches": round(held(list(LengthBatches(lengths, batch_size, config.seed))) / real, 3)}


def speed(recipe: Path, steps: int, work: Path) -> dict[str, dict[str, float]]:
    from emoslm.train.loop import train

    rows = {}
    for name, (precision, grouped) in VARIANTS.items():
        out = work / name.split(",")[0] / str(grouped)
        config = train_config(recipe, "1-2", out=out, max_steps=steps, listen_clips=0, save_every=10 ** 6,
                              mixed_precision=precision, length_batches=grouped, stop_on_collapse=False)
        if not config.init:
            raise SystemExit(f"{recipe}: stage 1-1 has no final/ yet; run `make learn` (or its stage 1-1) first")
        train(config)
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        rows[name] = {"steps": len(log), "real_tokens_per_s": log[-1]["tokens_per_s"],
                      "loss_first": log[0]["loss"], "loss_last": log[-1]["loss"]}
        shutil.rmtree(out, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT.parent / "recipes" / "learn-en.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    batch = train_config(args.recipe, "1-2").batch_size
    pads = {stage: padding(args.recipe, stage, batch) for stage in ("1-1", "1-2")}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
        rows = speed(args.recipe, args.steps, Path(work))
    epoch_tokens = pads["1-2"]["real_tokens"]
    for row in rows.values():
        row["epoch_minutes"] = round(epoch_tokens / row["real_tokens_per_s"] / 60, 1)
    before = rows["fp32, random batches (before)"]["real_tokens_per_s"]
    for row in rows.values():
        row["speed_ratio"] = round(row["real_tokens_per_s"] / before, 2)
    flags = cpu_flags()
    machine = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "python": platform.python_version(),
               "torch": torch.__version__,
               "flags": sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))}
    result = {"recipe": str(args.recipe), "batch_size": batch, "steps": args.steps, "padding": pads,
              "stage_1_2": rows, "machine": machine}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps(result, indent=2))
    lines = [f"# SLM training speed ({args.recipe.name}, batch {batch}, {args.steps} steps of stage 1-2 each)", "",
             f"Machine: {machine['cpu']}, {machine['threads']} threads; flags {' '.join(machine['flags'])}.", "",
             "| padding (batch tokens / real tokens, one epoch) | random batches | length batches |", "|---|---|---|"]
    lines += [f"| stage {s} ({p['examples']} examples) | {p['random']} | {p['length_batches']} |"
              for s, p in pads.items()]
    lines += ["", "| stage 1-2 | real tokens/s | × before | one epoch (min) | loss first → last step |",
              "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['real_tokens_per_s']} | **{r['speed_ratio']}×** | {r['epoch_minutes']} | "
              f"{r['loss_first']} → {r['loss_last']} |" for name, r in rows.items()]
    lines += ["", "Command: `python benchmarks/bench_train.py` (after `make learn`'s stage 1-1). The batches of a "
                  "variant differ (random vs sorted by length), so the losses are not step-for-step comparable."]
    (args.out / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
