"""The unified model as an Agent: it hears the user's audio and writes its own think and reply, streamed.

No transcript or emotion label goes into the answer: the model reads the speech embeddings, and the
emotion it reports is the one its think names (``Reply.think_emotion``; nothing is "perceived" by a
recogniser here). Earlier turns enter the history as text (the user's words by ASR, the model's own
replies), because the model keeps no audio of them. Until the speech branch exists the reply is
spoken clause by clause by a pooled Voice with the prosody that fits the emotion the think named.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from emoslm.agents.base import Agent, Spoken, speak_along
from emoslm.agents.events import Done, Event, Reply, Timing, Transcript, Turn
from emoslm.audio import SAMPLE_RATE, check_signal, trim_to_speech
from emoslm.errors import EmoslmError
from emoslm.ieat.think import tag_in_think
from emoslm.perception.asr import ASRPool
from emoslm.speech.prosody import reply as reply_prosody
from emoslm.speech.voice import VoicePool, voice_pool


class SLMAgent(Agent):
    name = "slm"

    def __init__(self, checkpoint: str | Path, speak: bool = True, think_budget: int = 64,
                 max_new_tokens: int = 128, asr: ASRPool | None = None, voices: VoicePool | None = None,
                 voice: str = "auto") -> None:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from emoslm.slm.model import UnifiedSLM
        from emoslm.speech.mel_front_end import MelFrontEnd

        checkpoint = Path(checkpoint)
        if not (checkpoint / "config.json").exists():
            raise EmoslmError(f"{checkpoint}: not a UnifiedSLM checkpoint (no config.json); "
                              "use a training run's final/ folder")
        hf_logging.disable_progress_bar()
        self.model = UnifiedSLM.from_pretrained(checkpoint).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.mels = MelFrontEnd.from_pretrained(checkpoint, n_mels=self.model.config.encoder().num_mel_bins)
        self.asr = asr or ASRPool()
        self.voices, self.voice_spec = voices or voice_pool(), voice
        self.speak, self.think_budget, self.max_new_tokens = speak, think_budget, max_new_tokens

    def _events(self, history: list[Turn], audio: np.ndarray, lang: str | None) -> Iterator[Event]:
        from emoslm.slm.generate import generate_stream

        lang = lang or "en"
        check_signal(audio, SAMPLE_RATE, "user audio")
        speech = trim_to_speech(audio, pad=0.3)[: 30 * SAMPLE_RATE]
        clock = time.perf_counter()
        pieces = generate_stream(self.model, self.tokenizer, self.mels.tensor(speech),
                                 [{"role": t.role, "content": t.text} for t in history],
                                 self.think_budget, self.max_new_tokens)
        spoken = Spoken()
        voice = self.voices.voice(self.voice_spec, lang) if self.speak else None
        yield from speak_along(pieces, voice, lambda: reply_prosody(tag_in_think(spoken.think) or "neutral"), spoken)
        yield Timing("slm", round(time.perf_counter() - clock, 4))
        clock = time.perf_counter()
        heard = self.asr.transcribe(speech, lang).text  # for the history only
        yield Transcript(heard, lang)
        yield Timing("history_asr", round(time.perf_counter() - clock, 4))
        yield Done(Reply(text=spoken.text, think=spoken.think, transcript=heard, lang=lang,
                         think_emotion=tag_in_think(spoken.think), audio=spoken.audio))
