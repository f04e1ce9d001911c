"""An OpenAI-compatible ``POST /v1/audio/speech`` in front of any local TTS backend.

It lets a client written for hosted TTS (or emoslm's own ``OpenAISpeechTTS``) use Piper or
espeak-ng, and it is the same interface a GPU CosyVoice-class server offers, so swapping one for
the other is a URL change. emoslm extension: an ``emotion`` field picks the reply prosody.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field

from emoslm.audio import to_wav_bytes
from emoslm.errors import EmoslmError
from emoslm.speech.prosody import Prosody, reply
from emoslm.speech.tts import TTS


class SpeechRequest(BaseModel):
    """OpenAI's speech request body, plus ``emotion``."""

    input: str = Field(min_length=1, max_length=4096)
    model: str = "emoslm"
    voice: Optional[str] = None
    response_format: str = "wav"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: Optional[str] = None
    emotion: Optional[str] = None  # emoslm extension: the user's emotion → reply prosody


def create_app(tts: TTS):  # noqa: ANN201 - FastAPI is an optional dependency
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import Response

    app = FastAPI(title="emoslm speech", version="1")

    @app.post("/v1/audio/speech")
    def speech(req: SpeechRequest) -> Response:
        if req.response_format != "wav":
            raise HTTPException(400, "only response_format 'wav' is supported")
        try:
            base = reply(req.emotion) if req.emotion else Prosody()
            prosody = Prosody(rate=base.rate * req.speed, pitch=base.pitch, energy=base.energy,
                              variability=base.variability, style=base.style)
            spoken = tts.synthesize(req.input, prosody, voice=req.voice)
        except EmoslmError as exc:
            raise HTTPException(400, str(exc)) from None
        return Response(to_wav_bytes(spoken.audio, spoken.sample_rate), media_type="audio/wav")

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": tts.name, "object": "model"}]}

    return app
