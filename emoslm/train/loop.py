"""The training loop, on ``accelerate``: the same code on this CPU and on GPUs (DDP/FSDP/DeepSpeed by
accelerate config), with gradient accumulation, bf16 where the device has it, and exact resumption.

Exact resumption: each epoch's order comes from a generator seeded by (seed, epoch), a checkpoint
stores model, optimiser and RNG states plus the position in the epoch, and a resumed run skips the
batches it already took; with no dropout in the trained modules the loss curve continues as if never
interrupted. Logs go to TensorBoard (``RUN/tb``) and ``RUN/log.jsonl``; the final model is a plain
``save_pretrained`` folder (LoRA merged) in ``RUN/final``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from emoslm.atomic import atomic_dir, atomic_file
from emoslm.errors import EmoslmError
from emoslm.progress import Start, silent
from emoslm.slm.model import UnifiedSLM
from emoslm.slm.processor import MelFrontEnd
from emoslm.train.data import Collator, Example, load_examples, split
from emoslm.train.stages import apply_stage, merge_lora


@dataclass
class TrainConfig:
    stage: str
    data: str  # an IEAT build folder
    out: str  # the run folder
    init: str | None = None  # a UnifiedSLM folder to start from (stage 1-2 starts from stage 1-1's final)
    llm: str = "smollm2-135m-instruct"
    encoder: str = "whisper-tiny.en"
    adapter_dim: int = 512
    epochs: int = 1
    max_steps: int = 0  # 0: the epochs decide
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-3
    lora_r: int = 16
    lora_alpha: int = 32
    held_out: float = 0.1
    seed: int = 0
    save_every: int = 50
    log_every: int = 5
    max_target_tokens: int = 160
    mixed_precision: str = "auto"  # auto | no | bf16


def load_model(config: TrainConfig) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    from emoslm.slm.generate import from_parts
    from emoslm.slm.model import UnifiedSLM

    torch.manual_seed(config.seed)
    if config.init:
        init = Path(config.init)
        if not (init / "config.json").exists():
            raise EmoslmError(f"{init}: not a UnifiedSLM checkpoint (no config.json); give a run's final/ folder")
        try:
            return UnifiedSLM.from_pretrained(init), AutoTokenizer.from_pretrained(init)
        except (OSError, ValueError, KeyError) as exc:
            raise EmoslmError(f"{init}: cannot load the checkpoint ({str(exc).splitlines()[0][:160]})") from None
    return from_parts(config.llm, config.encoder, adapter_dim=config.adapter_dim)


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _batches(examples: list[Example], config: TrainConfig, epoch: int) -> list[list[Example]]:
    order = _order(len(examples), config.seed, epoch)
    return [[examples[i] for i in order[k:k + config.batch_size]] for k in range(0, len(order), config.batch_size)]


def held_out_loss(model: Any, collate: Collator, examples: list[Example], batch_size: int = 4) -> float:
    """Mean token loss on clips never trained on."""
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for k in range(0, len(examples), batch_size):
            batch = collate(examples[k:k + batch_size])
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            tokens += n
    model.train()
    return total / max(1, tokens)


def train(config: TrainConfig, progress: Start = silent, stop_after: int | None = None) -> dict[str, Any]:
    """Train one stage; resumes from ``RUN/checkpoint`` when it exists. ``stop_after`` ends early (tests)."""
    from accelerate import Accelerator

    out = Path(config.out)
    examples = load_examples(Path(config.data), config.stage)
    train_set, held = split(examples, config.held_out, config.seed)
    model, tokenizer = load_model(config)
    trainable = apply_stage(model, config.stage, config.lora_r, config.lora_alpha)
    optimiser = torch.optim.AdamW(trainable, lr=config.lr)
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, log_with="tensorboard",
                              project_dir=str(out), mixed_precision=_mixed_precision(config.mixed_precision))
    model, optimiser = accelerator.prepare(model, optimiser)
    accelerator.init_trackers("tb", config=asdict(config))
    n_mels = accelerator.unwrap_model(model).config.encoder().num_mel_bins
    front_end = MelFrontEnd.from_pretrained(config.init or "", n_mels=n_mels)
    collate = Collator(tokenizer, UnifiedSLM.speech_length, front_end, config.max_target_tokens)
    per_epoch = math.ceil(len(train_set) / config.batch_size)
    total = config.max_steps or per_epoch * config.epochs // config.grad_accum
    step, position = _resume(accelerator, out, config)
    _write(out / "run.json", {"config": asdict(config), "train_keys": sorted({e.key for e in train_set}),
                              "held_out_keys": sorted({e.key for e in held})})
    advance = progress(f"stage {config.stage}", total)
    advance(step)
    started, seen_tokens, batches_done = time.perf_counter(), 0, position
    model.train()
    while step < total:
        epoch, offset = divmod(batches_done, per_epoch)
        batch_examples = _batches(train_set, config, epoch)[offset]
        batch = collate(batch_examples)
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimiser.step()
            optimiser.zero_grad()
        batches_done += 1
        seen_tokens += int(batch["attention_mask"].sum())
        if not accelerator.sync_gradients:
            continue
        step += 1
        advance()
        record = {"step": step, "loss": round(float(loss.detach()), 5),
                  "tokens_per_s": round(seen_tokens / max(1e-9, time.perf_counter() - started), 1)}
        accelerator.log({"loss": record["loss"], "tokens_per_s": record["tokens_per_s"]}, step=step)
        _append(out / "log.jsonl", record)
        if step % config.save_every == 0 or step == total:
            _checkpoint(accelerator, out, config.stage, step, batches_done)
        if stop_after is not None and step >= stop_after:
            accelerator.end_training()
            return {"stopped_at": step}
    loss_held = held_out_loss(model, collate, held) if held else None
    accelerator.log({"held_out_loss": loss_held or 0.0}, step=step)
    accelerator.end_training()
    final = merge_lora(accelerator.unwrap_model(model))
    with atomic_dir(out / "final") as tmp:
        final.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        front_end.save_pretrained(tmp)
    summary = {"stage": config.stage, "steps": step, "train_examples": len(train_set), "held_out_examples": len(held),
               "held_out_loss": loss_held, "seconds": round(time.perf_counter() - started, 1)}
    _write(out / "summary.json", summary)
    return summary


def _resume(accelerator: Any, out: Path, config: TrainConfig) -> tuple[int, int]:
    state = out / "checkpoint" / "position.json"
    if not state.exists():
        return 0, 0
    saved = json.loads(state.read_text())
    if saved["stage"] != config.stage:
        raise EmoslmError(f"{out} holds a stage {saved['stage']} run; use another --out for stage {config.stage}")
    accelerator.load_state(str(out / "checkpoint"))
    _truncate_log(out / "log.jsonl", saved["step"])
    return saved["step"], saved["batches_done"]


def _checkpoint(accelerator: Any, out: Path, stage: str, step: int, batches_done: int) -> None:
    with atomic_dir(out / "checkpoint") as tmp:
        accelerator.save_state(str(tmp))
        (tmp / "position.json").write_text(json.dumps({"step": step, "batches_done": batches_done, "stage": stage}))


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines after the checkpoint, so a resumed run's log reads as one run."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))
