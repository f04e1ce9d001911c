"""Agents: everything that answers a user's spoken turn, behind one streaming contract.

``load_agent(spec)`` is the one factory chat, eval, the demo and the server use:

- ``teacher``: the IEAT cascade (ASR → emotion → injected think → LLM → voice)
- ``plain``: ASR → LLM → voice, no emotion (the baseline)
- ``slm:DIR``: the unified model from a training run's ``final/`` folder
- ``http://host:port`` (or ``https://``): a remote emoslm server, or any OpenAI-compatible audio chat API
"""

from __future__ import annotations

from typing import Any

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

        if not spec[4:]:
            raise EmoslmError("slm: needs a checkpoint folder, e.g. slm:runs/train/1-2/final")
        return SLMAgent(spec[4:], speak=speak, asr=ASRPool(asr), voice=voice, **options)
    if spec == "teacher":
        from emoslm.agents.teacher import TeacherAgent

        return TeacherAgent(llm=llm, asr=ASRPool(asr), voice=voice, speak=speak, **options)
    if spec == "plain":
        from emoslm.agents.plain import PlainAgent

        return PlainAgent(llm=llm, asr=ASRPool(asr), voice=voice, speak=speak)
    raise EmoslmError(f"unknown agent '{spec}'; use {SPECS}")
