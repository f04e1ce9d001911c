"""The unified model as an Agent: it hears the user's audio and writes its own think and reply.

No transcript or emotion label goes into the answer: the model reads the speech embeddings. Earlier
turns enter the history as text (the user's words by ASR, the model's own replies), because the
model keeps no audio of them. Until the speech branch exists the reply is spoken by a TTS backend
with the prosody that fits the emotion the model named in its think.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from emoslm.agents.base import Agent, Reply, Turn
from emoslm.audio import SAMPLE_RATE, check_signal, trim_to_speech
from emoslm.errors import EmoslmError
from emoslm.llm.thinking import tag_in_think
from emoslm.perception.asr import ASRPool
from emoslm.perception.estimate import EmotionEstimate
from emoslm.perception.labels import TAGS
from emoslm.speech.prosody import reply as reply_prosody
from emoslm.speech.tts import TTS, default_tts


class SLMAgent(Agent):
    name = "slm"

    def __init__(self, checkpoint: str | Path, speak: bool = True, think_budget: int = 64,
                 max_new_tokens: int = 128, asr: ASRPool | None = None) -> None:
        from transformers import AutoTokenizer

        from emoslm.slm.model import UnifiedSLM

        checkpoint = Path(checkpoint)
        if not (checkpoint / "config.json").exists():
            raise EmoslmError(f"{checkpoint}: not a UnifiedSLM checkpoint (no config.json); "
                              "use a training run's final/ folder")
        self.model = UnifiedSLM.from_pretrained(checkpoint).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        from faster_whisper.feature_extractor import FeatureExtractor

        self.mels = FeatureExtractor(feature_size=self.model.config.encoder().num_mel_bins)
        self.asr = asr or ASRPool()
        self.speak, self.think_budget, self.max_new_tokens = speak, think_budget, max_new_tokens
        self._tts: dict[str, TTS] = {}

    def respond(self, history: list[Turn], audio: np.ndarray, lang: str | None = None) -> Reply:
        import torch

        from emoslm.slm.generate import generate

        lang = lang or "en"
        timings: dict[str, float] = {}
        check_signal(audio, SAMPLE_RATE, "user audio")
        speech = trim_to_speech(audio, pad=0.3)[: 30 * SAMPLE_RATE]
        clock = time.perf_counter()
        mel = self.mels(speech)
        mel = torch.from_numpy(mel[:, : mel.shape[1] - mel.shape[1] % 2]).float()
        out = generate(self.model, self.tokenizer, mel, [{"role": t.role, "content": t.text} for t in history],
                       self.think_budget, self.max_new_tokens)
        timings["slm"] = round(time.perf_counter() - clock, 4)
        clock = time.perf_counter()
        heard = self.asr.for_lang(lang).transcribe(speech, language=lang).text  # for the history only
        timings["history_asr"] = round(time.perf_counter() - clock, 4)
        tag = tag_in_think(out.think)
        emotion = EmotionEstimate.from_probs({t: float(t == tag) for t in TAGS}) if tag else None
        reply = Reply(text=out.reply, think=out.think, transcript=heard, lang=lang, emotion=emotion, timings=timings)
        if self.speak and out.reply:
            clock = time.perf_counter()
            if lang not in self._tts:
                self._tts[lang] = default_tts(lang)
            spoken = self._tts[lang].synthesize(out.reply, reply_prosody(tag or "neutral"))
            reply.audio = spoken.at(SAMPLE_RATE)
            timings["tts"] = round(time.perf_counter() - clock, 4)
        return reply
