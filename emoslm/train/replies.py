"""Train the reply adapter: a LoRA of the reply LLM on the committed empathetic-dialogue corpus (issue 32).

``emoslm train replies recipes/replies.yaml`` reads ``corpora/empathy`` (dropping anything near the
evaluation dialogues), renders every turn as the agent prompts it (system prompt without worked examples,
the last exchanges, the injected think opening) with the cause, the closed think and the reply as the target,
trains a LoRA on the top layers and writes it as a GGUF adapter llama.cpp loads at run time
(``RUN/reply-lora.gguf``; ``emoslm/llm/shipped/`` holds the one this recipe made).

It runs on the training loop's machinery (``train.loop``: the accelerator, a seeded ``DataLoader`` through
``accelerator.prepare``, checkpoints with RNG state and exact resume, ``log.jsonl``); only the model (a
plain causal LM with a PEFT LoRA) and the data differ from the unified model's stages. On a CPU with bf16
instructions the frozen base runs in bf16 (measured on Qwen2.5-1.5B, 4 × 256 tokens, half the layers adapted,
2 cores: 17–20 s a step in bf16 against 30 s in float32); the adapter itself trains in float32.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from emoslm.errors import EmoslmError
from emoslm.ieat.reply_corpus import CORPUS_DIR, Sample, decontaminate, read_corpus, render_samples
from emoslm.progress import Start, silent
from emoslm.think import empathy_system

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ReplyTrainConfig:
    out: str = "runs/replies"
    llm: str = "qwen2.5-coder-1.5b-instruct"
    corpus: list[str] = field(default_factory=lambda: [str(CORPUS_DIR)])
    lora_r: int = 8
    lora_alpha: int = 16
    top_layers: int = 14  # adapt the top half: backpropagation stops there (~1.6× faster than all layers)
    targets: list[str] = field(default_factory=lambda: list(TARGETS))
    lr: float = 2e-4
    epochs: int = 1
    max_steps: int = 0
    batch_size: int = 4
    grad_accum: int = 1
    max_tokens: int = 384  # longer samples are dropped (counted in the summary)
    history_turns: int = 2
    held_out: float = 0.1  # share of dialogues held out (their loss is reported before and after)
    # similarity to an evaluation user turn at which a dialogue is dropped: MiniLM cosine (en), character
    # bigram cosine (zh)
    decontaminate: dict[str, float] = field(default_factory=lambda: {"en": 0.75, "zh": 0.5})
    base_dtype: str = "auto"  # auto: bfloat16 where the CPU/GPU computes it, else float32
    seed: int = 0
    save_every: int = 10
    stage: str = "replies"  # the checkpoint's tag (a run folder holds one kind of run)
    mixed_precision: str = "no"  # set from base_dtype
    balance: Any = None


def reply_config(path: Path, **overrides: Any) -> ReplyTrainConfig:
    """The ``replies`` section of a YAML recipe (paths relative to the recipe), then ``overrides``."""
    import yaml

    from emoslm.errors import DataError

    if not path.is_file():
        raise DataError(f"{path}: no such recipe file")
    try:
        section = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("replies")
    except (yaml.YAMLError, AttributeError):
        raise DataError(f"{path}: not a YAML mapping") from None
    if not isinstance(section, dict):
        raise DataError(f"{path}: no 'replies' section (see recipes/replies.yaml)")
    known = {f.name for f in fields(ReplyTrainConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise DataError(f"{path}: replies: unknown key(s) {unknown}; known: {sorted(known)}")
    base = path.resolve().parent
    if "out" in section:
        section["out"] = str((base / section["out"]).resolve())
    if "corpus" in section:
        section["corpus"] = [str((base / p).resolve()) for p in section["corpus"]]
    section.update({k: str(v) if isinstance(v, Path) else v for k, v in overrides.items() if v is not None})
    return ReplyTrainConfig(**section)


def bf16_available() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def held_out_texts(lang: str) -> list[str]:
    """Every user turn of the evaluation dialogues (the corpus must hold nothing near them)."""
    from emoslm.dialogues import examples_dir, read_dialogues

    return [t.text for d in read_dialogues(examples_dir() / f"{lang}.jsonl") for t in d.turns]


def character_bigrams(texts: list[str]) -> Any:
    """Unit vectors of character-bigram counts: near-copies of a Mandarin line share most of its bigrams."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vectors = HashingVectorizer(analyzer="char", ngram_range=(2, 2), n_features=2**18, alternate_sign=False)
    return vectors.transform([re.sub(r"\[\w+\]|\s", "", t) for t in texts]).toarray()


def corpus_samples(config: ReplyTrainConfig, render: Any, end: str) -> dict[str, Any]:
    """The corpus, decontaminated and split by dialogue, as prompt/target samples."""
    from emoslm.perception.text_emotion import load_sentence_model

    dialogues = read_corpus([Path(p) for p in config.corpus])
    if not dialogues:
        raise EmoslmError(f"no dialogues in {config.corpus}")
    model = load_sentence_model()
    embed = {"en": lambda texts: model.encode(texts, normalize_embeddings=True, batch_size=64),
             "zh": character_bigrams}  # the packaged MiniLM is English: any two Mandarin lines score ~0.8
    kept, dropped = [], []
    for lang in ("en", "zh"):
        mine = [d for d in dialogues if d.lang == lang]
        k, d = decontaminate(mine, held_out_texts(lang), embed[lang], config.decontaminate[lang])
        kept, dropped = kept + k, dropped + d
    order = sorted(kept, key=lambda d: d.id)
    random.Random(config.seed).shuffle(order)
    n_held = max(1, round(len(order) * config.held_out)) if config.held_out > 0 else 0
    parts: dict[str, list[Sample]] = {"train": [], "held": []}
    for k, dialogue in enumerate(order):
        system = empathy_system(dialogue.lang, examples=False)
        parts["held" if k < n_held else "train"] += render_samples(dialogue, render, system, end,
                                                                  config.history_turns)
    return {**parts, "dropped": dropped, "dialogues": len(dialogues)}


class Tokenised:
    """Samples as token ids with the prompt masked out of the loss; over-long ones dropped."""

    def __init__(self, samples: list[Sample], tokenizer: Any, max_tokens: int) -> None:
        self.items, self.too_long = [], 0
        for sample in samples:
            prompt = tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
            target = tokenizer(sample.target, add_special_tokens=False)["input_ids"]
            if len(prompt) + len(target) > max_tokens:
                self.too_long += 1
                continue
            self.items.append((prompt + target, [-100] * len(prompt) + target))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[list[int], list[int]]:
        return self.items[index]


def collate(pad_id: int) -> Any:
    def batch(items: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (tokens, targets) in enumerate(items):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            labels[row, : len(targets)] = torch.tensor(targets)
            mask[row, : len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return batch


def target_loss(model: Any, data: Tokenised, batch_of: Any, batch_size: int = 4) -> float:
    """Mean loss per target token (cause, think end, reply) over ``data``."""
    from accelerate.utils import send_to_device

    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for k in range(0, len(data), batch_size):
            batch = send_to_device(batch_of([data[i] for i in range(k, min(len(data), k + batch_size))]), device)
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            count += n
    model.train()
    return round(total / max(1, count), 4)


def load_lora_model(config: ReplyTrainConfig) -> tuple[Any, Any, str]:
    """The base LLM (from the same GGUF llama.cpp runs) with a fresh LoRA on its top layers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emoslm.llm.hf import hf_checkpoint

    torch.manual_seed(config.seed)
    path = hf_checkpoint(config.llm)
    dtype = torch.bfloat16 if config.base_dtype == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    layers = model.config.num_hidden_layers
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=config.targets,
                      layers_to_transform=list(range(max(0, layers - config.top_layers), layers)),
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    return model, AutoTokenizer.from_pretrained(path), model.config.model_type


def train_replies(config: ReplyTrainConfig, progress: Start = silent) -> dict[str, Any]:
    """Train (resuming from ``RUN/checkpoint``), then write ``RUN/reply-lora.gguf`` and ``RUN/summary.json``."""
    from peft import get_peft_model_state_dict
    from torch.utils.data import DataLoader

    from emoslm.llm.gguf_lora import write_gguf_lora
    from emoslm.llm.llama_cpp import gguf_template
    from emoslm.store import resolve
    from emoslm.train.loop import (
        accelerator_for,
        append_log,
        epoch_batches,
        resume_position,
        save_checkpoint,
        write_json,
    )

    if config.base_dtype == "auto":
        config.base_dtype = "bfloat16" if bf16_available() else "float32"
    config.mixed_precision = "bf16" if config.base_dtype == "bfloat16" else "no"
    out = Path(config.out)
    template = gguf_template(resolve(config.llm).require_path())
    model, tokenizer, architecture = load_lora_model(config)
    samples = corpus_samples(config, template.render, tokenizer.eos_token or "<|im_end|>")
    train_set = Tokenised(samples["train"], tokenizer, config.max_tokens)
    held = Tokenised(samples["held"], tokenizer, config.max_tokens)
    batch_of = collate(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    accelerator = accelerator_for(config, out)
    loader = accelerator.prepare(DataLoader(train_set, batch_size=config.batch_size, shuffle=True, collate_fn=batch_of,
                                            generator=torch.Generator().manual_seed(config.seed)))
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    model, optimiser = accelerator.prepare(model, optimiser)
    per_epoch = len(loader)
    total = config.max_steps or per_epoch * config.epochs // config.grad_accum
    step, batches_done = resume_position(accelerator, out, config)
    write_json(out / "run.json", {"config": asdict(config), "train_samples": len(train_set),
                                  "held_out_samples": len(held), "dropped_near_evaluation": samples["dropped"]})
    before = write_once(out / "held_out_before.json", lambda: target_loss(model, held, batch_of))
    advance = progress("reply adapter", total)
    advance(step)
    started = time.perf_counter()
    model.train()
    while step < total:
        epoch, offset = divmod(batches_done, per_epoch)
        for batch in epoch_batches(loader, accelerator, epoch, offset):
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimiser.step()
                optimiser.zero_grad()
            batches_done += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            advance()
            append_log(out / "log.jsonl", {"step": step, "loss": round(float(loss.detach()), 5)})
            if step % config.save_every == 0 or step == total:
                save_checkpoint(accelerator, out, config.stage, step, batches_done)
            if step >= total:
                break
    after = target_loss(model, held, batch_of)
    unwrapped = accelerator.unwrap_model(model)
    adapter = write_gguf_lora(get_peft_model_state_dict(unwrapped), config.lora_alpha, architecture,
                              out / "reply-lora.gguf")
    summary = {"steps": step, "train_samples": len(train_set), "held_out_samples": len(held),
               "too_long": train_set.too_long + held.too_long, "corpus_dialogues": samples["dialogues"],
               "dropped_near_evaluation": len(samples["dropped"]),
               "held_out_loss_before": before, "held_out_loss_after": after, "base_dtype": config.base_dtype,
               "seconds": round(time.perf_counter() - started, 1), "adapter": str(adapter),
               "adapter_bytes": adapter.stat().st_size}
    write_json(out / "summary.json", summary)
    accelerator.end_training()
    return summary


def write_once(path: Path, compute: Any) -> Any:
    """A figure computed once per run (a resumed run keeps the first one)."""
    import json

    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return value
