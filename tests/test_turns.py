"""End of turn: Smart Turn on real speech, and LiveSession's use of it (pauses, patience, a turn that goes on)."""

import numpy as np
import pytest

from emoslm.agents.events import SpeechStopped
from emoslm.agents.live import FRAME, LiveSession
from emoslm.audio import SAMPLE_RATE

FINISHED = "My dog died yesterday."
# no comma: Piper samples its durations afresh in every process, and a pause at "work," sometimes reached the VAD's
# 0.2 s, where Smart Turn rightly heard "I have had a really hard day at work" as finished (a flaky CI failure)
UNFINISHED = "I have had a really hard day at work and I"


@pytest.fixture(scope="module")
def smart_turn():
    from emoslm.perception.turn import SmartTurn

    return SmartTurn()


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def _ends(audio: np.ndarray, turn_end) -> tuple[list[int], list[float]]:
    """Where a session without an agent ends turns (sample index), and each turn's length."""
    session = LiveSession(None, "en", partial_every=None, turn_end=turn_end)
    ended = []
    session.answer = lambda clip, heard_at=None, lang=None: ended.append(session._samples)
    for start in range(0, len(audio), FRAME):
        session.feed(audio[start:start + FRAME])
    return ended, [e.seconds for e in session.events() if isinstance(e, SpeechStopped)]


def test_smart_turn_hears_a_finished_sentence_from_an_unfinished_one(smart_turn, piper):
    finished = np.concatenate([piper.synthesize(FINISHED).at(), _silence(0.2)])
    unfinished = np.concatenate([piper.synthesize(UNFINISHED).at(), _silence(0.2)])
    assert smart_turn.complete(finished) >= 0.5 > smart_turn.complete(unfinished)


def test_a_finished_turn_ends_at_the_first_pause_sooner_than_fixed_silence(smart_turn, piper):
    from emoslm.perception.turn import TurnEnd

    speech = piper.synthesize(FINISHED).at()
    audio = np.concatenate([_silence(0.5), speech, _silence(2.0)])
    smart, _ = _ends(audio, TurnEnd(smart_turn))
    fixed, _ = _ends(audio, None)
    assert len(smart) == len(fixed) == 1
    assert smart[0] < fixed[0]  # the same VAD, asked at a 0.2 s pause instead of waiting for 0.4 s
    assert (smart[0] - len(_silence(0.5)) - len(speech)) / SAMPLE_RATE < 0.4


def test_an_unfinished_turn_waits_and_goes_on_after_a_pause_as_one_turn(smart_turn, piper):
    from emoslm.perception.turn import TurnEnd

    first, rest = piper.synthesize(UNFINISHED).at(), piper.synthesize("feel completely exhausted.").at()
    turn_end = TurnEnd(smart_turn, patience_s=1.0)
    alone = np.concatenate([_silence(0.5), first, _silence(2.5)])
    ended, _ = _ends(alone, turn_end)
    assert len(ended) == 1
    waited = (ended[0] - len(_silence(0.5)) - len(first)) / SAMPLE_RATE
    assert 0.9 <= waited <= 1.5  # patience (1 s from the last voiced frame, give or take the VAD's frames)

    went_on = np.concatenate([_silence(0.5), first, _silence(0.6), rest, _silence(2.0)])
    ended, seconds = _ends(went_on, turn_end)
    fixed, _ = _ends(went_on, None)
    assert len(ended) == 1 and len(fixed) == 2  # fixed 0.4 s silence cut the speaker off at the pause
    assert seconds[0] >= (len(first) + len(rest)) / SAMPLE_RATE  # the one turn holds both parts
