"""What one ``emoslm serve`` process shares between all its sessions: the agent, the workers, the limits.

The models are loaded once (one agent, the process-wide voice pool, the agent's ASR) and every piece of
CPU work runs on a bounded set of worker threads, never on the event loop:

- the **turn lane** (``agent.parallel`` threads, one unless ``--parallel``): agent turns. An agent holds
  one LLM context; a batched one (``slots``) answers that many turns at once, a sequence each. Turns from
  all sessions queue here in order, each told its place while it waits (``submit_turn``); at most
  ``max_queued_turns`` wait, more get 429.
- the **job lane** (``jobs`` threads): stateless work — transcriptions, speech, earlier turns given
  as audio, live partial transcripts (those only when a job thread is idle; they are skipped otherwise).

``turn`` bridges a turn's event generator (running in the turn lane) to an async iterator; when the
caller stops listening (client gone, response.cancel, shutdown) the generator is closed at its next
event, so the agent stops writing and speaking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from emoslm.agents.base import Agent, stoppable
from emoslm.agents.events import Cancelled, Error, Event
from emoslm.errors import EmoslmError
from emoslm.serve.wire import APIError

log = logging.getLogger("uvicorn.error")  # the server's own log, in uvicorn's format
T = TypeVar("T")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Limits:
    """Safe defaults; ``emoslm serve`` options change them."""

    max_body_mb: float = 25.0  # OpenAI's own upload limit for audio
    max_audio_seconds: float = 120.0  # one user turn, one transcription, one realtime buffer
    max_speech_chars: int = 4096  # /v1/audio/speech input (OpenAI's limit)
    max_sessions: int = 32  # realtime sessions and streaming chats open at once, all clients
    max_sessions_per_client: int = 4
    max_queued_turns: int = 64


class Busy(EmoslmError):
    """The server is at a limit (429)."""


class Lane:
    """A fixed number of worker threads with a count of the jobs they hold."""

    def __init__(self, threads: int, name: str) -> None:
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def submit(self, job: Callable[[], T]) -> Future:
        with self._lock:
            self._held += 1
        future = self.pool.submit(job)
        future.add_done_callback(self._release)
        return future

    def offer(self, job: Callable[[], Any]) -> Future | None:
        """Run ``job`` only if a worker is idle now; None when it was skipped."""
        with self._lock:
            if self._held >= self.threads:
                return None
        return self.submit(job)

    def _release(self, _: Future) -> None:
        with self._lock:
            self._held -= 1

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class StoredAudio:
    """A reply's audio kept for ``{"role": "assistant", "audio": {"id": …}}`` in a later request."""

    transcript: str
    audio: np.ndarray | None
    expires_at: int


class AudioStore:
    """Replies by audio id: bounded (oldest dropped), each kept an hour, as OpenAI's ``expires_at`` says."""

    def __init__(self, capacity: int = 256, ttl: int = 3600) -> None:
        self.capacity, self.ttl = capacity, ttl
        self._items: OrderedDict[str, StoredAudio] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, transcript: str, audio: np.ndarray | None, audio_id: str | None = None) -> tuple[str, int]:
        audio_id, expires_at = audio_id or f"audio_{uuid.uuid4().hex}", int(time.time()) + self.ttl
        with self._lock:
            self._items[audio_id] = StoredAudio(transcript, audio, expires_at)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return audio_id, expires_at

    def get(self, audio_id: str) -> StoredAudio | None:
        with self._lock:
            item = self._items.get(audio_id)
        return item if item is not None and item.expires_at > time.time() else None


class Place:
    """A queued turn's place: who to tell how many turns are before it."""

    def __init__(self, told: Callable[[int], None] | None) -> None:
        self.told = told

    def tell(self, ahead: int) -> None:
        if self.told is not None:
            with contextlib.suppress(Exception):  # a session that went away
                self.told(ahead)


@dataclass
class Runtime:
    """The shared state of one server: agent (None: speech and transcription only), lanes, limits, sessions."""

    agent: Agent | None
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    voice: str = "auto"
    jobs: int = 1
    agent_spec: str = "teacher"
    partial_every: float | None = None  # realtime: a partial transcript per this many seconds of speech
    lang: str | None = None  # the users' language when known (en, zh); None: detected per turn
    host: str = "127.0.0.1"  # the bound address: the Host names the server answers to follow from it
    allow_origins: tuple[str, ...] = ()  # web pages (origins) besides its own and localhost's that may call it

    model_id = "emoslm"
    speech_models = ("tts-1", "emoslm")
    transcription_models = ("whisper-1", "emoslm")

    def __post_init__(self) -> None:
        self._asr: Any = None
        self._smart_turn: Any = None
        self._waiting: list[Place] = []  # turns queued behind the lane's threads, in order
        self.turns = Lane(max(1, getattr(self.agent, "parallel", 1)), "emoslm-turn")  # a batched agent: several
        self.job_lane = Lane(self.jobs, "emoslm-job")
        self.ears = ThreadPoolExecutor(4, thread_name_prefix="emoslm-vad")  # realtime input: VAD, resampling
        self.audio = AudioStore()
        self.sessions: dict[str, int] = {}
        self.closing = False
        self._cancels: dict[threading.Event, Callable[[], None]] = {}  # turns being read: cancel → abort
        self._live: set[Any] = set()  # LiveSessions, stopped at shutdown
        self._closers: set[Callable[[], Awaitable[None]]] = set()  # realtime sessions' shutdown()
        self._lock = threading.Lock()

    def smart_turn(self) -> Any:
        """The end-of-turn model every realtime session asks (one onnxruntime session, loaded on first use)."""
        from emoslm.perception.turn import SmartTurn

        with self._lock:
            self._smart_turn = self._smart_turn or SmartTurn()
            return self._smart_turn

    def asr(self) -> Any:
        """The agent's Whisper pool (loaded once), or a pool of the server's own when the agent has none."""
        pool = getattr(self.agent, "asr", None)
        if pool is None:
            from emoslm.perception.asr import ASRPool

            with self._lock:
                self._asr = self._asr or ASRPool()
            pool = self._asr
        return pool

    def warm_up(self, lang: str = "en") -> float:
        """Answer one spoken line before the first client does, so every model is loaded; the seconds it took."""
        if self.agent is None:
            return 0.0
        from emoslm.speech.voice import voice_pool

        clock = time.perf_counter()
        line = {"en": "Hello, I had a long day today.", "zh": "你好，我今天很累。"}[lang]
        clip = voice_pool().voice(self.voice, lang).speak(line)
        self.agent.respond([], clip, lang)
        return time.perf_counter() - clock

    # --- sessions ------------------------------------------------------------------------------------
    def open_session(self, client: str) -> None:
        """Count a session for ``client``; ``Busy`` when a limit is reached."""
        with self._lock:
            if self.closing:
                raise Busy("the server is shutting down; try again later")
            if sum(self.sessions.values()) >= self.limits.max_sessions:
                raise Busy(f"the server has {self.limits.max_sessions} sessions open, its limit; try again later")
            if self.sessions.get(client, 0) >= self.limits.max_sessions_per_client:
                raise Busy(f"this client has {self.limits.max_sessions_per_client} sessions open, the limit "
                           "per client; close one first")
            self.sessions[client] = self.sessions.get(client, 0) + 1

    @contextlib.contextmanager
    def session(self, client: str) -> Iterator[None]:
        """One request's slot in the per-client and total limits, held while it runs."""
        self.open_session(client)
        try:
            yield
        finally:
            self.close_session(client)

    async def held(self, chunks: AsyncIterator[T], client: str) -> AsyncIterator[T]:
        """A streamed body's chunks, with its session slot held (taken already) until it ends or the client goes."""
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self.close_session(client)

    def check_model(self, model: str, served: tuple[str, ...]) -> None:
        """404 in OpenAI's words for a model this route does not serve (never echoed back as if it were)."""
        if model not in served:
            raise APIError(404, f"the model {model[:80]!r} does not exist here; this route serves "
                                f"{', '.join(served)} (GET /v1/models lists them)", "model_not_found", "model")

    def close_session(self, client: str) -> None:
        with self._lock:
            left = self.sessions.get(client, 0) - 1
            if left > 0:
                self.sessions[client] = left
            else:
                self.sessions.pop(client, None)

    def track_live(self, session: Any, keep: bool = True) -> None:
        with self._lock:
            (self._live.add if keep else self._live.discard)(session)

    def track_closer(self, closer: Callable[[], Awaitable[None]], keep: bool = True) -> None:
        """A realtime session's ``shutdown()``, awaited when the server stops."""
        with self._lock:
            (self._closers.add if keep else self._closers.discard)(closer)

    # --- work ----------------------------------------------------------------------------------------
    async def run(self, job: Callable[[], T]) -> T:
        """A stateless job on the job lane, awaited."""
        return await asyncio.wrap_future(self.job_lane.submit(job))

    def submit_turn(self, job: Callable[[], None], told: Callable[[int], None] | None = None) -> Future:
        """Queue ``job`` on the turn lane (``Busy`` when too many wait); ``told(n)`` hears its place in the
        queue (n turns before it, 1 = next) when it has to wait, and again each time the queue moves."""
        if self.turns.held > self.limits.max_queued_turns:
            raise Busy(f"{self.turns.held} turns are waiting for the model; try again later")
        place = Place(told)

        def run() -> None:
            with self._lock:
                if place in self._waiting:
                    self._waiting.remove(place)
                moved = list(self._waiting)
            for ahead, other in enumerate(moved, 1):
                other.tell(ahead)
            job()

        with self._lock:
            ahead = max(0, self.turns.held - self.turns.threads + 1)
            if ahead:
                self._waiting.append(place)
        if ahead:
            place.tell(ahead)
        return self.turns.submit(run)

    def turn(self, events: Callable[[], Iterator[Event]]) -> AsyncIterator[Event]:
        """Queue one turn now (``Busy`` at once when the queue is full); read its events as they come.

        The events are produced on the turn lane; when the reader stops (client gone, shutdown) the
        turn's generator is closed at its next event, so the agent stops writing and speaking.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        cancel, aborted = threading.Event(), threading.Event()
        put = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)  # noqa: E731

        def abort() -> None:  # shutdown: the reader gets its end now, not at the worker's next event
            aborted.set()
            put(Cancelled("shutdown"))
            put(None)

        def work() -> None:
            try:
                if cancel.is_set():
                    put(Cancelled("cancelled"))
                    return
                stream = events()
                try:
                    with stoppable(cancel):  # a wait for the voice ends at once when the reader stops
                        for event in stream:
                            put(event)
                            if cancel.is_set():
                                put(Cancelled("cancelled", t=event.t))
                                return
                finally:
                    stream.close()
            except Exception as exc:  # noqa: BLE001 - reported to the client as an error, logged here
                log.exception("turn failed")
                put(Error(f"internal error: {type(exc).__name__}"))
            finally:
                put(None)

        future = self.submit_turn(work)
        future.add_done_callback(lambda f: put(None) if f.cancelled() else None)  # dropped at shutdown, unstarted
        with self._lock:
            self._cancels[cancel] = abort
        return self._read(queue, future, cancel, aborted)

    async def _read(self, queue: asyncio.Queue, future: Future, cancel: threading.Event,
                    aborted: threading.Event) -> AsyncIterator[Event]:
        try:
            while (event := await queue.get()) is not None:
                yield event
                if aborted.is_set() and isinstance(event, Cancelled):
                    return
            if not future.cancelled() and not aborted.is_set():
                await asyncio.wrap_future(future)
        finally:
            cancel.set()  # the reader stopped: the turn ends at its next event
            with self._lock:
                self._cancels.pop(cancel, None)

    # --- shutdown ------------------------------------------------------------------------------------
    async def end_streams(self) -> None:
        """The first step of a shutdown, before the server waits for its connections: refuse new work, end
        every open stream now (chats get their cancelled end and ``[DONE]``, realtime sessions
        ``response.done`` cancelled and a close frame), and ask the turns to stop."""
        with self._lock:
            self.closing = True
            aborts, live, closers = list(self._cancels.items()), list(self._live), list(self._closers)
        for cancel, abort in aborts:
            cancel.set()
            abort()
        for session in live:
            session.stop("shutdown")
        if closers:
            await asyncio.gather(*(closer() for closer in closers), return_exceptions=True)

    def close(self) -> None:
        """Refuse new work, cancel turns in progress, let the workers finish, free the models."""
        with self._lock:
            self.closing = True
            cancels, live = list(self._cancels), list(self._live)
        for cancel in cancels:
            cancel.set()
        for session in live:
            session.stop("shutdown")
        self.ears.shutdown(wait=True, cancel_futures=True)
        self.turns.shutdown()
        self.job_lane.shutdown()
        if self.agent is not None:
            self.agent.close()
        log.info("emoslm server stopped: turns ended, models freed")
