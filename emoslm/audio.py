"""Audio in and out: every model in emoslm sees mono float32 at 16 kHz.

Loading validates as it goes so that a bad file fails here, with a sentence a user can act on,
instead of deep inside a model as a shape error or a hallucinated transcript.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from emoslm.atomic import atomic_file
from emoslm.errors import AudioError, AudioTooLong

SAMPLE_RATE = 16_000
MAX_SECONDS = 600.0  # 10 minutes: longer inputs are almost always a mistake (a whole podcast, a stuck mic)
SILENCE_DBFS = -60.0  # peak below this is treated as no signal at all
SUPPORTED = ("wav", "flac", "ogg", "mp3")


@dataclass(frozen=True)
class Segment:
    """A stretch of speech, in seconds from the start of the clip."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


def load_audio(
    source: str | os.PathLike[str] | bytes,
    sample_rate: int = SAMPLE_RATE,
    max_seconds: float = MAX_SECONDS,
    allow_silent: bool = False,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Decode WAV/FLAC/OGG/MP3 (a path or raw bytes) to mono float32 at ``sample_rate``.

    ``offset``/``duration`` (seconds) read one segment of a long recording (GigaSpeech, Kaldi
    ``segments``) without decoding the rest; the length limit then applies to the segment.
    Raises ``AudioError`` for empty, non-audio, corrupt, truncated, over-long or silent input.
    """
    name, data = _read_source(source)
    if len(data) == 0:
        raise AudioError(f"{name}: the file is empty (0 bytes); record or export the audio again")
    _check_wav_truncation(name, data)
    try:
        with _quiet_stderr():
            with sf.SoundFile(io.BytesIO(data)) as f:
                declared, native_sr = f.frames, f.samplerate
                if native_sr <= 0:
                    raise AudioError(f"{name}: the header gives no sample rate; the file is corrupt")
                if offset or duration is not None:
                    declared = _seek_segment(f, name, offset, duration)
                if declared / native_sr > max_seconds:
                    raise AudioTooLong(_too_long(name, declared / native_sr, max_seconds))
                audio = f.read(declared if offset or duration is not None else -1, dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        raise AudioError(_decode_message(name, str(exc))) from None
    except RuntimeError as exc:  # libsndfile reports some decoder failures this way
        raise AudioError(f"{name}: cannot decode the audio ({_clean(str(exc))}); the file is corrupt") from None
    if declared > 0 and len(audio) < 0.98 * declared:
        raise AudioError(
            f"{name}: the file is truncated ({len(audio) / native_sr:.2f} s of "
            f"{declared / native_sr:.2f} s decoded); copy or export it again"
        )
    audio = audio.mean(axis=1)
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{name}: the samples contain NaN or infinity; the file is corrupt")
    audio = resample(audio, native_sr, sample_rate)
    check_signal(audio, sample_rate, name, max_seconds=max_seconds, allow_silent=allow_silent)
    return audio


def _seek_segment(f: sf.SoundFile, name: str, offset: float, duration: float | None) -> int:
    """Position ``f`` at ``offset``; the number of frames of the segment."""
    start = int(round(offset * f.samplerate))
    if offset < 0 or start >= f.frames:
        raise AudioError(f"{name}: the segment starts at {offset:.2f} s, past the end "
                         f"({f.frames / f.samplerate:.2f} s); check the manifest's offsets")
    f.seek(start)
    frames = f.frames - start if duration is None else int(round(duration * f.samplerate))
    if frames <= 0:
        raise AudioError(f"{name}: the segment at {offset:.2f} s has no length; check the manifest's durations")
    return frames


def check_signal(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    name: str = "audio",
    max_seconds: float = MAX_SECONDS,
    allow_silent: bool = False,
) -> None:
    """Reject arrays that no model should see: no samples, too long, or digital silence."""
    if audio.size == 0:
        raise AudioError(f"{name}: the audio has no samples; record or export it again")
    seconds = audio.size / sample_rate
    if seconds > max_seconds:
        raise AudioTooLong(_too_long(name, seconds, max_seconds))
    if not allow_silent and peak_dbfs(audio) < SILENCE_DBFS:
        raise AudioError(
            f"{name}: the audio is silent (peak {peak_dbfs(audio):.0f} dBFS); check the microphone or the file"
        )


def peak_dbfs(audio: np.ndarray) -> float:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return 20.0 * np.log10(max(peak, 1e-10))


def resample(audio: np.ndarray, sr_in: float, sr_out: float = SAMPLE_RATE) -> np.ndarray:
    """High-quality sample-rate conversion (soxr), always returning float32."""
    audio = np.asarray(audio, dtype=np.float32)
    if sr_in == sr_out or audio.size == 0:
        return audio
    return soxr.resample(audio, sr_in, sr_out, quality="HQ").astype(np.float32)


def save_audio(path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write audio atomically (temp file + rename), format chosen by the suffix (default WAV)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".").upper() or "WAV"
    if fmt.lower() not in SUPPORTED:
        raise AudioError(f"{path}: cannot write '{fmt}'; use one of {', '.join(SUPPORTED)}")
    with atomic_file(path) as tmp:
        sf.write(tmp, np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sample_rate, format=fmt)
    return path


def to_wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def chunk(
    audio: np.ndarray, seconds: float, overlap: float = 0.0, sample_rate: int = SAMPLE_RATE
) -> Iterator[np.ndarray]:
    """Fixed-length windows (the last one shorter), e.g. 30 s windows for the Whisper encoder."""
    if seconds <= 0 or overlap < 0 or overlap >= seconds:
        raise ValueError("chunk needs seconds > 0 and 0 <= overlap < seconds")
    size = int(round(seconds * sample_rate))
    step = size - int(round(overlap * sample_rate))
    for start in range(0, max(1, len(audio) - (size - step)), step):
        yield audio[start : start + size]


def speech_segments(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    min_silence_ms: int = 300,
    threshold: float = 0.5,
) -> list[Segment]:
    """Voice activity detection with the Silero v6 ONNX model bundled in faster-whisper (no torch)."""
    try:
        from faster_whisper.vad import VadOptions, get_speech_timestamps
    except ImportError:
        from emoslm.errors import MissingPackageError

        raise MissingPackageError("faster-whisper", "voice activity detection", "emoslm[asr]") from None
    audio = resample(audio, sample_rate, SAMPLE_RATE)
    options = VadOptions(threshold=threshold, min_silence_duration_ms=min_silence_ms)
    stamps = get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE)
    return [Segment(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]


def trim_to_speech(audio: np.ndarray, pad: float = 0.1, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Cut leading and trailing non-speech; returns the input unchanged when VAD finds no speech."""
    segments = speech_segments(audio, sample_rate)
    if not segments:
        return audio
    start = max(0, int((segments[0].start - pad) * sample_rate))
    end = min(len(audio), int((segments[-1].end + pad) * sample_rate))
    return audio[start:end]


# --- helpers ---------------------------------------------------------------------------------


def _read_source(source: str | os.PathLike[str] | bytes) -> tuple[str, bytes]:
    if isinstance(source, (bytes, bytearray)):
        return "audio", bytes(source)
    path = Path(source)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    return str(path), path.read_bytes()


def _check_wav_truncation(name: str, data: bytes) -> None:
    """libsndfile silently shortens a cut-off WAV; compare the declared data size with what is there."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk_id == b"data":
            available = len(data) - pos - 8
            streamed = size == 0 or size >= 0x7FFF0000  # placeholder sizes written by streaming encoders
            if not streamed and available < size:
                raise AudioError(
                    f"{name}: the WAV file is truncated ({available} of {size} data bytes present); "
                    "copy or export it again"
                )
            return
        pos += 8 + size + (size & 1)


def _clean(detail: str) -> str:
    """libsndfile names its input; for bytes that is an object repr ("<_io.BytesIO object at 0x…>"): drop it."""
    detail = re.sub(r"Error opening <[^>]*>:\s*", "", detail)
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the data", detail).strip()


def _decode_message(name: str, detail: str) -> str:
    detail = _clean(detail)
    low = detail.lower()
    if "format not recognised" in low or "unknown format" in low:
        return f"{name}: not an audio file this tool can read; use {', '.join(SUPPORTED).upper()}"
    if "lost sync" in low or "malformed" in low or "no 'data' chunk" in low or "error in" in low:
        return f"{name}: the audio file is corrupt or truncated ({detail.split(':')[-1].strip()}); export it again"
    return f"{name}: cannot decode the audio ({detail.strip()})"


def _too_long(name: str, seconds: float, limit: float) -> str:
    if limit < 120:
        return f"{name}: the audio is {seconds:.1f} s long, over the {limit:.0f} s limit; send a shorter clip"
    return f"{name}: the audio is {seconds / 60:.1f} min long, over the {limit / 60:.0f} min limit; split it first"


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """mpg123 inside libsndfile prints warnings straight to fd 2; keep the user's terminal clean."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
