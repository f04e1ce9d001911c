"""Agents: everything that answers a user's spoken turn, behind one streaming contract.

``load_agent(spec)`` is the one factory chat, eval, the demo and the server use:

- ``teacher``: the IEAT cascade (ASR → emotion → injected think → LLM → voice)
- ``plain``: ASR → LLM → voice, no emotion (the baseline)
- ``slm:DIR``: the unified model from a training run's ``final/`` folder (``slm:DIR?text=torch`` decodes its
  text in PyTorch instead of llama.cpp; ``&gguf=f32`` exports it exactly instead of Q8_0)
- ``http://host:port`` (or ``https://``): a remote emoslm server, or any OpenAI-compatible audio chat API
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from emoslm.agents.base import Agent, Reply, Turn
from emoslm.agents.conversation import Conversation
from emoslm.errors import EmoslmError

__all__ = ["Agent", "Conversation", "Reply", "Turn", "load_agent"]

SPECS = "teacher, plain, slm:DIR or http(s)://HOST:PORT"


def load_agent(spec: str = "teacher", *, llm: str = "auto", asr: str | None = None, voice: str = "auto",
               speak: bool = True, **options: Any) -> Agent:
    """The agent a spec names; ``llm``/``asr``/``voice`` choose its parts where it has them."""
    from emoslm.perception.asr import ASRPool

    if spec.startswith(("http://", "https://")):
        from emoslm.agents.remote import RemoteAgent

        return RemoteAgent(spec, voice=voice, **options)
    if spec.startswith("slm:"):
        from emoslm.agents.slm import SLMAgent

        folder, _, query = spec[4:].partition("?")
        if not folder:
            raise EmoslmError("slm: needs a checkpoint folder, e.g. slm:runs/train/1-2/final")
        given = dict(parse_qsl(query, keep_blank_values=True))
        if set(given) - {"text", "gguf"}:
            raise EmoslmError(f"slm: unknown option '{sorted(set(given) - {'text', 'gguf'})[0]}'; "
                              "use ?text=auto|torch|llama-cpp&gguf=q8_0|f16|f32")
        return SLMAgent(folder, speak=speak, asr=ASRPool(asr), voice=voice, **given, **options)
    if spec == "teacher":
        from emoslm.agents.teacher import TeacherAgent

        return TeacherAgent(llm=llm, asr=ASRPool(asr), voice=voice, speak=speak, **options)
    if spec == "plain":
        from emoslm.agents.plain import PlainAgent

        return PlainAgent(llm=llm, asr=ASRPool(asr), voice=voice, speak=speak, **options)
    raise EmoslmError(f"unknown agent '{spec}'; use {SPECS}")
