"""The fuzz tier (slow): property-based requests against the real server, looking for a 500, a dropped
socket or a traceback in the log.

- HTTP: schemathesis generates requests from the OpenAPI schema FastAPI publishes (``/openapi.json``), valid
  and invalid, for every route; each answer must be a non-5xx in OpenAI's error shape, never a traceback.
- Realtime: hypothesis generates sequences of client events — the event types emoslm accepts with fields of
  every JSON type, unknown types, non-objects, binary frames — sent over one WebSocket; after each sequence
  the session must still answer (``input_audio_buffer.clear`` → ``cleared``).

The agent is the real teacher (``served`` in conftest); examples are few enough for CI (about 2 minutes).
"""

from __future__ import annotations

import base64
import json
import logging

import pytest

hypothesis = pytest.importorskip("hypothesis")
schemathesis = pytest.importorskip("schemathesis")
websockets_sync = pytest.importorskip("websockets.sync.client")
ConnectionClosed = pytest.importorskip("websockets.exceptions").ConnectionClosed

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


class Tracebacks(logging.Handler):
    """Every log record that carries an exception, from any logger (uvicorn's, FastAPI's, ours)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "Traceback" in record.getMessage():
            self.records.append(record)


@pytest.fixture
def tracebacks():
    handler = Tracebacks()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn.error"), logging.getLogger("uvicorn")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.records
    for logger in loggers:
        logger.removeHandler(handler)


# --- HTTP: schemathesis over the published schema ------------------------------------------------------------

@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_url(served[0] + "/openapi.json")


def call(case, tracebacks: list) -> None:  # noqa: ANN001 - a schemathesis Case
    from schemathesis.checks import not_a_server_error

    response = case.call_and_validate(checks=[not_a_server_error], timeout=120)
    if response.status_code >= 400:
        error = response.json()["error"]  # OpenAI's shape, one line
        assert set(error) == {"message", "type", "param", "code"}, error
        assert "Traceback" not in error["message"] and " at 0x" not in error["message"], error
    assert not tracebacks, [r.getMessage() for r in tracebacks]


@pytest.mark.slow
def test_every_route_answers_generated_requests_without_a_server_error(api_schema, tracebacks):
    """Valid and invalid requests for each operation (schemathesis's pytest plugin does not run under this
    pytest, so its strategies are driven with hypothesis directly)."""
    from schemathesis import GenerationMode

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {"/v1/chat/completions", "/v1/audio/speech", "/v1/audio/transcriptions"} <= {o.path for o in operations}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(mode))
            def run(case) -> None:  # noqa: ANN001 - a schemathesis Case
                call(case, tracebacks)

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (GET /health has no parameters)
                assert mode == GenerationMode.NEGATIVE, operation.label


# --- realtime: hypothesis over client events -----------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) |
                    st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)


def maybe(strategy):  # noqa: ANN001, ANN201 - hypothesis strategies
    """A field with a plausible value or any JSON at all."""
    return st.one_of(strategy, JSON)


DETECTION = st.none() | st.fixed_dictionaries({}, optional={
    "type": maybe(st.sampled_from(["server_vad", "semantic_vad"])),
    "threshold": maybe(st.floats(-1, 2)), "silence_duration_ms": maybe(st.integers(-1000, 20_000)),
    "create_response": JSON, "prefix_padding_ms": maybe(st.integers(-10, 10_000))})
SESSION = st.fixed_dictionaries({}, optional={
    "audio": maybe(st.fixed_dictionaries({}, optional={"input": maybe(st.fixed_dictionaries({}, optional={
        "format": maybe(st.fixed_dictionaries({}, optional={"type": JSON, "rate": maybe(st.sampled_from(
            [8000, 16000, 24000, 12345, 0, -1]))})),
        "turn_detection": maybe(DETECTION)}))})),
    "turn_detection": maybe(DETECTION),
    "output_modalities": maybe(st.lists(st.sampled_from(["audio", "text", "video"]), max_size=3)),
    "emoslm": maybe(st.fixed_dictionaries({}, optional={"think": JSON, "lang": maybe(st.sampled_from(
        ["en", "zh", "auto", "fr"]))})),
    "instructions": JSON})
PCM = st.binary(max_size=96).map(lambda b: base64.b64encode(b).decode())

EVENT = st.one_of(
    st.builds(lambda s: {"type": "session.update", "session": s}, maybe(SESSION)),
    st.builds(lambda a: {"type": "input_audio_buffer.append", "audio": a}, maybe(PCM | st.text(max_size=12))),
    st.sampled_from([{"type": "input_audio_buffer.commit"}, {"type": "input_audio_buffer.clear"},
                     {"type": "response.create"}, {"type": "response.cancel"}]),
    st.builds(lambda r: {"type": "response.create", "response": r}, JSON),
    st.builds(lambda i, c, ms: {"type": "conversation.item.truncate", "item_id": i, "content_index": c,
                                "audio_end_ms": ms}, maybe(st.text(max_size=10)), maybe(st.integers(-2, 2)),
              maybe(st.integers(-5, 10**9))),
    st.dictionaries(st.text(max_size=10), JSON, max_size=4),  # any object, usually with no type
    st.builds(lambda t, rest: {"type": t, **rest}, st.text(max_size=30), st.dictionaries(st.text(max_size=8), JSON,
                                                                                          max_size=3)),
    JSON,  # not an object at all
)
FRAME = st.one_of(EVENT.map(json.dumps), st.binary(max_size=32), st.text(max_size=20))  # and non-JSON frames


@pytest.fixture(scope="module")
def socket(served):
    """One realtime session for the whole run (a dropped socket is the failure being looked for)."""
    ws = websockets_sync.connect(served[0].replace("http", "ws") + "/v1/realtime", max_size=None)
    assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
    yield ws
    ws.close()


def alive(ws) -> list[dict]:  # noqa: ANN001 - a websockets connection
    """The session still answers: clear the buffer and read up to ``cleared`` (the events on the way back)."""
    ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
    events = []
    while True:
        events.append(json.loads(ws.recv(timeout=60)))
        if events[-1]["type"] == "input_audio_buffer.cleared":
            return events


@pytest.mark.slow
@FUZZ
@given(frames=st.lists(FRAME, min_size=1, max_size=5))
def test_generated_realtime_events_never_drop_the_session(socket, frames, tracebacks):
    for frame in frames:
        socket.send(frame)
    try:
        events = alive(socket)
    except ConnectionClosed as exc:
        raise AssertionError(f"the socket dropped after {frames!r}: {exc}") from None
    for event in events:
        if event["type"] == "error":
            assert set(event["error"]) == {"type", "code", "message", "param"}, event
            assert event["error"]["code"] != "internal_error" and "Traceback" not in event["error"]["message"], (
                frames, event)
    assert not tracebacks, (frames, [r.getMessage() for r in tracebacks])
