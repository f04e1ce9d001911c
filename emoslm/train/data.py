"""Training examples from an IEAT build, and the collator that lays them out for UnifiedSLM.

Stage 1-1 targets are the teacher's answer to the text (self-distillation: the spoken path must say
what the LLM says to the words). Stage 1-2 targets are the IEAT think and reply; multi-turn samples
carry the earlier turns as text history and the think only in the last assistant turn, as Qwen3's
template does. The loss covers the assistant turn only (labels are -100 elsewhere).
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoslm.emotions import TAGS
from emoslm.errors import DataError
from emoslm.slm.processor import SLMProcessor
from emoslm.slm.speak import SpeechSpec, group_units

STAGE_FILES = {"1-1": ["stage1_1.jsonl"], "1-2": ["stage1_2.jsonl", "multiturn.jsonl"],
               "2": ["stage1_2.jsonl", "multiturn.jsonl"]}  # stage 2: the same samples with their reply audio


@dataclass
class Example:
    id: str
    key: str  # the source item whose clip is heard (the same across stages, so held-out stays held out)
    audio: Path | None  # None: a text-only stage 2 sample (the user's turn is ``user_text``)
    target: str  # what the assistant writes after the prompt ("<think>\n" is already in the prompt for 1-2)
    history: list[dict[str, str]] = field(default_factory=list)
    think: bool = False
    emotion: str = ""
    teacher_reply: str = ""
    voice: str = ""  # the TTS voice that spoke the clip ("" for recorded speech)
    reply_audio: Path | None = None  # stage 2: the reply spoken with the prosody that fits (its units are the target)
    user_text: str | None = None  # the user's turn as text, when there is no clip (stage 2 with phoneme units)


def load_examples(build: Path, stage: str, reply_audio: bool = True) -> list[Example]:
    """Examples of ``stage`` from a build folder; a missing folder or file is a clear error. Stage 2 keeps the
    samples with a spoken reply, unless the units are said from the text (``reply_audio=False``: phoneme units)."""
    if not (build / "recipe.json").exists():
        raise DataError(f"{build}: not an IEAT build folder; run `emoslm data build RECIPE --out {build}` first")
    examples = []
    voices = voices_by_key(build)
    for name in STAGE_FILES[stage]:
        path = build / name
        if not path.exists():
            raise DataError(f"{path}: missing; the build is not assembled yet (run `emoslm data build` again)")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                example = _example(json.loads(line), build, stage)
                example.voice = voices.get(example.key, "")
                examples.append(example)
    if stage == "1-1":
        _tag_clips(build, examples)
    if stage == "2" and reply_audio:
        examples = [e for e in examples if e.reply_audio is not None]
        if not examples:
            raise DataError(f"{build}: no spoken replies for stage 2; set data.stage2.synthesize: true in the "
                            "recipe and build again")
    if not examples:
        raise DataError(f"{build}: no {stage} samples to train on")
    return examples


def _example(sample: dict[str, Any], build: Path, stage: str) -> Example:
    if stage == "1-1":
        return Example(sample["id"], sample["id"], build / sample["audio"], sample["response"],
                       teacher_reply=sample["response"])
    turns = sample["turns"]
    history = []
    for turn in turns[:-2]:
        history.append({"role": turn["role"], "content": turn["text"]})
    target = SLMProcessor().target(sample["think"], sample["response"])  # the rules every checkpoint has
    key = (sample["provenance"].get("members") or [sample["id"]])[-1]
    spoken, heard = turns[-1].get("audio"), turns[-2].get("audio")
    return Example(sample["id"], key, build / heard if heard else None, target, history, think=True,
                   emotion=sample["emotion"], teacher_reply=sample["response"],
                   reply_audio=build / spoken if stage == "2" and spoken else None,
                   user_text=None if heard else turns[-2]["text"])


def _tag_clips(build: Path, examples: list[Example]) -> None:
    """Stage 1-1's clips get the emotion an emotion head learns from: the one the voice acted (emoslm voiced
    it), else the recogniser's label of the same clip in stage 1-2, else none."""
    acted = provenance_by_key(build, "acted_emotion")
    labelled: dict[str, str] = {}
    path = build / STAGE_FILES["1-2"][0]
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            sample = json.loads(line) if line.strip() else None
            if sample and len(sample.get("turns", [])) == 2:
                labelled[sample["id"]] = sample.get("emotion", "")
    for example in examples:
        example.emotion = acted.get(example.key) or labelled.get(example.key, "")


def provenance_by_key(build: Path, field: str) -> dict[str, str]:
    """One provenance field (``voiced_by``, ``acted_emotion``) of each source item's clip, read from stage 1-1,
    which every item with a clip has: multi-turn samples lack it in their own record but share the item's key."""
    path = build / "stage1_1.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["id"]: r.get("provenance", {}).get(field, "") for r in rows}


def voices_by_key(build: Path) -> dict[str, str]:
    """Which voice spoke each source item's clip (held-out voices are held out by it)."""
    return provenance_by_key(build, "voiced_by")


def held_key(key: str, seed: int = 0, share: float = 0.1) -> bool:
    """The seeded hash share of source items held out: builders that pick held-out voices for held-out texts use
    the same rule as ``split``, so those texts stay out of training."""
    return zlib.crc32(f"{seed}:{key}".encode()) % 10_000 < share * 10_000


def split(examples: list[Example], held_out: float, seed: int, held_voices: list[str] | tuple[str, ...] = ()
          ) -> tuple[list[Example], list[Example]]:
    """Held out: every clip of the ``held_voices`` (voices the model never hears in training), and a seeded
    hash share of the source items (texts it never trains on); the same clips in every stage and run."""
    def held(example: Example) -> bool:
        return example.voice in held_voices or held_key(example.key, seed, held_out)

    return [e for e in examples if not held(e)], [e for e in examples if held(e)]


class BalancedSampler(torch.utils.data.Sampler[int]):
    """Draws examples so that each emotion tag makes up its target share of every epoch.

    The recogniser's tag (``Example.emotion``) decides; a tag missing from ``shares`` gets none, and
    ``shares`` are renormalised over the tags the data has. Indices are drawn with replacement from a
    generator seeded by seed + epoch, so every rank draws the same epoch and ``accelerate`` shards it,
    and a resumed run sees the same order.
    """

    def __init__(self, examples: list[Example], shares: dict[str, float], seed: int = 0) -> None:
        counts = Counter(e.emotion for e in examples)
        present = {tag: share for tag, share in shares.items() if counts.get(tag) and share > 0}
        if not present:
            raise DataError(f"balance: none of the tags {sorted(shares)} occurs in the data ({dict(counts)})")
        total = sum(present.values())
        self.weights = torch.tensor([present.get(e.emotion, 0.0) / total / counts[e.emotion] for e in examples],
                                    dtype=torch.float64)
        self.seed, self.epoch, self.n = seed, 0, len(examples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.multinomial(self.weights, self.n, replacement=True, generator=generator).tolist()


class LengthBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of items of similar length, for a ``DataLoader(batch_sampler=...)``.

    Random batches of speech clips pad every clip to the batch's longest (here 2.4 times the mean length:
    most of a tokenizer step was spent on padding). Each epoch shuffles (seeded by seed + epoch, the same on
    every rank, so ``accelerate`` shards it and a resumed run sees the same order), sorts each window of
    ``window`` batches by length, cuts it into batches and shuffles the batches (the one short batch last).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, window: int = 50) -> None:
        self.lengths, self.batch_size, self.seed, self.window, self.epoch = list(lengths), batch_size, seed, window, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order, span = torch.randperm(len(self.lengths), generator=generator).tolist(), self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            window = sorted(order[start:start + span], key=lambda i: self.lengths[i])
            batches += [window[k:k + self.batch_size] for k in range(0, len(window), self.batch_size)]
        short = [b for b in batches if len(b) < self.batch_size]  # at most one: the last window's rest
        full = [b for b in batches if len(b) == self.batch_size]
        yield from (full[i] for i in torch.randperm(len(full), generator=generator).tolist())
        yield from short  # last, as any loader's: accelerate's shards give every rank whole batches before it

    def __len__(self) -> int:
        span = self.batch_size * self.window
        full, rest = divmod(len(self.lengths), span)
        return full * self.window + math.ceil(rest / self.batch_size)


class Collator:
    """Encoder frames (from the frame cache), prompt + target ids with speech placeholders, assistant-only labels.

    Frames are padded with zeros after the encoder, so a clip's embeddings do not depend on its batch;
    ``mel_frames`` (two per encoder frame) tells the model each clip's own length.

    With ``units`` (stage 2: a ``UnitCache`` of the reply audio, or ``PhonemeTargets`` that say the reply's
    text) and the model's ``SpeechSpec`` it also lays out the speech steps: the reply's ids are tokenized
    apart from the think and the bridge, exactly as generation feeds them, and step i reads the hidden state
    of reply token min(i, last) — the newest text token when the model writes text and units in lock-step,
    the end-of-turn token after the text ends.
    """

    def __init__(self, tokenizer: Any, speech_length: Any, frames: Callable[[Path], np.ndarray],
                 max_target_tokens: int = 160, units: Callable[[Path], np.ndarray] | None = None,
                 spec: SpeechSpec | None = None, max_unit_steps: int = 0, emotions: bool = False,
                 prosody: Callable[[Path], np.ndarray] | None = None, processor: SLMProcessor | None = None) -> None:
        self.tokenizer, self.speech_length, self.frames = tokenizer, speech_length, frames
        self.rules = processor or SLMProcessor()  # the model's prompt rules: layout, bridge, end token
        self.emotions = emotions  # add each clip's tag (index in TAGS, -100 none) for the model's emotion head
        self.prosody = prosody  # each clip's prosodic functionals (a ``ProsodyCache``), for a head that reads them
        self.max_target_tokens = max_target_tokens
        self.units, self.spec, self.max_unit_steps = units, spec, max_unit_steps
        self.states: dict[str, torch.Tensor] | None = None  # example id → its branch inputs (frozen text path)
        self.end = self.rules.end_id(tokenizer)

    def target_ids(self, example: Example) -> tuple[list[int], int]:
        """The target's ids (cut to ``max_target_tokens``, then the end token) and where the reply starts."""
        encode = self.tokenizer
        if self.units is None or not example.think:
            ids = encode(example.target, add_special_tokens=False)["input_ids"][: self.max_target_tokens]
            return ids + [self.end], 0
        bridge = self.rules.bridge(False, "").lstrip("\n")
        head, _, reply = example.target.rpartition(bridge)
        first = encode(head + bridge, add_special_tokens=False)["input_ids"]
        ids = (first + encode(reply, add_special_tokens=False)["input_ids"])[: self.max_target_tokens]
        return ids + [self.end], min(len(first), len(ids))

    def _row(self, example: Example, frames: int) -> tuple[Any, list[int], int]:
        """The prompt (with the speech positions of ``frames`` encoder frames), the target ids, where the reply
        starts."""
        speech = self.speech_length(2 * frames) if frames else 0
        prompt = self.rules.layout(self.tokenizer, speech, example.history, think=example.think,
                                   user_text=example.user_text)
        return (prompt, *self.target_ids(example))

    def length(self, example: Example) -> int:
        """The tokens ``example``'s row takes, read from its frames' shape alone: what ``LengthBatches`` sorts by."""
        frames = 0
        if example.audio is not None:
            shape = getattr(self.frames, "shape", None)
            frames = (shape(example.audio) if shape else self.frames(example.audio).shape)[-2]
        prompt, target, _ = self._row(example, frames)
        return len(prompt.input_ids) + len(target)

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        heard = {e.id: self.frames(e.audio) for e in examples if e.audio is not None}  # (frames, d) / (layers, …)
        like = next(iter(heard.values()), np.zeros((0, 1), np.float32))
        empty = np.zeros((*like.shape[:-2], 0, like.shape[-1]), np.float32)  # a text-only row: no frames
        clips = [heard.get(e.id, empty) for e in examples]
        rows, steps = [], []
        for example, clip in zip(examples, clips, strict=True):
            prompt, target, reply_at = self._row(example, clip.shape[-2])
            rows.append((prompt.input_ids + target, prompt.speech_mask + [False] * len(target),
                         [-100] * len(prompt.input_ids) + target))
            if self.units is not None:
                steps.append(self._steps(example, len(prompt.input_ids) + reply_at, len(rows[-1][0]) - 1))
        width = max(len(r[0]) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        longest = max(c.shape[-2] for c in clips)
        batch = {
            "input_ids": torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows]),
            "speech_mask": torch.tensor([r[1] + [False] * (width - len(r[1])) for r in rows]),
            "labels": torch.tensor([r[2] + [-100] * (width - len(r[2])) for r in rows]),
        }
        if longest:  # text-only rows get zero frames and no placeholders: their speech is never written in
            batch["frames"] = torch.from_numpy(np.stack([_pad_frames(c, longest) for c in clips]).astype(np.float32))
            batch["mel_frames"] = torch.tensor([max(2, 2 * c.shape[-2]) for c in clips])
        if self.prosody is not None and longest:
            vectors = {e.id: self.prosody(e.audio) for e in examples if e.audio is not None}
            width = len(next(iter(vectors.values())))
            batch["prosody"] = torch.from_numpy(np.stack([vectors.get(e.id, np.zeros(width, np.float32))
                                                          for e in examples]).astype(np.float32))
        if self.emotions:
            batch["emotion_labels"] = torch.tensor([TAGS.index(e.emotion) if e.emotion in TAGS else -100
                                                    for e in examples])
        if steps:
            batch.update(_pad_steps(steps, self.spec))
            if self.states is not None:  # computed once (``text_states``): the text path is frozen
                width = batch["unit_inputs"].shape[1]
                batch["unit_states"] = torch.stack([nn_pad(self.states[e.id], width) for e in examples])
        return batch

    def _steps(self, example: Example, reply_start: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.spec is not None and self.spec.hold >= 0:  # phoneme units: tied to the reply's own tokens
            inputs, targets, index = self.units.steps(example, self.tokenizer, last - reply_start, self.spec,
                                                      self.max_unit_steps)
            return inputs, targets, reply_start + index
        if example.reply_audio is None or self.spec is None:
            raise DataError(f"{example.id}: no reply audio for the speech branch to learn from")
        inputs, targets = group_units(self.units(example.reply_audio), self.spec, self.max_unit_steps)
        positions = np.minimum(reply_start + np.arange(len(inputs)), last)
        return inputs, targets, positions


def nn_pad(states: torch.Tensor, steps: int) -> torch.Tensor:
    """(steps', hidden) → (steps, hidden), zeros after (padded steps are masked out of the loss)."""
    return torch.nn.functional.pad(states, (0, 0, 0, steps - states.shape[0]))


def text_states(model: Any, collate: Collator, examples: list[Example], batch_size: int, device: Any,
                advance: Any = None) -> dict[str, torch.Tensor]:
    """Every example's branch inputs (the layer-n states at its speech steps), once: with the text path frozen
    they are the same every epoch, and the 26 frozen layers then run once instead of once per epoch."""
    out: dict[str, torch.Tensor] = {}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk).items()}
        states = model.unit_text_states(**batch).float().cpu()
        for example, row, mask in zip(chunk, states, batch["unit_mask"], strict=True):
            out[example.id] = row[: int(mask.sum())].clone()
        if advance:
            advance(len(chunk))
    return out


def _pad_frames(clip: np.ndarray, frames: int) -> np.ndarray:
    """Zeros after a clip's frames (the time axis is the second to last: one layer or every layer)."""
    widths = [(0, 0)] * clip.ndim
    widths[-2] = (0, frames - clip.shape[-2])
    return np.pad(clip, widths)


def _pad_steps(steps: list[tuple[np.ndarray, np.ndarray, np.ndarray]], spec: SpeechSpec) -> dict[str, torch.Tensor]:
    """Per-example speech steps → batch tensors; padded steps read position 0, predict nothing, are masked."""
    width = max(len(s[0]) for s in steps)

    def pad(array: np.ndarray, value: int) -> np.ndarray:
        extra = [(0, width - len(array))] + [(0, 0)] * (array.ndim - 1)
        return np.pad(array, extra, constant_values=value)

    return {"unit_inputs": torch.from_numpy(np.stack([pad(s[0], spec.bos) for s in steps])),
            "unit_targets": torch.from_numpy(np.stack([pad(s[1], -100) for s in steps])),
            "unit_positions": torch.from_numpy(np.stack([pad(s[2], 0) for s in steps]).astype(np.int64)),
            "unit_mask": torch.tensor([[1] * len(s[0]) + [0] * (width - len(s[0])) for s in steps])}
