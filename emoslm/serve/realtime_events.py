"""The realtime client events emoslm accepts, as typed schemas: every event is validated before it acts.

Why a schema and not ``dict.get``: a field of the wrong type (``"silence_duration_ms": "abc"``, ``"audio":
"x"``) used to raise deep inside a handler and drop the socket. Here it is refused at the door with an
``error`` event that names the field (``session.audio.input.turn_detection.silence_duration_ms``), and the
session goes on. Types are strict (``"yes"`` is not a boolean, ``"400"`` not a number) and ranges are
checked (durations > 0, thresholds in [0, 1]). Fields emoslm does not use (``instructions``, ``tools``,
``voice`` …) are ignored, so the official clients' full session objects are accepted.

Both shapes OpenAI has shipped are read: GA (``session.audio.input.turn_detection``,
``output_modalities``) and beta (``session.turn_detection``, ``modalities``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError

Rate = Literal[8_000, 16_000, 24_000, 44_100, 48_000]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class AudioFormat(Strict):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Rate = 24_000


class ServerVAD(Strict):
    """``turn_detection`` when the server decides turns (``null`` there: the client does)."""

    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    silence_duration_ms: int = Field(400, gt=0, le=10_000)
    prefix_padding_ms: int = Field(300, ge=0, le=5_000)
    create_response: Literal[True] = True  # a turn the server detects is always answered
    interrupt_response: Literal[True] = True  # and speech over a reply always interrupts it
    idle_timeout_ms: Optional[int] = Field(None, gt=0)


class SemanticVAD(Strict):
    """``turn_detection`` that ends a turn when the voice sounds finished (Smart Turn at a 0.2 s pause);
    ``eagerness`` says how long a pause that does not sound finished may last (low 1.5 s … high 0.6 s)."""

    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    create_response: Literal[True] = True
    interrupt_response: Literal[True] = True


def _detection_kind(value: Any) -> str:
    """The tag of a ``turn_detection`` object; without ``type`` it is server_vad, as it always was."""
    return value.get("type", "server_vad") if isinstance(value, dict) else getattr(value, "type", "server_vad")


DETECTION_KINDS = ("server_vad", "semantic_vad")
TurnDetection = Annotated[Union[Annotated[ServerVAD, Tag("server_vad")], Annotated[SemanticVAD, Tag("semantic_vad")]],
                          Discriminator(_detection_kind)]


class AudioInput(Strict):
    format: Optional[AudioFormat] = None
    turn_detection: Optional[TurnDetection] = None  # absent: unchanged (see ``fields_set``); null: client decides


class AudioConfig(Strict):
    input: Optional[AudioInput] = None


class EmoslmOptions(Strict):
    think: Optional[bool] = None
    lang: Optional[Literal["en", "zh", "auto"]] = None


Modalities = Annotated[list[Literal["audio", "text"]], Field(min_length=1, max_length=2)]


class SessionConfig(Strict):
    type: Optional[Literal["realtime"]] = None
    audio: Optional[AudioConfig] = None
    turn_detection: Optional[TurnDetection] = None  # the beta shape
    output_modalities: Optional[Modalities] = None
    modalities: Optional[Modalities] = None  # the beta shape
    emoslm: Optional[EmoslmOptions] = None

    def detection(self) -> tuple[bool, Optional[ServerVAD | SemanticVAD]]:
        """(given, value): whether this update sets turn detection, and to what (None: the client decides)."""
        audio_in = self.audio.input if self.audio is not None else None
        if audio_in is not None and "turn_detection" in audio_in.model_fields_set:
            return True, audio_in.turn_detection
        if "turn_detection" in self.model_fields_set:
            return True, self.turn_detection
        return False, None


class Event(Strict):
    event_id: Optional[str] = Field(None, max_length=256)


class SessionUpdate(Event):
    type: Literal["session.update"]
    session: SessionConfig


class Append(Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class Commit(Event):
    type: Literal["input_audio_buffer.commit"]


class Clear(Event):
    type: Literal["input_audio_buffer.clear"]


class ResponseCreate(Event):
    type: Literal["response.create"]
    response: Optional[dict[str, Any]] = None  # per-response overrides: none are used


class ResponseCancel(Event):
    type: Literal["response.cancel"]
    response_id: Optional[str] = None


class Truncate(Event):
    """The client played only ``audio_end_ms`` of an assistant item (barge-in during playback)."""

    type: Literal["conversation.item.truncate"]
    item_id: str = Field(min_length=1, max_length=256)
    content_index: int = Field(0, ge=0, le=0)  # an assistant item has one content part
    audio_end_ms: int = Field(ge=0)


ClientEvent = Annotated[Union[SessionUpdate, Append, Commit, Clear, ResponseCreate, ResponseCancel, Truncate],
                        Field(discriminator="type")]
KINDS = ("session.update", "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear",
         "response.create", "response.cancel", "conversation.item.truncate")
_ADAPTER: TypeAdapter = TypeAdapter(ClientEvent)


class BadEvent(ValueError):
    """A client event that does not fit its schema: one line naming the field, and that field's path."""

    def __init__(self, message: str, code: str, param: Optional[str]) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def parse_event(text: str) -> ClientEvent:
    """One client event from its JSON text; ``BadEvent`` naming the first wrong field otherwise."""
    try:
        return _ADAPTER.validate_json(text)
    except ValidationError as exc:
        raise _explain(exc.errors(include_url=False, include_input=False)[0]) from None


def _explain(error: dict[str, Any]) -> BadEvent:
    kind, loc = error["type"], [str(p) for p in error.get("loc", ())]
    if kind == "json_invalid":
        return BadEvent("the event is not valid JSON", "invalid_json", None)
    if kind == "union_tag_invalid" and len(loc) > 1:  # a turn_detection of a kind emoslm does not have
        tag = str((error.get("ctx") or {}).get("tag", ""))[:60]
        param = ".".join([*loc[1:], "type"])
        return BadEvent(f"{param}: unsupported value {tag!r}; use {' or '.join(DETECTION_KINDS)}", "invalid_value",
                        param)
    if kind == "union_tag_invalid":
        tag = str((error.get("ctx") or {}).get("tag", ""))[:60]
        return BadEvent(f"unsupported event type {tag!r}; emoslm accepts {', '.join(KINDS)}", "unknown_event", "type")
    if kind == "union_tag_not_found" or not loc:  # not an object, or no "type"
        return BadEvent("an event must be a JSON object with a string 'type'", "invalid_event", "type")
    param = ".".join(p for p in loc[1:] if p not in DETECTION_KINDS) or "event"  # loc[0]: the event's tag
    message = error.get("msg", "invalid value")
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "is not a field of this event"
    return BadEvent(f"{param}: {message}", "invalid_value", param)
