
import httpx
import numpy as np
import pytest

from emoslm.errors import BackendError, EmoslmError
from emoslm.speech.dsp import apply_gain, engine_rate, estimate_f0, varispeed
from emoslm.speech.prosody import Prosody, acted, reply
from emoslm.speech.tts import EspeakTTS, OpenAISpeechTTS, load_tts, speakable, to_pinyin
from emoslm.textnorm import error_rate
from tests.conftest import SENTENCE, free_port, serving


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


def test_speakable_drops_nonverbal_tags():
    assert speakable("I'm fine. [sigh] Really [laughter]!") == "I'm fine. Really !"


def test_speakable_drops_latin_glosses_after_chinese_but_keeps_english_brackets():
    assert speakable("你的感受是愤怒（anger），因为同事 (neutral) 填错了。") == "你的感受是愤怒，因为同事 填错了。"
    assert speakable("I felt it (anger) again.") == "I felt it (anger) again."
    with pytest.raises(EmoslmError, match="nothing to speak"):
        EspeakTTS().synthesize("[sigh]")


def test_piper_rate_and_energy_follow_prosody(piper):
    slow = piper.synthesize(SENTENCE, Prosody(rate=0.75))
    fast = piper.synthesize(SENTENCE, Prosody(rate=1.3))
    assert slow.duration > 1.35 * fast.duration
    soft = piper.synthesize(SENTENCE, Prosody(energy=0.5)).audio
    loud = piper.synthesize(SENTENCE, Prosody(energy=1.3)).audio
    assert rms(loud) > 1.8 * rms(soft)
    assert np.max(np.abs(loud)) <= 1.0


def test_emotional_prosody_stays_intelligible(piper, asr_en):
    """Rate, pitch and energy of each emotion keep the words. Piper's VITS noise is not seedable (a CI run
    heard "sad" at 0.21 once), so the prosody is the engine's reproducible one: the same samples every run."""
    for tag in ("sad", "anger", "surprise"):
        audio = piper.synthesize(SENTENCE, piper.reproducible(acted(tag))).at()
        assert error_rate(SENTENCE, asr_en.transcribe(audio).text) <= 0.15, tag


def test_varispeed_moves_f0_and_engine_rate_keeps_the_length():
    sr = 16_000
    for semitones in (4.0, -3.0):
        seconds = 1.0 / engine_rate(1.0, semitones)  # what an engine asked for that rate speaks for 1 s of text
        t = np.arange(int(sr * seconds)) / sr
        x = (0.3 * sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 8))).astype(np.float32)
        y = varispeed(x, sr, semitones)
        assert len(y) == pytest.approx(sr, abs=2)
        assert estimate_f0(y, sr) == pytest.approx(120 * 2 ** (semitones / 12), rel=0.03)


def test_an_acted_piper_clip_is_pitched_as_asked_and_about_as_long(piper):
    """Piper's durations are not linear in its length scale (measured on SENTENCE: rate 0.7 → 1.31× neutral's
    length, 1.2 → 0.91×), so varispeed's rate rule keeps the length within 15%, not exactly."""
    from dataclasses import replace

    for tag in ("sad", "surprise"):
        prosody = piper.reproducible(acted(tag))
        pitched = piper.synthesize(SENTENCE, prosody).at()
        flat = piper.synthesize(SENTENCE, replace(prosody, pitch=0.0)).at()
        assert len(pitched) == pytest.approx(len(flat), rel=0.15), tag
        moved = 12 * np.log2(estimate_f0(pitched, 16_000) / estimate_f0(flat, 16_000))
        assert moved == pytest.approx(prosody.pitch, abs=1.0), tag


def test_gain_never_clips():
    y = apply_gain(np.full(100, 0.9, np.float32), 3.0)
    assert np.max(np.abs(y)) <= 0.98


def test_prosody_tables_and_jitter():
    import random

    assert acted("sad").rate < 1 < acted("anger").rate
    assert reply("sad").energy < 1 and "gentle" in reply("sad").style
    assert acted("fear").jitter(random.Random(1)) == acted("fear").jitter(random.Random(1))
    assert "slowly" in reply("sad").describe()
    with pytest.raises(EmoslmError, match="unknown emotion"):
        acted("bored")


def test_espeak_ssml_rate_changes_duration():
    tts = EspeakTTS("en-us")
    slow = tts.synthesize(SENTENCE, Prosody(rate=0.7))
    fast = tts.synthesize(SENTENCE, Prosody(rate=1.4))
    assert slow.duration > 1.5 * fast.duration
    assert tts.synthesize(SENTENCE, voice="en-us+f3").duration > 1


def test_espeak_mandarin_reads_pinyin():
    assert to_pinyin("我很好。") == "wo3 hen3 hao3."
    speech = EspeakTTS("zh").synthesize("我今天很开心！")
    assert 0.8 < speech.duration < 5


def test_openai_speech_backend_against_a_real_server(asr_en):
    """emoslm's own /v1/audio/speech (Piper behind it) is a real OpenAI-compatible TTS server."""
    from emoslm.serve.app import create_app
    from emoslm.serve.runtime import Runtime

    with serving(create_app(Runtime(None, voice="piper"))) as url:
        tts = load_tts(f"{url}/v1?model=emoslm&voice=alloy")
        assert isinstance(tts, OpenAISpeechTTS)
        slow = tts.synthesize(SENTENCE, Prosody(rate=0.7))
        fast = tts.synthesize(SENTENCE, Prosody(rate=1.4))
        assert slow.duration > 1.4 * fast.duration  # speed travels to the server (2x asked)
        assert error_rate(SENTENCE, asr_en.transcribe(slow.at()).text) <= 0.15
        bad = httpx.post(f"{url}/v1/audio/speech", json={"input": "hi", "emotion": "bored"})
        assert bad.status_code == 400 and "unknown emotion" in bad.json()["error"]["message"]


def test_unreachable_tts_server_is_a_clear_error():
    tts = OpenAISpeechTTS(f"http://127.0.0.1:{free_port()}/v1", timeout=2)
    with pytest.raises(BackendError, match="cannot reach the TTS endpoint"):
        tts.synthesize("hello")


def test_unknown_tts_spec():
    with pytest.raises(EmoslmError, match="unknown TTS spec"):
        load_tts("festival")


# --- packaged neural voices: Kokoro-82M (zh, en) and hibari (en) ----------------------------------------

ZH_LINE = "明天早上我要去做检查，我现在很紧张。"


@pytest.mark.parametrize("voice", ["jm_kumo", "jf_alpha"])
def test_kokoro_speaks_mandarin_that_whisper_hears(voice, asr_base):
    tts = load_tts(f"kokoro:{voice}")
    speech = tts.synthesize(ZH_LINE)
    assert speech.sample_rate == 24_000 and 1.5 < speech.duration < 8
    assert error_rate(ZH_LINE, asr_base.transcribe(speech.at(), language="zh").text) <= 0.2  # CER, simplified


def test_kokoro_and_hibari_speak_english(asr_en):
    for spec in ("kokoro:jm_kumo", "hibari"):
        speech = load_tts(spec).synthesize(SENTENCE)
        assert error_rate(SENTENCE, asr_en.transcribe(speech.at()).text) <= 0.15, spec


def test_neural_voices_take_the_emotion_prosody():
    for spec in ("kokoro:jf_nezumi", "hibari"):
        tts = load_tts(spec)
        slow, fast = tts.synthesize(SENTENCE, Prosody(rate=0.7)), tts.synthesize(SENTENCE, Prosody(rate=1.4))
        assert slow.duration > 1.5 * fast.duration, spec  # rate natively
        quiet = tts.synthesize("Hello there.", Prosody(energy=0.5))
        loud = tts.synthesize("Hello there.", Prosody(energy=1.2))
        assert np.abs(loud.audio).max() > 1.8 * np.abs(quiet.audio).max(), spec
        low = tts.synthesize("Hello there.", Prosody(pitch=-3.0))
        plain = tts.synthesize("Hello there.")
        assert estimate_f0(low.at(), 16_000) < estimate_f0(plain.at(), 16_000) * 0.92, spec
    assert np.array_equal(load_tts("hibari").synthesize("Same again.").audio,
                          load_tts("hibari").synthesize("Same again.").audio)  # seeded: reproducible


def test_kokoro_gives_the_same_samples_at_any_thread_count():
    # the IEAT build gives Kokoro all of a worker's threads and stays byte-identical whatever its workers
    one, two = load_tts("kokoro:jm_kumo", threads=1), load_tts("kokoro:jm_kumo", threads=2)
    assert np.array_equal(one.synthesize(ZH_LINE).audio, two.synthesize(ZH_LINE).audio)


def test_the_pool_gives_kokoro_every_thread_and_the_others_one(monkeypatch):
    from emoslm.config import settings
    from emoslm.speech.voice import engine_threads

    monkeypatch.delenv("EMOSLM_TTS_THREADS", raising=False)
    assert engine_threads("kokoro:jf_alpha") == settings().threads
    assert engine_threads("piper:piper-en-joe") == engine_threads("hibari") == 1
    monkeypatch.setenv("EMOSLM_TTS_THREADS", "3")
    assert engine_threads("kokoro:jf_alpha") == engine_threads("hibari") == 3


def test_unknown_kokoro_voice_is_one_clear_line():
    with pytest.raises(EmoslmError, match="unknown Kokoro voice 'af_sky'; use one of jm_kumo"):
        load_tts("kokoro:af_sky")


def test_threads_that_first_speak_mandarin_together_do_not_deadlock_in_pypinyin():
    """Corpus clips render in a thread pool while Kokoro's g2p preload runs: without the shared import lock,
    three espeak and three Kokoro front ends importing pypinyin at once raised _DeadlockError in 5 of 5
    fresh processes. A fresh process, because a module is imported once."""
    import subprocess
    import sys

    probe = (
        "import threading\n"
        "from emoslm.speech.kokoro import chinese_g2p\n"
        "from emoslm.speech.tts import to_pinyin\n"
        "errors, start = [], threading.Barrier(6)\n"
        "def go(f):\n"
        "    start.wait()\n"
        "    try: f()\n"
        "    except Exception as e: errors.append(repr(e))\n"
        "work = [lambda: to_pinyin('你好')] * 3 + [chinese_g2p] * 3\n"
        "threads = [threading.Thread(target=go, args=(f,)) for f in work]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print(errors)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "[]", (out.stdout, out.stderr[-2000:])
