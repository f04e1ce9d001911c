"""The unit decoder as a ``Voice``: any agent can speak through units.

Two ways in. ``stream_units`` takes units as a generator writes them (the unified model's speech branch)
and yields audio as soon as each chunk's look-ahead has arrived. ``stream(text, prosody)`` is the Voice
contract for text: a source voice (a TTS) says each clause plainly, the tokenizer turns it into units and
the decoder speaks them with the decoder's speaker and the prosody as its style — the same path the
model's own voice takes, so it can be heard and tested before the speech branch exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from emoslm.speech.prosody import Prosody
from emoslm.speech.voice import Voice, VoiceChunk


class UnitVoice(Voice):
    """``tokenizer`` and ``source`` may be given as zero-argument factories: they are then loaded on the first
    ``stream(text)``, so a speaker of units only (the unified model) never loads them."""

    def __init__(self, decoder: Any, tokenizer: Any | None = None, source: Voice | Callable[[], Voice] | None = None,
                 speaker: str | np.ndarray | None = None) -> None:
        self.decoder, self._tokenizer, self._source, self.speaker = decoder, tokenizer, source, speaker
        self.sample_rate = decoder.sample_rate
        self.name = f"units:{decoder.name}" if hasattr(decoder, "name") else "units"

    @property
    def tokenizer(self) -> Any | None:
        if callable(self._tokenizer) and not hasattr(self._tokenizer, "encode"):
            self._tokenizer = self._tokenizer()
        return self._tokenizer

    @property
    def source(self) -> Voice | None:
        if callable(self._source) and not isinstance(self._source, Voice):
            self._source = self._source()
        return self._source

    @classmethod
    def from_folder(cls, decoder: str | Path, lang: str = "en", speaker: str | None = None) -> UnitVoice:
        """A decoder folder; its tokenizer is the one it was trained on, the source the language's default TTS."""
        from emoslm.speech.units.decoder import UnitDecoder
        from emoslm.speech.units.files import tokenizer_of
        from emoslm.speech.units.phonemes import KokoroUnitDecoder, PhonemeTokenizer, parse_spec
        from emoslm.speech.units.tokenizer import SpeechTokenizer
        from emoslm.speech.voice import voice_pool

        if kokoro := parse_spec(str(decoder)):  # phoneme units: text → symbols directly, no source voice
            return cls(KokoroUnitDecoder(kokoro), lambda: PhonemeTokenizer(), None, speaker)
        if not (Path(decoder) / "config.json").exists():  # a CosyVoice folder: its token2wav
            from emoslm.speech.units.files import load_decoder, load_tokenizer

            return cls(load_decoder(Path(decoder)), lambda: load_tokenizer(Path(decoder)),
                       lambda: voice_pool().voice("auto", lang), speaker)
        model = UnitDecoder.from_pretrained(decoder)
        source = tokenizer_of(Path(decoder))
        tokenizer = (lambda: SpeechTokenizer.from_pretrained(source)) if source is not None else None
        return cls(model, tokenizer, lambda: voice_pool().voice("auto", lang), speaker)

    def stream_units(self, chunks: Iterable[Any], prosody: Prosody | None = None, text: str = ""
                     ) -> Iterator[VoiceChunk]:
        for audio in self.decoder.decode_stream(chunks, self.speaker, prosody):
            yield VoiceChunk(audio, self.sample_rate, text)

    def streamer(self, prosody: Prosody | None = None) -> Any:
        """Push units as a generator writes them, get audio as soon as it is ready (``UnitStreamer``): the unified
        model interleaves these with its text in one thread."""
        return self.decoder.streamer(self.speaker, prosody)

    def stream(self, text: str, prosody: Prosody | None = None) -> Iterator[VoiceChunk]:
        if hasattr(self.tokenizer, "encode_text"):  # phoneme units: the text's own symbols, clause by clause
            from emoslm.speech.voice import Clauses

            cutter = Clauses()
            for clause in [*cutter.feed(text), *cutter.flush()]:
                audio = self.decoder.decode(self.tokenizer.encode_text(clause), self.speaker, prosody)
                if audio.size:
                    yield VoiceChunk(audio, self.sample_rate, clause)
            return
        if self.tokenizer is None or self.source is None:
            from emoslm.errors import EmoslmError

            raise EmoslmError("this unit voice has no tokenizer or source voice to turn text into units; "
                              "feed it units with stream_units")
        for chunk in self.source.stream(text):
            units = self.tokenizer.encode(chunk.audio if chunk.sample_rate == 16_000 else _at16k(chunk))
            audio = self.decoder.decode(units, self.speaker, prosody)
            yield VoiceChunk(audio, self.sample_rate, chunk.text)


def _at16k(chunk: VoiceChunk) -> np.ndarray:
    import librosa

    return librosa.resample(chunk.audio, orig_sr=chunk.sample_rate, target_sr=16_000).astype(np.float32)
