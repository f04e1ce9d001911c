"""The IEAT stages, each a function from one item (or a group) to its samples.

``Toolkit`` holds the models one worker needs (teacher LLM, ASR, recogniser, voices), loaded once.
Every random choice (voice, acted emotion, instruction, LLM seed) is drawn from a generator seeded
by the recipe seed and the item id, never from shared state, so an item gives the same sample
whichever worker, shard or restart produces it.

- ``prepare``: a spoken clip is cut and transcribed when it has no transcript; a text query is voiced.
- ``stage_1_1``: the teacher's plain answer to the text (the self-distillation target).
- ``stage_1_2``: the recogniser's emotion → a think opening in the teacher's analytical voice (tag +
  vocal evidence), left open; the teacher names the cause, closes the think (or the budget does)
  and answers under the task's prompt. Validated: tag in think, a cause sentence, a non-empty answer
  in the user's language.
- ``multiturn_final``: the last turn of a regrouped dialogue, answered with the dialogue as history.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emoslm.audio import SAMPLE_RATE, load_audio, save_audio, trim_to_speech
from emoslm.errors import BackendError, EmoslmError, MissingPackageError, ModelNotFoundError
from emoslm.ieat.recipe import Recipe
from emoslm.ieat.sources import SourceItem
from emoslm.language import served
from emoslm.llm import LLMPool, Message, Sampling
from emoslm.perception.asr import ASRPool
from emoslm.perception.estimate import EmotionEstimate
from emoslm.perception.recognizer import EmotionRecognizer
from emoslm.speech.prosody import acted
from emoslm.speech.prosody import reply as reply_prosody
from emoslm.speech.tts import TTS
from emoslm.speech.voice import voice_pool
from emoslm.think import language_of, system_for, think_opening, think_then_answer, trajectory_reply, validate

PROMPT_VERSION = "ieat-prompts-v3"  # v2: trajectory questions carry the perceived path; v3: one prompt (issue 32)

ANSWER_SYSTEM = {
    "en": "You are a helpful voice assistant. Answer the user in English in one to three short spoken sentences.",
    "zh": "你是一个乐于助人的语音助手。请用中文口语回答，一到三句话。",
}
@dataclass
class Clip:
    """A prepared user clip: its audio (relative to the build folder), transcript and how it was made."""

    item_id: str
    lang: str
    audio: str
    transcript: str
    duration: float
    provenance: dict[str, Any]


def item_seed(seed: int, *parts: str) -> int:
    """A stable 31-bit seed for one item and purpose (crc32 is the same on every machine and run)."""
    return zlib.crc32("\x1f".join([str(seed), *parts]).encode()) & 0x7FFFFFFF


def file_key(item_id: str) -> str:
    """A file name for an id (ids from lhotse/Kaldi may hold slashes); the crc keeps it unique."""
    safe = re.sub(r"[^\w.-]+", "_", item_id)[:80]
    return f"{safe}-{zlib.crc32(item_id.encode()):08x}"


class Toolkit:
    """The models a worker holds, loaded on first use."""

    def __init__(self, recipe: Recipe) -> None:
        data = recipe.data
        self.recipe = recipe
        self.llms = LLMPool(data.teacher.llm)
        self.asr = ASRPool(data.asr, deterministic=True)
        self._recognizer: EmotionRecognizer | None = None

    @property
    def recognizer(self) -> EmotionRecognizer:
        if self._recognizer is None:
            directory = self.recipe.resolve(self.recipe.data.recognizer_dir)
            self._recognizer = EmotionRecognizer(directory, acoustic=self.recipe.data.recognizer)
        return self._recognizer

    def tts(self, spec: str | None, lang: str) -> TTS:
        """The pool's engine, with its threads (``engine_threads``: nothing runs beside Kokoro in a build)."""
        return voice_pool().tts(spec, lang)

    def sampling(self, max_tokens: int, seed: int) -> Sampling:
        t = self.recipe.data.teacher
        return Sampling(max_tokens=max_tokens, temperature=t.temperature, top_p=t.top_p,
                        repeat_penalty=t.repeat_penalty, seed=seed)

    def close(self) -> None:
        self.llms.close()


def weighted_choice(rng: random.Random, weights: dict[str, float]) -> str:
    names = sorted(k for k, w in weights.items() if w > 0)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def assign_task(recipe: Recipe, item_id: str) -> str:
    return weighted_choice(random.Random(item_seed(recipe.seed, item_id, "task")), recipe.data.tasks)


def speak(tools: Toolkit, text: str, lang: str, emotion: str, rng: random.Random,
          voices: list[str] | None = None) -> tuple[np.ndarray, str]:
    """Voice ``text`` with one of the recipe's voices, acted with ``emotion``; returns audio and voice spec."""
    choices = voices or tools.recipe.data.voices.get(lang) or [None]
    spec = choices[rng.randrange(len(choices))]
    tts = tools.tts(spec, lang)
    prosody = tts.reproducible(acted(emotion).jitter(rng, 0.05))
    return tts.synthesize(text, prosody).at(SAMPLE_RATE), tts.name


def prepare(item: SourceItem, tools: Toolkit, out: Path) -> Clip:
    """The user clip for an item, written to ``audio/clips/``; the transcript when none came with it."""
    rng = random.Random(item_seed(tools.recipe.seed, item.id, "voice"))
    rel = f"audio/clips/{file_key(item.id)}.wav"
    provenance: dict[str, Any] = {"source": item.source, "source_id": item.id}
    if item.kind == "text":
        lang = item.lang or language_of(item.text or "")
        emotion = weighted_choice(rng, tools.recipe.data.voice_emotions)
        audio, voice = speak(tools, item.text or "", lang, emotion, rng)
        provenance.update(voiced_by=voice, acted_emotion=emotion)
        transcript = item.text or ""
    else:
        audio = load_audio(item.audio, offset=item.offset, duration=item.duration)
        lang, transcript = item.lang, item.text
        if not transcript:
            heard = tools.asr.for_lang(lang).transcribe(trim_to_speech(audio), language=lang)
            transcript, lang = heard.text, lang or heard.language
            provenance["asr"] = tools.asr.for_lang(lang).name
        if not transcript.strip():
            raise EmoslmError("no speech recognised in the clip")
        if item.meta.get("gold_emotion"):
            provenance["gold_emotion"] = item.meta["gold_emotion"]
    lang = served(lang)
    save_audio(out / rel, audio)
    return Clip(item.id, lang, rel, transcript, round(len(audio) / SAMPLE_RATE, 3), provenance)


def stage_1_1(clip: Clip, tools: Toolkit) -> str:
    """The teacher's answer to the text alone: what the spoken model must learn to say from the audio."""
    messages: list[Message] = [{"role": "system", "content": ANSWER_SYSTEM[clip.lang]},
                               {"role": "user", "content": clip.transcript}]
    seed = item_seed(tools.recipe.seed, clip.item_id, "1-1")
    sampling = tools.sampling(tools.recipe.data.teacher.answer_budget, seed)
    sampling.stop.append("\n\n")
    done = tools.llms.for_lang(clip.lang).chat(messages, sampling)
    answer = done.text.strip()
    if not answer:
        raise EmoslmError("the teacher gave an empty stage 1-1 answer")
    return answer


def cause_of(think: str, opening: str) -> str:
    """What the teacher wrote after the injected opening: the cause it named."""
    return think[len(opening):].strip() if think.startswith(opening) else ""


def ieat_turn(tools: Toolkit, task: str, lang: str, history: list[Message], user_text: str,
              emotion: dict[str, Any], seed_parts: tuple[str, ...], trajectory: list[str] | None = None
              ) -> dict[str, Any]:
    """Inject the emotion into an open think and let the teacher finish it and answer; validated.

    ``trajectory`` (every user turn's perceived emotion, in order) is injected when the user asks how
    their feelings changed: into the think, and as the reply's first sentence (as the teacher agent does).
    A sample that fails validation is drawn again with a fresh seed (``teacher.retries`` times), then
    reported: a broken sample in the data set costs more than a missing one.
    """
    teacher = tools.recipe.data.teacher
    opening = think_opening(emotion["tag"], lang, emotion["words"], trajectory)
    reply_opening = trajectory_reply(trajectory, lang) if trajectory else ""
    llm = tools.llms.for_lang(lang)
    # every task answers under the agent's own prompt (its worked examples cover all three tasks), so the targets
    # are the replies the teacher gives live
    messages = [{"role": "system", "content": system_for(llm, lang)}, *history,
                {"role": "user", "content": user_text}]
    problems: list[str] = []
    for attempt in range(teacher.retries + 1):
        seed = item_seed(tools.recipe.seed, *seed_parts, f"try{attempt}")
        thought = think_then_answer(llm, messages, opening, teacher.think_budget,
                                    teacher.reply_budget, tools.sampling(teacher.reply_budget, seed), lang,
                                    reply_opening)
        cause = cause_of(thought.think, opening)
        problems = validate(thought.think, thought.reply, emotion["tag"], lang)
        if len(cause.split()) < 3 and len(cause) < 6:
            problems.append("the think names no cause")
        if not problems:
            return {"think": thought.think, "cause": cause, "response": thought.reply, "attempts": attempt + 1,
                    "think_closed_by_budget": thought.think_closed_by_budget}
    raise EmoslmError("stage 1-2 sample failed validation: " + "; ".join(problems))


def estimate_emotion(tools: Toolkit, clip: Clip, out: Path) -> EmotionEstimate:
    audio = load_audio(out / clip.audio)
    return tools.recognizer.estimate(trim_to_speech(audio, pad=0.3), clip.transcript, clip.lang)


def emotion_record(estimate: EmotionEstimate) -> dict[str, Any]:
    return {"tag": estimate.tag, "probs": {k: round(v, 4) for k, v in estimate.probs.items()},
            "voice": estimate.acoustic.tag if estimate.acoustic else None,
            "words": estimate.textual.tag if estimate.textual else None}


def user_audio(clip: Clip, instruction: dict[str, Any] | None, out: Path, key: str | None = None) -> str:
    """The audio the spoken model hears: the instruction (if the task has one) in front of the clip."""
    if instruction is None:
        return clip.audio
    rel = f"audio/users/{file_key(key or clip.item_id)}.wav"
    gap = np.zeros(int(0.4 * SAMPLE_RATE), np.float32)
    joined = np.concatenate([load_audio(out / instruction["audio"]), gap, load_audio(out / clip.audio)])
    save_audio(out / rel, joined)
    return rel


def speak_reply(tools: Toolkit, text: str, lang: str, user_tag: str, key: str, out: Path) -> str | None:
    """The reply spoken with the prosody that fits the user's emotion (stage 2 target), when enabled."""
    stage2 = tools.recipe.data.stage2
    if not stage2.synthesize:
        return None
    tts = tools.tts(stage2.tts.get(lang), lang)
    rel = f"audio/replies/{key}.wav"
    save_audio(out / rel, tts.synthesize(text, tts.reproducible(reply_prosody(user_tag))).at(SAMPLE_RATE))
    return rel


# A missing package, an unreachable server or an unknown model stops the whole build; anything else
# (a corrupt clip, an empty answer, a think that fails validation) belongs to one sample.
SETUP_ERRORS = (BackendError, MissingPackageError, ModelNotFoundError)


def build_item(item: SourceItem, task: str, instructions: dict[str, list[dict[str, Any]]], tools: Toolkit,
               out: Path) -> dict[str, Any]:
    """All stages for one item; a stage failing for this sample is recorded in ``errors``, the rest kept."""
    record: dict[str, Any] = {"id": item.id, "task": task, "errors": []}

    def run(stage: str, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except SETUP_ERRORS:
            raise
        except EmoslmError as exc:
            record["errors"].append({"stage": stage, "error": str(exc)})
            return None

    clip = run("prepare", lambda: prepare(item, tools, out))
    if clip is None:
        return record
    record.update(lang=clip.lang, clip=clip.__dict__)
    for key, stage, step in (("answer", "1-1", lambda: stage_1_1(clip, tools)),
                             ("ieat", "1-2", lambda: stage_1_2(clip, task, instructions, tools, out))):
        value = run(stage, step)
        if value is not None:
            record[key] = value
    return record


def stage_1_2(clip: Clip, task: str, instructions: dict[str, list[dict[str, Any]]], tools: Toolkit,
              out: Path) -> dict[str, Any]:
    emotion = emotion_record(estimate_emotion(tools, clip, out))
    pool = instructions.get(f"{clip.lang}/{task}") if task != "empathy" else None
    instruction = None
    if pool:
        instruction = pool[random.Random(item_seed(tools.recipe.seed, clip.item_id, "instr")).randrange(len(pool))]
    user_text = f"{instruction['text']} {clip.transcript}" if instruction else clip.transcript
    trajectory = [emotion["tag"]] if task == "trajectory" else None
    turn = ieat_turn(tools, task, clip.lang, [], user_text, emotion, (clip.item_id, "1-2"), trajectory)
    key = file_key(clip.item_id)
    return {"emotion": emotion, "instruction": instruction, "user_text": user_text,
            "user_audio": user_audio(clip, instruction, out),
            "reply_audio": speak_reply(tools, turn["response"], clip.lang, emotion["tag"], key, out), **turn}


def multiturn_final(members: list[dict[str, Any]], dialogue_id: str, tools: Toolkit, out: Path,
                    instruction: dict[str, Any] | None = None) -> dict[str, Any]:
    """Answer the last turn of a regrouped dialogue with the earlier turns (and their replies) as history.

    With a trajectory ``instruction`` ("which emotions did I go through?") spoken in front of the last
    clip, the dialogue ends as HumDial's T1 does: the think carries every turn's perceived emotion in order.
    """
    history: list[Message] = []
    for member in members[:-1]:
        history += [{"role": "user", "content": member["ieat"]["user_text"]},
                    {"role": "assistant", "content": member["ieat"]["response"]}]
    last = members[-1]
    lang, emotion = last["lang"], last["ieat"]["emotion"]
    if instruction is None:
        turn = ieat_turn(tools, "empathy", lang, history, last["ieat"]["user_text"], emotion, (dialogue_id, "mt"))
        asked: dict[str, Any] = {}
    else:
        path = [m["ieat"]["emotion"]["tag"] for m in members]
        user_text = f"{instruction['text']} {last['clip']['transcript']}"
        turn = ieat_turn(tools, "trajectory", lang, history, user_text, emotion, (dialogue_id, "mt"), path)
        asked = {"task": "trajectory", "user_text": user_text, "instruction": instruction,
                 "user_audio": user_audio(Clip(**last["clip"]), instruction, out, key=dialogue_id)}
    turn["reply_audio"] = speak_reply(tools, turn["response"], lang, emotion["tag"], file_key(dialogue_id), out)
    return {**turn, **asked}
