"""The unified model's prompt rules in one object, saved with every checkpoint and loaded from it (issue 33 §6).

Training lays out each example, generation prefills each clip, and the reports score what generation writes; if
any of them used another system prompt, speech marker, think bridge, end token or mel front end than the one the
checkpoint was trained with, the model would be served a prompt it never saw. ``SLMProcessor`` holds all of them;
``UnifiedSLM`` carries one (``model.processor``), ``save_pretrained`` writes it (``processor_config.json`` beside
the front end's ``preprocessor_config.json``) and ``from_pretrained`` reads it back, so every caller that has the
model has its rules. A checkpoint written before the processor existed loads with the defaults below, which are
the rules it was trained with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from emoslm.llm.base import ChatTemplate
from emoslm.speech.mel_front_end import MelFrontEnd
from emoslm.think import THINK_CLOSE, THINK_OPEN

FILE = "processor_config.json"
SPEECH_MARK = "<|emoslm-speech|>"
SYSTEM = "You are a warm, emotionally attentive voice assistant. Think about how the user feels and why, then reply."


@dataclass
class Prompt:
    input_ids: list[int]
    speech_mask: list[bool]


@dataclass
class SLMProcessor:
    """System prompt, where the speech goes, how the think opens and joins the reply, the end token, and the mel
    front end (not serialised here: it has its own file)."""

    system: str = SYSTEM
    speech_mark: str = SPEECH_MARK
    think_open: str = THINK_OPEN
    think_close: str = THINK_CLOSE
    end_token: str = "<|im_end|>"
    front_end: MelFrontEnd = field(default_factory=lambda: MelFrontEnd.for_mels(80), repr=False, compare=False)

    @classmethod
    def for_mels(cls, n_mels: int) -> SLMProcessor:
        """The default rules with a front end of ``n_mels`` bins (a model built from parts)."""
        return cls(front_end=MelFrontEnd.for_mels(n_mels))

    # --- the prompt --------------------------------------------------------------------------------------------
    def layout(self, tokenizer: Any, speech_length: int, history: list[dict[str, str]] | None = None,
               think: bool = True, user_text: str | None = None) -> Prompt:
        """Token ids of the chat template with ``speech_length`` placeholders where the user's speech goes
        (``user_text``: the user's turn as text instead — stage 2's text-only samples and the teacher's prompts);
        ``think``: the assistant turn opens the think."""
        user = self.speech_mark if user_text is None else f"{user_text}{self.speech_mark}"
        if user_text is not None:
            speech_length = 0
        messages = [{"role": "system", "content": self.system}, *(history or []), {"role": "user", "content": user}]
        text = ChatTemplate.from_tokenizer(tokenizer).render(messages, add_generation_prompt=True)
        if think:
            text = f"{text}{self.think_open}\n"
        before, _, after = text.partition(self.speech_mark)
        head = tokenizer(before, add_special_tokens=False)["input_ids"]
        tail = tokenizer(after, add_special_tokens=False)["input_ids"]
        placeholder = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return Prompt(head + [placeholder] * speech_length + tail,
                      [False] * len(head) + [True] * speech_length + [False] * len(tail))

    def target(self, think: str, reply: str) -> str:
        """What the assistant writes after the opened think: the think, the bridge, the reply."""
        return f"{think}{self.bridge(False, '')}{reply}"

    def bridge(self, closed: bool, after_close: str) -> str:
        """What joins the think to the reply (``think\\n</think>\\n\\n``): all of it after a think the budget cut,
        the missing newlines after one the model closed itself."""
        if not closed:
            return f"\n{self.think_close}\n\n"
        if after_close.strip():  # the model already went on past the blank line
            return ""
        newlines = len(after_close) - len(after_close.lstrip("\n"))
        return "\n" * max(0, 2 - newlines)

    def end_id(self, tokenizer: Any) -> int:
        """The token that ends the assistant's turn (the tokenizer's EOS where it lacks ``end_token``)."""
        end = tokenizer.convert_tokens_to_ids(self.end_token)
        return end if isinstance(end, int) and end != tokenizer.unk_token_id else tokenizer.eos_token_id

    # --- files ---------------------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rules = {k: v for k, v in asdict(self).items() if k != "front_end"}
        (folder / FILE).write_text(json.dumps(rules, indent=1, ensure_ascii=False), encoding="utf-8")
        self.front_end.save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path, n_mels: int | None = None) -> SLMProcessor:
        """The rules saved in ``folder`` (the defaults for a checkpoint from before they were saved)."""
        path = Path(folder) / FILE
        rules = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        known = {f.name for f in fields(cls)} - {"front_end"}
        return cls(**{k: v for k, v in rules.items() if k in known},
                   front_end=MelFrontEnd.from_pretrained(folder, n_mels))
