"""The server against hostile pages, malformed events and impatient users (issue 36): each failure a hostile
test found on 127.0.0.1, as a test that failed before and passes now. Fast tier: no model answers here."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys

import httpx
import numpy as np
import pytest

from emoslm.audio import to_wav_bytes
from tests.conftest import serving
from tests.test_serve import Mute

pytest.importorskip("fastapi")
websockets_sync = pytest.importorskip("websockets.sync.client")


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and "Traceback" not in body["message"]
    assert "0x" not in body["message"] and "<_io" not in body["message"]  # no object reprs
    return body


@pytest.fixture(scope="module")
def muted():
    """A server with an agent that never answers, and one session allowed per client."""
    from emoslm.serve.app import create_app
    from emoslm.serve.runtime import Limits, Runtime

    runtime = Runtime(Mute(), Limits(max_sessions_per_client=1, max_audio_seconds=5.0))  # type: ignore[arg-type]
    with serving(create_app(runtime)) as url:
        yield url, runtime


def ws_url(url: str) -> str:
    return url.replace("http", "ws") + "/v1/realtime"


# --- 1. every realtime event is validated; a bad one is an error event, and the session lives on ------------

# the payloads that dropped the socket before, and the field each error must name
MALFORMED = [
    ({"audio": {"input": {"turn_detection": {"silence_duration_ms": "abc"}}}},
     "session.audio.input.turn_detection.silence_duration_ms"),
    ({"audio": "x"}, "session.audio"),
    ({"audio": {"input": {"turn_detection": {"threshold": None}}}}, "session.audio.input.turn_detection.threshold"),
    ({"emoslm": "yes"}, "session.emoslm"),
    ({"emoslm": {"think": "yes"}}, "session.emoslm.think"),
    ({"audio": {"input": {"format": "pcm16"}}}, "session.audio.input.format"),
    ({"output_modalities": "audio"}, "session.output_modalities"),
    ({"audio": {"input": {"turn_detection": {"silence_duration_ms": -200}}}},
     "session.audio.input.turn_detection.silence_duration_ms"),
    ({"audio": {"input": {"turn_detection": {"threshold": 1.5}}}}, "session.audio.input.turn_detection.threshold"),
    ({"turn_detection": {"silence_duration_ms": 0}}, "session.turn_detection.silence_duration_ms"),
    ({"audio": {"input": {"format": {"rate": 12345}}}}, "session.audio.input.format.rate"),
]


def test_malformed_session_updates_get_an_error_naming_the_field_and_the_session_goes_on(muted):
    with websockets_sync.connect(ws_url(muted[0])) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        for session, field in MALFORMED:
            ws.send(json.dumps({"type": "session.update", "session": session}))
            event = json.loads(ws.recv(timeout=10))
            assert event["type"] == "error", (session, event)
            assert event["error"]["param"] == field and event["error"]["message"].startswith(field), event
        for bad, param in [('{"type": "session.update"}', "session"), ('{"type": "input_audio_buffer.append", '
                           '"audio": 5}', "audio"), ('{"type": "conversation.item.truncate", "item_id": "x"}',
                                                     "audio_end_ms"), ("[1, 2]", "type"), ('{"type": null}', "type")]:
            ws.send(bad)
            event = json.loads(ws.recv(timeout=10))
            assert event["type"] == "error" and event["error"]["param"] == param, (bad, event)
        # still alive, and a good partial update changes only what it names
        ws.send(json.dumps({"type": "session.update", "session": {
            "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.7}}}}}))
        updated = json.loads(ws.recv(timeout=10))["session"]["audio"]["input"]["turn_detection"]
        assert updated["threshold"] == 0.7 and updated["silence_duration_ms"] == 400


def test_parse_event_is_strict_and_reads_both_session_shapes():
    from emoslm.serve.realtime import Settings
    from emoslm.serve.realtime_events import BadEvent, parse_event

    beta = parse_event(json.dumps({"type": "session.update", "session": {
        "turn_detection": None, "modalities": ["text"], "instructions": "ignored", "voice": "alloy"}}))
    settings = Settings().updated(beta.session)
    assert not settings.server_vad and not settings.audio_out
    ga = parse_event(json.dumps({"type": "session.update", "session": {
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}, "emoslm": {"lang": "zh"}}}))
    settings = settings.updated(ga.session)
    assert settings.rate == 16000 and settings.lang == "zh" and not settings.server_vad  # the rest kept
    assert Settings().wire("s")["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"  # Smart Turn by default
    eager = Settings().updated(parse_event(json.dumps({"type": "session.update", "session": {
        "turn_detection": {"type": "semantic_vad", "eagerness": "high"}}})).session)
    assert eager.semantic and eager.eagerness == "high"
    silence = eager.updated(parse_event(json.dumps({"type": "session.update", "session": {
        "turn_detection": {"silence_duration_ms": 700}}})).session)  # no type: server_vad, as before
    assert not silence.semantic and silence.silence_ms == 700
    assert silence.wire("s")["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    with pytest.raises(BadEvent, match="session.turn_detection.type: unsupported value 'push_to_talk'") as bad:
        parse_event(json.dumps({"type": "session.update", "session": {"turn_detection": {"type": "push_to_talk"}}}))
    assert bad.value.param == "session.turn_detection.type"
    with pytest.raises(BadEvent, match="eagerness"):
        parse_event(json.dumps({"type": "session.update", "session": {
            "turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}}))
    with pytest.raises(BadEvent, match="unsupported event type 'dance'"):
        parse_event('{"type": "dance"}')
    with pytest.raises(BadEvent, match="not valid JSON"):
        parse_event("{oops")


# --- 2. Host and Origin ---------------------------------------------------------------------------------------

def test_host_and_origin_are_checked_with_or_without_a_key(muted):
    url = muted[0]
    assert "DNS-rebinding" in _error(httpx.get(f"{url}/health", headers={"Host": "rebind.evil.example"}), 403)[
        "message"]
    assert "--allow-origin" in _error(httpx.get(f"{url}/v1/models", headers={"Origin": "http://evil.example"}),
                                      403)["message"]
    assert _error(httpx.get(f"{url}/", headers={"Origin": "null"}), 403)
    for headers in [{}, {"Origin": url}, {"Origin": "http://localhost:3000"}, {"Host": "localhost"}]:
        assert httpx.get(f"{url}/v1/models", headers=headers).status_code == 200, headers
    with pytest.raises(Exception, match="403"):
        websockets_sync.connect(ws_url(url), origin="http://evil.example")
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(Exception, match="403"):  # a page whose name was rebound to 127.0.0.1
        websockets_sync.connect(f"ws://rebind.evil.example:{port}/v1/realtime",
                                sock=socket.create_connection(("127.0.0.1", port)))
    with websockets_sync.connect(ws_url(url), origin=url) as ws:  # the page this server served
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"


def test_allow_origin_lets_a_named_page_in_with_cors(spoken_sentence):
    from emoslm.serve.app import create_app
    from emoslm.serve.runtime import Runtime

    runtime = Runtime(None, allow_origins=("https://app.example.com",))
    with serving(create_app(runtime)) as url:
        ok = httpx.get(f"{url}/v1/models", headers={"Origin": "https://app.example.com"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example.com"
        preflight = httpx.options(f"{url}/v1/audio/speech", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status_code == 200
        assert _error(httpx.get(f"{url}/v1/models", headers={"Origin": "https://other.example.com"}), 403)
        assert httpx.get(f"{url}/health", headers={"Host": "app.example.com"}).status_code == 200  # a proxy's name


def test_allow_origin_values_are_checked():
    from emoslm.serve.security import Allowed

    assert Allowed.check_origin("HTTPS://App.Example.com:8443/") == "https://app.example.com:8443"
    for bad in ["app.example.com", "ftp://x", "https://x/path", "null"]:
        with pytest.raises(ValueError, match="not an origin"):
            Allowed.check_origin(bad)
    result = subprocess.run([sys.executable, "-m", "emoslm.cli", "serve", "--agent", "none", "--allow-origin",
                             "evil"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not an origin" in result.stderr and "Traceback" not in result.stderr


# --- 5. the smaller items ---------------------------------------------------------------------------------------

def test_blank_api_keys_are_refused():
    for host in ["0.0.0.0", "127.0.0.1"]:
        result = subprocess.run([sys.executable, "-m", "emoslm.cli", "serve", "--agent", "none", "--host", host,
                                 "--api-key", " "], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "API key is blank" in result.stderr and "Traceback" not in result.stderr


def test_unknown_models_get_404_and_are_not_echoed(muted, spoken_sentence):
    url = muted[0]
    body = _error(httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-4o-audio-preview", "messages": [
        {"role": "user", "content": "hi"}]}), 404)
    assert body["code"] == "model_not_found" and body["param"] == "model" and "emoslm" in body["message"]
    assert _error(httpx.post(f"{url}/v1/audio/speech", json={"model": "nope", "input": "hi"}), 404)["code"] == \
        "model_not_found"
    wav = {"file": ("a.wav", to_wav_bytes(spoken_sentence))}
    assert _error(httpx.post(f"{url}/v1/audio/transcriptions", files=wav, data={"model": "nope"}), 404)
    models = {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert {"emoslm", "whisper-1", "tts-1"} <= models


def test_unknown_voices_get_400(muted):
    url = muted[0]
    for voice in ["flite:nonexistent", "espeak:nonexistent", "espeak:en-us+nope", "kokoro:nobody"]:
        body = _error(httpx.post(f"{url}/v1/audio/speech", json={"input": "hi", "voice": voice}), 400)
        assert "unknown" in body["message"] and voice.split(":")[1] in body["message"], body


def test_a_wav_with_sample_rate_zero_names_the_problem_without_an_object_repr(muted):
    header = bytearray(to_wav_bytes(np.full(1_600, 0.1, np.float32)))
    header[24:32] = struct.pack("<II", 0, 0)  # sample rate and byte rate 0
    body = _error(httpx.post(f"{muted[0]}/v1/audio/transcriptions", files={"file": ("a.wav", bytes(header))}), 400)
    assert body["param"] == "file"


def test_transcription_and_speech_count_against_the_per_client_limit(muted, spoken_sentence):
    url, runtime = muted
    runtime.open_session("127.0.0.1")  # one request in flight: the next from this client is refused
    try:
        wav = {"file": ("a.wav", to_wav_bytes(spoken_sentence))}
        assert "per client" in _error(httpx.post(f"{url}/v1/audio/transcriptions", files=wav), 429)["message"]
        assert "per client" in _error(httpx.post(f"{url}/v1/audio/speech", json={"input": "hi"}), 429)["message"]
    finally:
        runtime.close_session("127.0.0.1")
    assert httpx.post(f"{url}/v1/audio/speech", json={"input": "hi", "voice": "piper"}).status_code == 200
    assert runtime.sessions == {}  # every slot given back
