"""The training loop, on ``accelerate``: the same code on this CPU and on GPUs (DDP/FSDP/DeepSpeed by
accelerate config), with gradient accumulation, bf16 where the device has it, and exact resumption.

Data goes through a ``DataLoader`` that ``accelerator.prepare`` shards (each rank its own batches, moved
to its device) with a seedable sampler (epoch e's order is seed + e on every rank). The frozen encoder's
frames come from a per-clip cache (``frames.py``), so no step runs the encoder or decodes audio.
Exact resumption: a checkpoint stores model, optimiser and RNG states plus the number of batches
taken, and a resumed run skips those batches at the sampler; with no dropout in the trained modules
the loss curve continues as if never interrupted. Logs go to TensorBoard (``RUN/tb``) and
``RUN/log.jsonl``; the final model is a plain ``save_pretrained`` folder (LoRA merged) in ``RUN/final``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from emoslm.atomic import atomic_dir, atomic_file
from emoslm.errors import EmoslmError
from emoslm.progress import Start, silent
from emoslm.slm.model import UnifiedSLM
from emoslm.train.data import BalancedSampler, Collator, Example, LengthBatches, load_examples, split, text_states
from emoslm.train.frames import FrameCache, PhonemeTargets, ProsodyCache, UnitCache, reply_text
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
    lora_lr: float = 0.0  # stage 1-2: the LoRA's own learning rate (0: lr, as the listening path)
    max_grad_norm: float = 1.0  # gradient clipping (0: off)
    held_out: float = 0.1  # share of source items (texts) held out
    held_out_voices: list[str] = field(default_factory=list)  # voices held out entirely (e.g. "kokoro:jf_alpha")
    seed: int = 0
    save_every: int = 50
    log_every: int = 5
    max_target_tokens: int = 160
    # auto: bf16 on a GPU that has it and on a CPU with AVX512-BF16 (``slm_precision``); no | bf16
    mixed_precision: str = "auto"
    length_batches: bool = True  # batches of similar length (``LengthBatches``): stage 1-2 pads 1.36x less
    balance: dict[str, float] | None = None  # target share per emotion tag (stage 1-2); None: as the data has it
    listen_clips: int = 0  # stage 1-2: held-out clips whose think is scored before training and after each epoch
    # the collapse guard (``emoslm.train.listening.CollapseGuard``): with listen_clips, a check whose replies
    # collapsed stops the stage, and final/ is the last checkpoint whose replies were still replies (RUN/best)
    stop_on_collapse: bool = True
    min_distinct_2: float = 0.3
    max_repeats_think: float = 0.2
    # stage 2 (speech branch)
    unit_decoder: str = ""  # a UnitDecoder folder (emoslm units train); its tokenizer makes the speech targets
    speech_layers: int = 4  # top-k LLM layers copied into the branch
    speech_group: int = 4  # units per step (multi-token prediction heads)
    unit_weight: float = 1.0  # loss = text loss + unit_weight × unit loss
    max_unit_steps: int = 150  # longer replies are cut to their first steps × group units
    lora: bool = False  # stage 2: LoRA on the top-k text layers too
    # the listening path (issue 33), for a model built from parts: mix every encoder layer, and an emotion
    # head on the adapter's output trained in stages 1-1 and 1-2 beside the text loss (weight emotion_weight)
    encoder_mix: bool = False
    emotion_head: bool = False
    emotion_weight: float = 0.5
    emotion_prosody: bool = False  # the head reads the clip's prosodic functionals too
    inject_emotion: bool = False  # the think starts with what the head hears (generate.injected_opening)
    emotion_frame_dropout: float = 0.0  # dropout on the head's frame term; 1.0 with prosody: prosody alone
    emotion_lr: float = 0.0  # the emotion head's own learning rate (0: lr): a linear head on 18 prosodic
    # functionals learns in a few hundred steps at 1e-2 (0.38-0.40 on unheard voices) and stays at 0.32 at 1e-3


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
    return from_parts(config.llm, config.encoder, adapter_dim=config.adapter_dim, encoder_mix=config.encoder_mix,
                      emotion_head=config.emotion_head, emotion_weight=config.emotion_weight,
                      emotion_prosody=config.emotion_prosody, inject_emotion=config.inject_emotion,
                      emotion_frame_dropout=config.emotion_frame_dropout)


def give_voice(model: UnifiedSLM, config: TrainConfig) -> Any:
    """Stage 2: the speech targets (a ``UnitCache`` of ``unit_decoder``'s tokenizer, or ``PhonemeTargets`` for
    ``kokoro[:VOICE]``), and the model's speech branch (added when the model has none yet; a stage 2
    checkpoint keeps its own)."""
    from emoslm.slm.speak import SpeechSpec
    from emoslm.speech.units.files import tokenizer_of
    from emoslm.speech.units.phonemes import SYMBOLS_PER_SECOND, parse_spec
    from emoslm.speech.units.tokenizer import SpeechTokenizer

    named = config.unit_decoder or (model.speech_spec.decoder if model.speech_spec else "")
    if voice := parse_spec(named):
        targets = PhonemeTargets()
        if model.speech_branch is None:
            model.add_speech_branch(SpeechSpec(units=targets.vocab.size, layers=config.speech_layers,
                                               group=config.speech_group, rate=SYMBOLS_PER_SECOND,
                                               decoder=f"kokoro:{voice}", hold=targets.vocab.hold))
        model.unit_weight = config.unit_weight
        return targets
    decoder = Path(named)
    if named and decoder.is_dir() and not (decoder / "config.json").exists() and _cosyvoice(decoder):
        return _cosyvoice_units(model, config, decoder)
    if not str(decoder) or not (decoder / "config.json").exists():
        raise EmoslmError(f"stage 2 needs train.unit_decoder: a unit decoder folder from `emoslm units train`, "
                          f"a CosyVoice model folder or kokoro[:VOICE] (got '{decoder}')")
    source = tokenizer_of(decoder)
    if source is None or not (source / "config.json").exists():
        raise EmoslmError(f"{decoder}: its speech tokenizer ({source}) is missing; train the units again")
    tokenizer = SpeechTokenizer.from_pretrained(source)
    if model.speech_branch is None:
        model.add_speech_branch(SpeechSpec(units=tokenizer.config.codes, layers=config.speech_layers,
                                           group=config.speech_group, rate=tokenizer.rate,
                                           decoder=str(decoder.resolve())))
    model.unit_weight = config.unit_weight
    return UnitCache(tokenizer, source)


def _cosyvoice(folder: Path) -> bool:
    from emoslm.speech.units.cosyvoice import TOKENIZERS

    return any((folder / name).exists() for name in TOKENIZERS)


def _cosyvoice_units(model: UnifiedSLM, config: TrainConfig, folder: Path) -> Any:
    """The GPU-scale configuration: CosyVoice's S3 tokens (v1 50 Hz / 4,096, v2 25 Hz / 6,561) as the targets,
    its token2wav as the voice; the cache is keyed by the tokenizer ONNX alone (the folder holds GBs of LLM)."""
    from emoslm.slm.speak import SpeechSpec
    from emoslm.speech.units.cosyvoice import CosyVoiceTokenizer

    tokenizer = CosyVoiceTokenizer(folder)
    if model.speech_branch is None:
        model.add_speech_branch(SpeechSpec(units=tokenizer.codes, layers=config.speech_layers,
                                           group=config.speech_group, rate=tokenizer.rate,
                                           decoder=str(folder.resolve())))
    model.unit_weight = config.unit_weight
    return UnitCache(tokenizer, folder, files=[tokenizer.path])


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def slm_precision(choice: str, flags: set[str] | None = None) -> str:
    """The SLM trainer's precision: ``auto`` is also bf16 on a CPU whose flags list AVX512-BF16 (autocast runs the
    frozen LLM's matmuls in native bf16: a stage 1-2 step of SmolLM2-135M took 4.3 s instead of 6.5 s on a
    2-core AVX-512 EPYC), but not where they list AMX (issue 31: VMs that list AMX and fault on it) nor on
    AVX2-only CPUs (bf16 emulated there is slower). The trainable weights and the optimiser stay fp32."""
    if choice != "auto" or torch.cuda.is_available():
        return _mixed_precision(choice)
    from emoslm.native import cpu_flags

    flags = cpu_flags() if flags is None else flags
    return "bf16" if "avx512_bf16" in flags and not any(f.startswith("amx") for f in flags) else "no"


def param_groups(model: UnifiedSLM, trainable: list[Any], config: TrainConfig) -> list[dict[str, Any]]:
    """The trainable parameters as optimiser groups: the emotion head at ``emotion_lr`` and the LLM's LoRA at
    ``lora_lr`` when set, the rest (the listening path) at ``lr``. The LLM moves at a rate ~25x below the
    adapter's in the recipes that keep their replies (BLSP-Emo: 2e-5 on the LLM, 1e-4 on the adapter)."""
    head = {id(p) for p in model.emotion_head.parameters()} if model.emotion_head is not None and config.emotion_lr \
        else set()
    lora = {id(p) for name, p in model.llm.named_parameters() if "lora_" in name} if config.lora_lr else set()
    groups = [{"params": [p for p in trainable if id(p) not in head | lora]}]
    if head:
        groups.append({"params": [p for p in trainable if id(p) in head], "lr": config.emotion_lr})
    if lora:
        groups.append({"params": [p for p in trainable if id(p) in lora], "lr": config.lora_lr})
    return [g for g in groups if g["params"]]


def prosody_for(model: UnifiedSLM, train_clips: list[Path], progress: Any = None) -> ProsodyCache | None:
    """The prosody cache for a model whose emotion head reads prosody (None otherwise). A fresh head (zero mean,
    unit scale) is standardised by the training clips' statistics before its first step; a loaded one keeps its
    own, so a resumed or later stage reads the clips exactly as the first did."""
    head = model.emotion_head
    if head is None or not head.prosody_dim:
        return None
    cache = ProsodyCache()
    cache.fill(train_clips, progress)
    if not train_clips:
        return cache
    if bool((head.prosody_mean == 0).all()) and bool((head.prosody_scale == 1).all()):
        head.fit_prosody(torch.from_numpy(np.stack([cache(c) for c in dict.fromkeys(train_clips)])))
    return cache


def make_loader(examples: list[Example], collate: Collator, config: TrainConfig, accelerator: Any) -> Any:
    """A shuffled DataLoader through ``accelerator.prepare``: a seeded sampler (the order of epoch e is
    seed + e on every rank), each rank its own shard, batches moved to the accelerator's device.
    With ``balance`` (stage 1-2) the sampler draws each emotion at its target share; else with ``length_batches``
    a batch holds examples of similar length (its rows pad to the longest)."""
    from torch.utils.data import DataLoader

    if config.balance and config.stage != "1-1":
        loader = DataLoader(examples, batch_size=config.batch_size, collate_fn=collate,
                            sampler=BalancedSampler(examples, config.balance, config.seed))
    elif config.length_batches:
        batches = LengthBatches([collate.length(e) for e in examples], config.batch_size, config.seed)
        loader = DataLoader(examples, batch_sampler=batches, collate_fn=collate)
    else:
        loader = DataLoader(examples, batch_size=config.batch_size, shuffle=True, collate_fn=collate,
                            generator=torch.Generator().manual_seed(config.seed))
    return accelerator.prepare(loader)


def epoch_batches(loader: Any, accelerator: Any, epoch: int, skip: int = 0) -> Any:
    """The batches of ``epoch``, without the first ``skip`` (taken before a checkpoint): sampler-level
    skipping, so a resumed run neither loads nor trains them again."""
    _set_epoch(loader, epoch)
    if not skip:
        return loader
    skipped = accelerator.skip_first_batches(loader, skip)
    _set_epoch(skipped, epoch)
    return skipped


def _set_epoch(loader: Any, epoch: int) -> None:
    """``loader.set_epoch``, and every batch sampler it wraps: accelerate reaches a ``LengthBatches`` itself only
    on one process, not under its shard (two ranks would see epoch 0's order every epoch)."""
    loader.set_epoch(epoch)
    inner = getattr(loader, "batch_sampler", None)
    while inner is not None:
        if hasattr(inner, "set_epoch"):
            inner.set_epoch(epoch)
        inner = getattr(inner, "batch_sampler", None)


def held_out_loss(model: Any, collate: Collator, examples: list[Example], batch_size: int = 4,
                  part: str = "text") -> float:
    """Mean loss on clips never trained on: per text token (``part="text"``; the text half of stage 2's joint
    loss, so every stage's figure is comparable), or per unit (``part="unit"``, stage 2)."""
    from accelerate.utils import send_to_device

    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for k in range(0, len(examples), batch_size):
            batch = send_to_device(collate(examples[k:k + batch_size]), device)
            batch.pop("emotion_labels", None)  # the text loss alone, comparable with a model without a head
            out = model(**batch)
            if part == "unit":
                n, loss = int((batch["unit_targets"] != -100).sum()), out.unit_loss
            else:
                n = int((batch["labels"][:, 1:] != -100).sum())
                loss = out.text_loss if getattr(out, "text_loss", None) is not None else out.loss
            total += float(loss) * n
            count += n
    model.train()
    return total / max(1, count)


def accelerator_for(config: TrainConfig, out: Path, precision: str | None = None) -> Any:
    """The run's Accelerator; ``accelerate launch --cpu`` (ACCELERATE_USE_CPU) gives CPU ranks over gloo.
    ``precision``: the caller's resolved choice (else ``config.mixed_precision``, ``auto`` meaning a GPU's bf16)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    # each run sets its own precision: a process that trains twice (make learn's stages, a sweep, the tests) would
    # otherwise be refused the second (accelerate keeps the first's). The process group (PartialState) stays.
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=cpu, gradient_accumulation_steps=config.grad_accum, log_with="tensorboard",
                              project_dir=str(out),
                              mixed_precision=precision or _mixed_precision(config.mixed_precision),
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                                         data_seed=config.seed))
    accelerator.register_save_state_pre_hook(_drop_frozen_weights)
    return accelerator


def _drop_frozen_weights(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
    """A checkpoint holds what training changes. The frozen LLM and encoder are the init model's, which a resumed
    run loads again, so writing them each time only costs disk: SmolLM2-135M's 550 MB per save here, an 8B LLM's
    16 GB on a GPU node. ``resume_position`` loads the rest with ``strict=False``."""
    for model, state in zip(models, weights, strict=True):
        frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
        for name in frozen & state.keys():
            del state[name]


def train(config: TrainConfig, progress: Start = silent, stop_after: int | None = None) -> dict[str, Any]:
    """Train one stage; resumes from ``RUN/checkpoint`` when it exists. ``stop_after`` ends early (tests)."""
    out = Path(config.out)
    from emoslm.speech.units.phonemes import parse_spec

    examples = load_examples(Path(config.data), config.stage, reply_audio=not parse_spec(config.unit_decoder))
    train_set, held = split(examples, config.held_out, config.seed, config.held_out_voices)
    accelerator = accelerator_for(config, out, slm_precision(config.mixed_precision))
    model, tokenizer = load_model(config)
    units = give_voice(model, config) if config.stage == "2" else None
    trainable = apply_stage(model, config.stage, config.lora_r, config.lora_alpha, config.lora)
    optimiser = torch.optim.AdamW(param_groups(model, trainable, config), lr=config.lr)
    model.to(accelerator.device)
    front_end = model.processor.front_end  # the init checkpoint's (a model from parts: the default for its encoder)
    frames = FrameCache.for_model(model, front_end)
    everything = train_set + held
    with accelerator.main_process_first():  # rank 0 runs the encoder once per clip; the others then read
        main = accelerator.is_main_process
        clips = [e.audio for e in everything if e.audio is not None]
        frames.fill(clips, progress("encoder frames", len(clips)) if main else None)
        if isinstance(units, PhonemeTargets):
            units.fill([reply_text(e.target) for e in everything], progress("reply phonemes", len(everything)))
        elif units is not None:
            units.fill([e.reply_audio for e in everything], progress("reply units", len(everything)) if main else None)
    heard = [e.audio for e in train_set if e.audio is not None]
    prosody = prosody_for(model, heard, progress("clip prosody", len(heard)) if main else None)
    collate = Collator(tokenizer, UnifiedSLM.speech_length, frames, config.max_target_tokens, units,
                       model.speech_spec, config.max_unit_steps,
                       emotions=model.emotion_head is not None and config.stage != "2", prosody=prosody,
                       processor=model.processor)
    if units is not None and not config.lora:  # the text path is frozen: its states for the branch, once
        collate.states = text_states(model, collate, everything, config.batch_size, accelerator.device,
                                     progress("text states", len(everything)))
    loader = make_loader(train_set, collate, config, accelerator)
    model, optimiser = accelerator.prepare(model, optimiser)
    accelerator.init_trackers("tb", config={k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                                            for k, v in asdict(config).items()})  # TensorBoard takes scalars only
    per_epoch = len(loader)
    total = config.max_steps or per_epoch * config.epochs // config.grad_accum
    step, batches_done = resume_position(accelerator, out, config)
    if accelerator.is_main_process:
        write_json(out / "run.json", {"config": asdict(config), "train_keys": sorted({e.key for e in train_set}),
                                  "held_out_keys": sorted({e.key for e in held}),
                                  "processes": accelerator.num_processes})
    advance = progress(f"stage {config.stage}", total) if accelerator.is_main_process else (lambda n=1: None)
    advance(step)
    listening = Listening(config, out, held, tokenizer)
    if step == 0:
        listening(accelerator, model, 0, step)
    started, seen_tokens = time.perf_counter(), 0
    model.train()
    while step < total:
        epoch, offset = divmod(batches_done, per_epoch)
        for batch in epoch_batches(loader, accelerator, epoch, offset):
            with accelerator.accumulate(model):
                output = model(**batch)
                loss = output.loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                optimiser.step()
                optimiser.zero_grad()
            batches_done += 1
            seen_tokens += int(batch["attention_mask"].sum())
            if not accelerator.sync_gradients:
                continue
            step += 1
            advance()
            mean_loss = float(accelerator.reduce(loss.detach(), "mean"))
            record = {"step": step, "loss": round(mean_loss, 5),
                      "tokens_per_s": round(seen_tokens / max(1e-9, time.perf_counter() - started), 1)}
            for part in ("text_loss", "unit_loss", "emotion_loss"):  # the parts of a joint loss
                if getattr(output, part, None) is not None:
                    record[part] = round(float(accelerator.reduce(getattr(output, part).detach(), "mean")), 5)
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
            if accelerator.is_main_process:
                append_log(out / "log.jsonl", record)
            if batches_done % per_epoch == 0:
                started += listening(accelerator, model, batches_done // per_epoch, step)  # not training time
                if config.stop_on_collapse and listening.stops:
                    break
            if step % config.save_every == 0 or step == total:
                save_checkpoint(accelerator, out, config.stage, step, batches_done)
            if stop_after is not None and step >= stop_after:
                accelerator.end_training()
                return {"stopped_at": step}
            if step >= total:
                break
        if config.stop_on_collapse and listening.stops:
            save_checkpoint(accelerator, out, config.stage, step, batches_done)
            break
    if batches_done % per_epoch and listening.last_epoch != round(batches_done / per_epoch, 2):
        # max_steps ended mid-epoch (a sweep's short run): the curve's last point is the model that is written
        listening(accelerator, model, round(batches_done / per_epoch, 2), step)
    loss_held = held_out_loss(model, collate, held) if held else None
    units_held = held_out_loss(model, collate, held, part="unit") if held and units is not None else None
    accelerator.log({"held_out_loss": loss_held or 0.0, **({"held_out_unit_loss": units_held} if units_held else {})},
                    step=step)
    summary = {"stage": config.stage, "steps": step, "train_examples": len(train_set), "held_out_examples": len(held),
               "held_out_loss": loss_held, "held_out_unit_loss": units_held,
               "seconds": round(time.perf_counter() - started, 1), "processes": accelerator.num_processes}
    if listening.stops:
        summary.update(collapsed=listening.collapsed)
    if listening.goes_back:
        summary.update(final_from_epoch=listening.best_epoch)
    if accelerator.is_main_process:
        plain = accelerator.unwrap_model(model)
        if listening.goes_back:  # back to the best check whose replies were still replies
            plain.load_state_dict({k: v.to(next(plain.parameters()).device) for k, v in listening.best.items()},
                                  strict=False)
        save_folder(plain, tokenizer, out / "final")
        write_json(out / "summary.json", summary)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # last: it ends the process group too
    return summary


def save_folder(model: Any, tokenizer: Any, folder: Path) -> None:
    """A loadable UnifiedSLM folder (LoRA merged; its processor: prompt rules and front end), written atomically."""
    with atomic_dir(folder) as tmp:
        merge_lora(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


class Listening:
    """The learning curve of hearing and of the replies: the think's tag, the replies' relevance, distinct-2 and
    repeats of the think on held-out clips, before training and after each epoch (``RUN/listening.jsonl``, one
    line per epoch; the clips' thinks and replies in ``RUN/listening/epoch-N.json``). The trainable weights of
    each check whose replies are still replies are kept (``best``, on the CPU, and ``RUN/best.safetensors``): only
    the adapter, heads and LoRA, so an 8B model is never copied whole; ``collapsed`` holds the reasons once a check
    collapsed. The kept check is the best one (reply relevance; a later check with equal or better relevance
    replaces it), and final/ gets its weights back when a later check was worse or collapsed."""

    def __init__(self, config: TrainConfig, out: Path, held: list[Example], tokenizer: Any) -> None:
        from emoslm.train.listening import CollapseGuard, acted_by_key

        self.out, self.tokenizer = out, tokenizer
        self.clips = held[: config.listen_clips] if config.stage != "1-1" else []
        self.acted = acted_by_key(Path(config.data)) if self.clips else {}
        self.guard = CollapseGuard(config.min_distinct_2, config.max_repeats_think)
        self.collapsed: list[str] = []
        self.best: dict[str, torch.Tensor] | None = None
        self.best_epoch: int | None = None
        self.best_score: float | None = None  # the kept check's reply relevance
        self.last_epoch: int | None = None
        self._embedder: Any = None

    def __call__(self, accelerator: Any, model: Any, epoch: int, step: int) -> float:
        """Score the clips (rank 0; the others wait); returns the seconds it took."""
        if not self.clips:
            return 0.0
        began = time.perf_counter()
        if accelerator.is_main_process:
            from emoslm.train.listening import listen

            if self._embedder is None:
                from emoslm.perception.text_emotion import load_sentence_model

                self._embedder = load_sentence_model()
            plain = accelerator.unwrap_model(model)
            result = listen(plain, self.tokenizer, self.clips, self.acted, embedder=self._embedder)
            self.collapsed = self.guard.reasons(result)
            write_json(self.out / "listening" / f"epoch-{epoch}.json", result)
            append_log(self.out / "listening.jsonl", {"epoch": epoch, "step": step, "collapsed": self.collapsed,
                                                   **{k: v for k, v in result.items() if k != "rows"}})
            self.last_epoch = epoch
            if self.better(result):
                self.best_score = result.get("reply_relevance")
                self.best = {name: p.detach().to("cpu", copy=True) for name, p in plain.named_parameters()
                             if p.requires_grad}
                self.best_epoch = epoch
                with atomic_file(self.out / "best.safetensors", suffix=".safetensors") as tmp:
                    save_file({k: v.contiguous() for k, v in self.best.items()}, str(tmp),
                              metadata={"epoch": str(epoch), "step": str(step)})
        accelerator.wait_for_everyone()
        from accelerate.utils import broadcast_object_list

        # every rank must stop together (a rank that trains on alone waits in its all-reduce for ever)
        self.collapsed, self.best_epoch, self.last_epoch = broadcast_object_list(
            [self.collapsed, self.best_epoch, self.last_epoch])
        return time.perf_counter() - began

    def better(self, result: dict[str, Any]) -> bool:
        """This check (not collapsed) replies at least as relevantly as the best kept so far."""
        score = result.get("reply_relevance")
        return not self.collapsed and (score is None or self.best_score is None or score >= self.best_score)

    @property
    def goes_back(self) -> bool:
        """The model to write is an earlier check's: the last one collapsed, or an earlier one replied better."""
        return self.best is not None and self.best_epoch != self.last_epoch

    @property
    def stops(self) -> bool:
        """The last check collapsed and an earlier one was good: there is something to go back to."""
        return bool(self.collapsed) and self.best_epoch is not None


def resume_position(accelerator: Any, out: Path, config: TrainConfig) -> tuple[int, int]:
    # checkpoint.old is whole only if a crash came between the two renames of _checkpoint
    folder = next((f for f in (out / "checkpoint", out / "checkpoint.old") if (f / "position.json").exists()), None)
    if folder is None:
        return 0, 0
    saved = json.loads((folder / "position.json").read_text())
    if saved["stage"] != config.stage:
        raise EmoslmError(f"{out} holds a stage {saved['stage']} run; use another --out for stage {config.stage}")
    accelerator.load_state(str(folder), strict=False)  # only the trained weights are saved (_drop_frozen_weights)
    if accelerator.is_main_process:
        _truncate_log(out / "log.jsonl", saved["step"])
        _truncate_log(out / "listening.jsonl", saved["step"])
    accelerator.wait_for_everyone()
    return saved["step"], saved["batches_done"]


def save_checkpoint(accelerator: Any, out: Path, stage: str, step: int, batches_done: int) -> None:
    """Every rank writes its part (model and optimiser shards, its RNG states) into one partial folder;
    rank 0 then adds the position and swaps it in, so a crash leaves the previous checkpoint whole."""
    partial, final, old = out / "checkpoint.partial", out / "checkpoint", out / "checkpoint.old"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / "position.json").write_text(json.dumps({"step": step, "batches_done": batches_done,
                                                           "stage": stage}))
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines after the checkpoint, so a resumed run's log reads as one run."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))
