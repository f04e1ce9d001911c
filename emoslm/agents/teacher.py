"""The teacher agent: the IEAT chain run live as a cascade.

VAD → ASR → emotion (voice + words) → LLM with the emotion injected into an open think → TTS with
the prosody that fits a reply to that emotion. The think is returned for inspection but never
spoken and never kept in the history (as Qwen3's template drops earlier reasoning).
"""

from __future__ import annotations

import time

import numpy as np

from emoslm.agents.base import Agent, Reply, Turn
from emoslm.audio import SAMPLE_RATE, check_signal, trim_to_speech
from emoslm.llm import LLMPool
from emoslm.llm.thinking import think_opening, think_then_answer, validate
from emoslm.perception.asr import ASRPool
from emoslm.perception.recognizer import EmotionRecognizer
from emoslm.speech.prosody import reply as reply_prosody
from emoslm.speech.tts import TTS, default_tts

SYSTEM = {
    "en": "You are a warm, emotionally attentive voice assistant. Reply to the user in English in one to three "
          "short spoken sentences: name how they feel and why, then support them. No lists.",
    "zh": "你是一个温暖、善解人意的语音助手。请用中文口语回复一到三句话："
          "先说出用户的感受和原因，再给予支持。不要列清单。",
}


class TeacherAgent(Agent):
    name = "teacher"

    def __init__(self, llm: str = "auto", recognizer: EmotionRecognizer | None = None, asr: ASRPool | None = None,
                 tts: dict[str, TTS] | None = None, speak: bool = True, think_budget: int = 64,
                 reply_budget: int = 96) -> None:
        self.llms = LLMPool(llm)
        self.recognizer = recognizer or EmotionRecognizer()
        self.asr = asr or ASRPool()
        self.tts = tts or {}
        self.speak = speak
        self.think_budget, self.reply_budget = think_budget, reply_budget

    def _tts(self, lang: str) -> TTS:
        if lang not in self.tts:
            self.tts[lang] = default_tts(lang)
        return self.tts[lang]

    def respond(self, history: list[Turn], audio: np.ndarray, lang: str | None = None) -> Reply:
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        check_signal(audio, SAMPLE_RATE, "user audio")
        speech = trim_to_speech(audio, pad=0.3)
        timings["vad"] = _lap(clock)

        clock = time.perf_counter()
        heard = self.asr.for_lang(lang).transcribe(speech, language=lang)
        lang = lang or ("zh" if heard.language == "zh" else "en")
        timings["asr"] = _lap(clock)

        clock = time.perf_counter()
        emotion = self.recognizer.estimate(speech, heard.text, lang)
        timings["emotion"] = _lap(clock)

        clock = time.perf_counter()
        messages = [{"role": "system", "content": SYSTEM[lang]}]
        messages += [{"role": t.role, "content": t.text} for t in history]
        messages.append({"role": "user", "content": heard.text or "…"})
        words = emotion.textual.tag if emotion.textual else None
        thought = think_then_answer(self.llms.for_lang(lang), messages, think_opening(emotion.tag, lang, words),
                                    self.think_budget, self.reply_budget, lang=lang)
        timings["llm"] = _lap(clock)

        reply = Reply(text=thought.reply, think=thought.think, transcript=heard.text, lang=lang, emotion=emotion,
                      timings=timings, problems=validate(thought.think, thought.reply, emotion.tag, lang))
        if self.speak and thought.reply:
            clock = time.perf_counter()
            spoken = self._tts(lang).synthesize(thought.reply, reply_prosody(emotion.tag))
            reply.audio, reply.sample_rate = spoken.at(SAMPLE_RATE), SAMPLE_RATE
            timings["tts"] = _lap(clock)
        return reply

    def close(self) -> None:
        self.llms.close()


def _lap(start: float) -> float:
    return round(time.perf_counter() - start, 4)
