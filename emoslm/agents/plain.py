"""The plain agent: hear the words and answer them, no emotion (the baseline the teacher is measured against).

ASR → LLM chat (streamed) → the reply spoken clause by clause by a pooled Voice with neutral prosody.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator

import numpy as np

from emoslm.agents.base import Agent, Spoken, speak_along
from emoslm.agents.events import Done, Event, Reply, Timing, Transcript, Turn
from emoslm.audio import SAMPLE_RATE, check_signal, trim_to_speech
from emoslm.config import configure_threads
from emoslm.language import of_turn
from emoslm.llm import LLM, LLMPool, Message, Sampling
from emoslm.perception.asr import ASRPool
from emoslm.speech.prosody import Prosody
from emoslm.speech.voice import VoicePool, voice_pool
from emoslm.think import Incremental, Piece, clean_reply

SYSTEM = {
    "en": "You are a warm, attentive voice assistant. Answer the user in English in at most two short "
          "sentences. Acknowledge how they seem to feel.",
    "zh": "你是一个温暖、细心的语音助手。请用中文回答，最多两句话，并回应用户的感受。",
}
SAMPLING = Sampling(max_tokens=80, temperature=0.6, top_p=0.9, repeat_penalty=1.15, seed=0, stop=["\n\n"])


class PlainAgent(Agent):
    name = "plain"

    def __init__(self, llm: str = "auto", asr: ASRPool | None = None, voices: VoicePool | None = None,
                 voice: str = "auto", speak: bool = True, slots: int = 1) -> None:
        configure_threads(torch_threads=1)  # torch's OpenMP team would throttle llama.cpp's (config.py)
        self.llms, self.asr, self.parallel = LLMPool(llm, slots), asr or ASRPool(), slots
        self.voices, self.voice_spec, self.speak = voices or voice_pool(), voice, speak

    def _events(self, history: list[Turn], audio: np.ndarray, lang: str | None) -> Iterator[Event]:
        check_signal(audio, SAMPLE_RATE, "user audio")
        clock = time.perf_counter()
        speech = trim_to_speech(audio, pad=0.3)
        heard = self.asr.transcribe(speech, lang)
        lang = of_turn(lang, heard.language)
        yield Transcript(heard.text, lang)
        yield Timing("asr", round(time.perf_counter() - clock, 4))
        messages = [{"role": "system", "content": SYSTEM.get(lang, SYSTEM["en"])}]
        messages += [{"role": t.role, "content": t.text} for t in history]
        messages.append({"role": "user", "content": heard.text or "…"})
        spoken = Spoken()
        voice = self.voices.voice(self.voice_spec, lang) if self.speak else None
        yield from speak_along(_answer(self.llms.for_lang(lang), messages), voice, Prosody(style="friendly"), spoken)
        yield Done(Reply(text=spoken.text, transcript=heard.text, lang=lang, audio=spoken.audio))

    def close(self) -> None:
        self.llms.close()


def _answer(llm: LLM, messages: list[Message]) -> Generator[Piece, None, None]:
    said = Incremental(clean_reply)
    for delta in llm.chat_stream(messages, SAMPLING):
        yield Piece("reply", said.update(delta))
    yield Piece("reply", said.finish())
