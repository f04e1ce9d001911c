"""Units on disk and the CLI's three one-file jobs (encode, decode, resynth).

A units file is JSON: ``{"rate": 50.0, "codes": [...]}``; three kinds of units load here: an emoslm
tokenizer/decoder folder (``config.json``), a CosyVoice model folder (its ONNX tokenizer, its token2wav), or
the spec ``kokoro`` / ``kokoro:VOICE`` — phoneme units (``emoslm.speech.units.phonemes``), whose tokenizer is
ASR + G2P and whose decoder is Kokoro, so they need no folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from emoslm.audio import load_audio, save_audio
from emoslm.errors import EmoslmError
from emoslm.speech.units.tokenizer import Units


def _kind(folder: Path) -> str:
    """The ``type`` an emoslm folder's config.json declares ("" for anything else, e.g. a CosyVoice folder)."""
    try:
        return str(json.loads((Path(folder) / "config.json").read_text()).get("type", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def load_tokenizer(folder: Path | str, transcribe: Any = None) -> Any:
    """An emoslm ``SpeechTokenizer`` folder, a CosyVoice model folder, or ``kokoro[:VOICE]`` (phoneme units, which
    hear audio through ``transcribe(audio, lang) → text``, the caller's ASR)."""
    from emoslm.speech.units.cosyvoice import CosyVoiceTokenizer
    from emoslm.speech.units.phonemes import PhonemeTokenizer, parse_spec
    from emoslm.speech.units.tokenizer import SpeechTokenizer

    if parse_spec(str(folder)):
        return PhonemeTokenizer(transcribe)
    folder = Path(folder)
    if _kind(folder) == "emoslm-speech-tokenizer":
        return SpeechTokenizer.from_pretrained(folder)
    return CosyVoiceTokenizer(folder)


def load_decoder(folder: Path | str) -> Any:
    """An emoslm ``UnitDecoder`` folder, a CosyVoice model folder, or ``kokoro[:VOICE]`` (phoneme units)."""
    from emoslm.speech.units.cosyvoice import CosyVoiceDecoder
    from emoslm.speech.units.decoder import UnitDecoder
    from emoslm.speech.units.phonemes import KokoroUnitDecoder, parse_spec

    if voice := parse_spec(str(folder)):
        return KokoroUnitDecoder(voice)
    folder = Path(folder)
    if _kind(folder) == "emoslm-unit-decoder":
        return UnitDecoder.from_pretrained(folder)
    return CosyVoiceDecoder(folder)


def tokenizer_of(decoder: Path) -> Path | None:
    """The tokenizer folder an emoslm decoder was trained on (its config records it; older folders stored
    it relative to the run's working directory, then it is found in the same run layout). Phoneme units'
    tokenizer is the spec itself."""
    from emoslm.speech.units.decoder import UnitDecoder
    from emoslm.speech.units.phonemes import parse_spec

    if parse_spec(str(decoder)):
        return Path(str(decoder))

    source = UnitDecoder.config_of(decoder).tokenizer
    if not source:
        return None
    path = Path(source)
    if not path.is_absolute() and not path.exists():
        path = Path(decoder).resolve().parent.parent / path.parent.name / "final"
    return path


def write_units(units: Units, path: Path | None = None) -> str:
    text = json.dumps({"rate": units.rate, "codes": [int(c) for c in units.codes]})
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return text


def read_units(path: Path) -> Units:
    """Units from a JSON file; anything else is one clear error."""
    try:
        data = json.loads(Path(path).read_text())
        return Units(np.asarray(data["codes"], np.int64).reshape(-1), float(data["rate"]))
    except FileNotFoundError:
        raise EmoslmError(f"{path}: no such units file") from None
    except (ValueError, KeyError, TypeError):
        raise EmoslmError(f"{path}: not a units file (expected JSON with `rate` and `codes`)") from None


def encode_file(audio: Path, tokenizer: Path, out: Path | None = None, transcribe: Any = None) -> str:
    return write_units(load_tokenizer(tokenizer, transcribe).encode(load_audio(audio)), out)


def decode_file(units: Path, decoder: Path, out: Path, speaker: str | None = None, speaker_audio: Path | None = None,
                emotion: str | None = None) -> float:
    """Write the speech for a units file; returns its seconds."""
    from emoslm.emotions import normalise_tag

    model, codes = load_decoder(decoder), read_units(units)
    limit = getattr(getattr(model, "config", None), "codes", None) or getattr(getattr(model, "vocab", None), "size", 0)
    if codes.codes.size and limit and int(codes.codes.max()) >= limit:
        raise EmoslmError(f"{units}: code {int(codes.codes.max())} is outside this decoder's codebook "
                          f"({limit}); decode with the decoder trained on that tokenizer's units")
    if speaker_audio and not hasattr(model, "speaker_of"):
        raise EmoslmError("--speaker-audio enrols a voice for emoslm decoders; a CosyVoice folder takes --speaker "
                          "with a name from its spk2info.pt")
    voice: Any = model.speaker_of([load_audio(speaker_audio)]) if speaker_audio else speaker
    styled = hasattr(model, "style_vector") or hasattr(model, "vocab")  # emoslm and Kokoro decoders take a style
    kwargs = {"style": normalise_tag(emotion)} if emotion and styled else {}
    audio = model.decode(codes, voice, **kwargs)
    save_audio(out, audio, getattr(model, "sample_rate", 16_000))
    return len(audio) / getattr(model, "sample_rate", 16_000)


def resynth_file(audio: Path, tokenizer: Path, decoder: Path, out: Path, speaker: str | None = None,
                 transcribe: Any = None) -> tuple[int, float]:
    """Encode and decode one file with the input's own voice (enrolled) and style (estimated)."""
    tok, dec, signal = load_tokenizer(tokenizer, transcribe), load_decoder(decoder), load_audio(audio)
    units = tok.encode(signal)
    if not hasattr(dec, "style_of"):  # CosyVoice's token2wav: its own speaker, no style input
        speech = dec.decode(units, speaker)
        save_audio(out, speech, dec.sample_rate)
        return len(units.codes), len(speech) / dec.sample_rate
    voice = speaker or dec.speaker_of([signal])
    speech = dec.decode(units, voice, dec.style_of(signal, voice))
    save_audio(out, speech, dec.sample_rate)
    return len(units.codes), len(speech) / dec.sample_rate
