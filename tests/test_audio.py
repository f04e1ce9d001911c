import os

import numpy as np
import pytest
import soundfile as sf

from emoslm.audio import chunk, load_audio, save_audio, speech_segments, trim_to_speech
from emoslm.errors import AudioError
from tests.conftest import tone


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_formats_load_as_mono_16k_float32(tmp_path, fmt):
    sr = 44_100
    stereo = np.stack([tone(1.5, 440, sr), tone(1.5, 440, sr)], axis=1)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, stereo, sr, format=fmt)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / 16_000 - 1.5) < 0.1  # mp3 adds encoder padding
    spectrum = np.abs(np.fft.rfft(audio))
    peak_hz = np.argmax(spectrum) * 16_000 / len(audio)
    assert abs(peak_hz - 440) < 5


def test_save_is_atomic_and_roundtrips(tmp_path):
    x = tone(0.5)
    out = save_audio(tmp_path / "sub" / "x.wav", x)
    assert out.exists() and not [p for p in out.parent.iterdir() if p.suffix == ".tmp"]
    assert np.allclose(load_audio(out), x, atol=1e-3)


def _write_bytes(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_empty_file(tmp_path):
    with pytest.raises(AudioError, match="empty"):
        load_audio(_write_bytes(tmp_path, "empty.wav", b""))


def test_silent_audio(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(16_000, np.float32), 16_000)
    with pytest.raises(AudioError, match="silent"):
        load_audio(path)
    assert load_audio(path, allow_silent=True).size == 16_000


def test_corrupt_header(tmp_path):
    junk = b"RIFF\x00\x00\x00\x00WAVE" + os.urandom(200)
    with pytest.raises(AudioError, match="corrupt"):
        load_audio(_write_bytes(tmp_path, "corrupt.wav", junk))


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "MP3"])
def test_truncated(tmp_path, fmt):
    full = tmp_path / f"full.{fmt.lower()}"
    sf.write(full, tone(3.0, 300), 16_000, format=fmt)
    data = full.read_bytes()
    with pytest.raises(AudioError, match="truncated"):
        load_audio(_write_bytes(tmp_path, f"cut.{fmt.lower()}", data[: len(data) // 2]))


def test_not_audio(tmp_path):
    with pytest.raises(AudioError, match="not an audio file"):
        load_audio(_write_bytes(tmp_path, "notes.wav", b"hello, this is a text file\n" * 50))


def test_over_long(tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, np.tile(tone(1.0, 200, 8_000), 601), 8_000, format="FLAC")  # 10 min 1 s
    with pytest.raises(AudioError, match="over the 10 min limit"):
        load_audio(path)


def test_missing_and_directory(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)


def test_nan_samples(tmp_path):
    x = tone(1.0)
    x[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16_000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)


def test_chunk_covers_everything_with_overlap():
    x = np.arange(16_000 * 7, dtype=np.float32)
    pieces = list(chunk(x, seconds=3, overlap=1))
    assert [len(p) for p in pieces] == [48_000, 48_000, 48_000]
    assert pieces[1][0] == 32_000 and pieces[-1][-1] == x[-1]
    with pytest.raises(ValueError):
        list(chunk(x, seconds=1, overlap=1))


def test_vad_finds_the_speech(spoken_sentence):
    pad = np.zeros(16_000, np.float32)
    audio = np.concatenate([pad, spoken_sentence, pad])
    segments = speech_segments(audio)
    assert segments, "VAD found no speech in a spoken sentence"
    assert 0.5 < segments[0].start < 1.4  # Silero pads segments by up to 0.4 s
    assert abs(segments[-1].end - (1 + len(spoken_sentence) / 16_000)) < 0.5
    trimmed = trim_to_speech(audio)
    assert len(trimmed) < len(audio) - 16_000
    assert speech_segments(tone(2.0, 1000, amp=0.01)) == []
