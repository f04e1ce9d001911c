"""The teacher agent: the IEAT chain run live as a cascade, streamed.

VAD → ASR (while the acoustic emotion model hears the same clip in a second thread) → emotion (voice
+ words), emitted as soon as it exists → LLM with the emotion injected into an open think (think
deltas) → the reply (text deltas), spoken clause by clause with the prosody that fits a reply to that
emotion while the LLM writes the next clause. The think is streamed for inspection but never spoken
and never kept in the history (as Qwen3's template drops earlier reasoning).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np

from emoslm.agents.base import Agent, Spoken, speak_along
from emoslm.agents.events import Done, Emotion, Event, Reply, Timing, Transcript, Turn
from emoslm.audio import SAMPLE_RATE, check_signal, trim_to_speech
from emoslm.config import configure_threads
from emoslm.language import of_turn
from emoslm.llm import LLMPool
from emoslm.perception.asr import ASRPool
from emoslm.perception.recognizer import EmotionRecognizer
from emoslm.speech.prosody import reply as reply_prosody
from emoslm.speech.voice import VoicePool, voice_pool
from emoslm.think import answer_turn, system_for, tag_in_think, validate


class TeacherAgent(Agent):
    name = "teacher"

    def __init__(self, llm: str = "auto", recognizer: EmotionRecognizer | None = None, asr: ASRPool | None = None,
                 voices: VoicePool | None = None, voice: str = "auto", speak: bool = True, think_budget: int = 64,
                 reply_budget: int = 96, by_clause: bool = True, trajectory: bool = True, slots: int = 1) -> None:
        configure_threads(torch_threads=1)  # torch's OpenMP team would throttle llama.cpp's (config.py)
        # thinks and answers in one context: its cached prompt grows by one exchange per turn; with ``slots``,
        # that many turns (a server's sessions) are answered at once, a sequence of one batched context each
        self.llms, self.parallel = LLMPool(llm, slots), slots
        self.recognizer = recognizer or EmotionRecognizer()
        self.asr = asr or ASRPool()
        self.voices, self.voice_spec = voices or voice_pool(), voice
        self.speak = speak
        self.think_budget, self.reply_budget = think_budget, reply_budget
        self.by_clause = by_clause  # False: the whole reply synthesised after it is written (the old pipeline)
        self.trajectory = trajectory  # False: trajectory questions get no perceived path (the ablation)
        self._side = ThreadPoolExecutor(2, thread_name_prefix="emoslm-teacher")  # acoustic model; next-turn prefill
        self._warming: Future | None = None  # the next turn's prompt head, prefilled while the user speaks

    def settle(self, seconds: float) -> None:
        if self._warming is not None:  # on 2 cores the prefill beside Whisper made a zh transcript ~2 s slower
            wait([self._warming], timeout=seconds)

    def _events(self, history: list[Turn], audio: np.ndarray, lang: str | None) -> Iterator[Event]:
        clock = time.perf_counter()
        check_signal(audio, SAMPLE_RATE, "user audio")
        speech = trim_to_speech(audio, pad=0.3)
        yield Timing("vad", _lap(clock))

        clock = time.perf_counter()
        acoustic = self._side.submit(self.recognizer.acoustic_model.acoustic, speech)  # voice, heard meanwhile
        heard = self.asr.transcribe(speech, lang)
        lang = of_turn(lang, heard.language)
        yield Transcript(heard.text, lang)
        yield Timing("asr", _lap(clock))

        clock = time.perf_counter()
        emotion = self.recognizer.estimate(speech, heard.text, lang, acoustic=acoustic.result())
        yield Emotion(emotion)
        yield Timing("emotion", _lap(clock))

        if self._warming is not None:
            self._warming.result()  # the context is free again
        llm = self.llms.for_lang(lang)
        history_messages = [{"role": t.role, "content": t.text} for t in history]
        words = emotion.textual.tag if emotion.textual else None
        llm.share_cpu(0 if self.parallel == 1 else 1)  # every core for the think (unless others' voices speak)
        path = [*(t.emotion for t in history if t.role == "user"), emotion.tag]
        pieces = answer_turn(llm, history_messages, heard.text, path, lang, words, self.think_budget,
                             self.reply_budget, self.trajectory,
                             before_reply=llm.share_cpu if self.speak and self.by_clause else None)  # voice beside
        voice = self.voices.voice(self.voice_spec, lang) if self.speak else None
        spoken = Spoken()
        yield from speak_along(pieces, voice, reply_prosody(emotion.tag), spoken, self.by_clause)
        reply = Reply(text=spoken.text, think=spoken.think, transcript=heard.text, lang=lang, emotion=emotion,
                      think_emotion=tag_in_think(spoken.think), audio=spoken.audio,
                      problems=validate(spoken.think, spoken.text, emotion.tag, lang))
        if not llm.native_think() and self.parallel == 1:  # batched slots keep each sequence's cells themselves
            following = [{"role": "system", "content": system_for(llm, lang)}, *history_messages,
                         {"role": "user", "content": heard.text or "…"}, {"role": "assistant", "content": reply.text}]
            self._warming = self._side.submit(llm.prefill, llm.render(following, add_generation_prompt=False))
        yield Done(reply)

    def close(self) -> None:
        self._side.shutdown(wait=True)  # a next-turn prefill still running must end before its model is freed
        self.llms.close()


def _lap(start: float) -> float:
    return round(time.perf_counter() - start, 4)
