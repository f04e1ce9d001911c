"""The unified model as an Agent: it hears the user's audio and writes its own think and reply, streamed.

No transcript or emotion label goes into the answer: the model reads the speech embeddings, and the
emotion it reports is the one its think names (``Reply.think_emotion``; nothing is "perceived" by a
recogniser here). Earlier turns enter the history as text (the user's words by ASR, the model's own
replies), because the model keeps no audio of them.

Voice: a checkpoint with a speech branch (stage 2) speaks with its own voice by default — the units it
writes in lock-step with its text go straight into the streaming unit decoder, styled with the prosody
that fits the emotion its think named. ``voice="tts"`` (or any pool spec) keeps the other path: the reply
spoken clause by clause by a pooled Voice with that prosody; a model without a branch always takes it.

Text: the think and reply are decoded by llama.cpp where it can (``text="auto"``: the checkpoint's LLM
exported to GGUF once, Q8_0 unless ``gguf`` says otherwise; the speech branch reads its layer-n states
from llama.cpp), else by PyTorch (``text="torch"``, the path training and evaluation use).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from emoslm.agents.base import Agent, Spoken, speak_along, written
from emoslm.agents.events import AudioChunk, Done, Event, Reply, Timing, Transcript, Turn
from emoslm.audio import SAMPLE_RATE, check_signal, trim_to_speech
from emoslm.config import configure_threads
from emoslm.errors import EmoslmError
from emoslm.language import of_turn
from emoslm.perception.asr import ASRPool
from emoslm.speech.prosody import reply as reply_prosody
from emoslm.speech.voice import VoiceChunk, VoicePool, voice_pool
from emoslm.think import tag_in_think


class SLMAgent(Agent):
    name = "slm"

    def __init__(self, checkpoint: str | Path, speak: bool = True, think_budget: int = 64,
                 max_new_tokens: int = 128, asr: ASRPool | None = None, voices: VoicePool | None = None,
                 voice: str = "auto", text: str = "auto", gguf: str = "q8_0") -> None:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from emoslm.slm.model import UnifiedSLM

        checkpoint = Path(checkpoint)
        if not (checkpoint / "config.json").exists():
            raise EmoslmError(f"{checkpoint}: not a UnifiedSLM checkpoint (no config.json); "
                              "use a training run's final/ folder")
        hf_logging.disable_progress_bar()
        self.model = UnifiedSLM.from_pretrained(checkpoint).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.mels = self.model.processor.front_end  # the checkpoint's own
        self.asr = asr or ASRPool()
        self.voices, self.voice_spec = voices or voice_pool(), voice
        self.speak, self.think_budget, self.max_new_tokens = speak, think_budget, max_new_tokens
        self.text = self._text_engine(text, gguf)
        if self.text is not None:  # one OpenMP team beside llama.cpp (config.configure_threads): 36 vs 33 tok/s
            configure_threads(torch_threads=1)

    def _text_engine(self, engine: str, qtype: str) -> Any:
        """The llama.cpp text stream (None: PyTorch's). ``auto`` takes llama.cpp when it is installed and the
        base LLM has a GGUF: on 2 AVX2 cores it writes ~5 times as many tokens a second, so the think that
        precedes the first audio ends sooner."""
        from emoslm.slm.llama_text import TEXT_ENGINES, gguf_template, llama_text

        if engine not in TEXT_ENGINES:
            raise EmoslmError(f"text={engine}: choose from {', '.join(TEXT_ENGINES)}")
        if engine == "torch":
            return None
        if engine == "auto" and (gguf_template(self.model) is None or importlib.util.find_spec("llama_cpp") is None):
            return None
        return llama_text(self.model, qtype, speak=self.own_voice)

    def close(self) -> None:
        if self.text is not None:
            self.text.close()

    @property
    def own_voice(self) -> bool:
        """Whether replies are spoken by the model's own speech branch (see the module's docstring)."""
        return self.speak and self.voice_spec in ("auto", "model") and self.model.speech_branch is not None

    def own(self, lang: str) -> Any:
        """The model's voice: the unit decoder its speech branch was trained for, a ``UnitVoice`` from the pool."""
        from emoslm.speech.units.phonemes import parse_spec

        folder = Path(self.model.speech_spec.decoder)
        if parse_spec(self.model.speech_spec.decoder):  # phoneme units: Kokoro says them, no folder
            return self.voices.voice(f"units:{self.model.speech_spec.decoder}", lang)
        if folder.is_dir() and any(folder.glob("speech_tokenizer_v*.onnx")):  # CosyVoice's units: its token2wav
            return self.voices.voice(f"units:{folder}", lang)
        if not (folder / "config.json").exists():
            raise EmoslmError(f"{folder}: the unit decoder this model speaks with is missing; "
                              "keep the units run beside it or use --voice tts")
        return self.voices.voice(f"units:{folder}", lang)

    def _events(self, history: list[Turn], audio: np.ndarray, lang: str | None) -> Iterator[Event]:
        from emoslm.slm.generate import generate_stream, heard_prosody

        check_signal(audio, SAMPLE_RATE, "user audio")
        speech = trim_to_speech(audio, pad=0.3)[: 30 * SAMPLE_RATE]
        if lang is None:  # as the other agents do: the language the speech is heard in (one encoder pass)
            lang = of_turn(None, self.asr.for_lang(None).detect(speech)[0])
        clock = time.perf_counter()
        own = self.own_voice
        voice = self.own(lang) if own else None  # loaded before the clock matters
        pieces = generate_stream(self.model, self.tokenizer, self.mels.tensor(speech),
                                 [{"role": t.role, "content": t.text} for t in history],
                                 self.think_budget, self.max_new_tokens, speak=own, text=self.text,
                                 prosody=heard_prosody(self.model, speech), lang=lang)
        spoken = Spoken()
        if own:
            yield from speak_units(pieces, voice, spoken)
        else:
            voice = self.voices.voice(self.voice_spec, lang) if self.speak else None
            yield from speak_along(pieces, voice, lambda: reply_prosody(tag_in_think(spoken.think) or "neutral"),
                                   spoken)
        yield Timing("slm", round(time.perf_counter() - clock, 4))
        clock = time.perf_counter()
        heard = self.asr.transcribe(speech, lang).text  # for the history only
        yield Transcript(heard, lang)
        yield Timing("history_asr", round(time.perf_counter() - clock, 4))
        yield Done(Reply(text=spoken.text, think=spoken.think, transcript=heard, lang=lang,
                         think_emotion=tag_in_think(spoken.think), audio=spoken.audio))


def speak_units(pieces: Generator[Any, None, Any], voice: Any, spoken: Spoken) -> Iterator[Event]:
    """Think and reply deltas as events, and the units the model writes turned into audio as they come: the
    ``UnitVoice``'s streamer (styled by the emotion the think named, known before the first unit) yields each
    chunk as soon as its look-ahead has arrived, in the same thread — the decoder's work per chunk is small."""
    streamer, decoding = None, 0.0
    try:
        for piece, event in written(pieces, spoken):
            if event is not None:
                yield event
            if piece.part != "units":
                continue
            clock = time.perf_counter()
            if streamer is None:
                streamer = voice.streamer(reply_prosody(tag_in_think(spoken.think) or "neutral"))
            ready = streamer.feed(piece.codes)
            decoding += time.perf_counter() - clock
            yield from _chunks(ready, voice.sample_rate, spoken)
    finally:
        pieces.close()
    if streamer is not None:
        clock = time.perf_counter()
        ready = streamer.flush()
        decoding += time.perf_counter() - clock
        yield from _chunks(ready, voice.sample_rate, spoken)
    for stage, seconds in spoken.marks.items():
        yield Timing(stage, round(seconds, 4))
    yield Timing("unit_decoder", round(decoding, 4))


def _chunks(audios: list[np.ndarray], sample_rate: int, spoken: Spoken) -> Iterator[Event]:
    for audio in audios:
        spoken.chunks.append(VoiceChunk(audio, sample_rate, ""))
        yield AudioChunk(audio, sample_rate)
