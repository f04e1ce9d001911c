"""The one dialogue loop: a Conversation owns the history and runs an agent turn by turn.

chat, the demo, the HumDial runner, live input and (next) the server all talk to an agent through a
Conversation, so there is one place that decides what the history holds: the user's words with the
emotion perceived in them (trajectory questions need every earlier turn's emotion), and the agent's
own replies, never its think. A turn cut short (barge-in) keeps what the user said and what the agent
had already said.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from emoslm.agents.base import Agent, reply_of
from emoslm.agents.events import Done, Emotion, Error, Event, Reply, TextDelta, Transcript, Turn
from emoslm.audio import SAMPLE_RATE


class Conversation:
    def __init__(self, agent: Agent, lang: str | None = None, history: list[Turn] | None = None) -> None:
        self.agent, self.lang = agent, lang
        self.history: list[Turn] = list(history or [])

    def stream(self, audio: np.ndarray, lang: str | None = None, heard_at: float | None = None) -> Iterator[Event]:
        """The agent's events for the user's newest clip; the history grows when the turn ends.

        Without ``heard_at`` the clip is a recording that ends now: the agent is given the time it took to
        say (``Agent.settle``) for the work a live dialogue does while the user talks."""
        heard, emotion, said, finished = "", None, "", False
        if heard_at is None:
            self.agent.settle(len(audio) / SAMPLE_RATE)
        try:
            for event in self.agent.stream(self.history, audio, lang or self.lang, heard_at):
                if isinstance(event, Transcript) and not event.partial:
                    heard = event.text
                elif isinstance(event, Emotion):
                    emotion = event.estimate.tag
                elif isinstance(event, TextDelta):
                    said += event.text
                elif isinstance(event, Done):
                    self.history += event.reply.history_turns()
                    finished = True
                elif isinstance(event, Error):
                    finished = True
                yield event
        finally:
            if not finished and heard:  # cut short: keep what was said on both sides
                self.history += [Turn("user", heard, emotion), Turn("assistant", said)]

    def respond(self, audio: np.ndarray, lang: str | None = None) -> Reply:
        """The whole reply to the user's newest clip (the stream, drained)."""
        return reply_of(self.stream(audio, lang))

    def cut_reply(self, said: str, heard: str) -> bool:
        """The user heard only ``heard`` of the reply ``said`` (barge-in during playback): the history keeps
        what was heard, so the next turn does not build on words the user never got. False if not found.

        The newest assistant turn that ``said`` begins or is begun by: a turn cut while being written keeps
        the text written so far, which can run a word past what a listener was sent."""
        said = said.strip()
        for i in range(len(self.history) - 1, -1, -1):
            turn, text = self.history[i], self.history[i].text.strip()
            if turn.role == "assistant" and said and (text.startswith(said) or said.startswith(text)):
                self.history[i] = Turn("assistant", heard.strip(), turn.emotion)
                return True
        return False

    @property
    def user_emotions(self) -> list[str | None]:
        """The perceived emotion of every user turn so far, in order."""
        return [t.emotion for t in self.history if t.role == "user"]
