"""Injected Emotional-Attribution Thinking (IEAT): open a think, let the model finish it, answer.

The paper's move: write the user's emotion (found in the audio) into the teacher's think in the
teacher's own analytical voice, **leave the think open**, and let the model continue — it then
reasons about the *cause* and answers. Small models that never close a think get a budget: after
``think_budget`` tokens the closing tag is appended and the answer is generated separately.

Models without think tokens (SmolLM2) get the same ``<think>`` / ``</think>`` markers as plain
text; models with them (Qwen3) tokenise the same strings as their special tokens. After the think,
a thinking model simply continues with its answer. Small models without think tokens lose the
thread there (they write about "the response" instead of answering), so for them the finished
think is handed to a fresh chat turn as private notes and the answer is generated from that.

``think_stream`` is the primitive: it yields the think and then the reply delta by delta (what a
live agent shows and speaks while the model is still writing); ``think_then_answer`` drains it. The
system prompts of the IEAT tasks live here too, so the data builder and the agents share them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from dataclasses import dataclass

from emoslm.emotions import TAGS, ZH_NAMES
from emoslm.llm.base import LLM, Message, Sampling
from emoslm.streams import drain
from emoslm.textnorm import simplified

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CJK = re.compile(r"[\u4e00-\u9fff]")

# How each emotion shows in a voice, in the words a careful listener would use.
VOICE_EVIDENCE = {
    "en": {
        "happy": "a bright, lively voice", "sad": "a slow, quiet voice with a falling pitch",
        "anger": "a loud, tense and fast voice", "fear": "a fast, shaky and raised voice",
        "neutral": "an even, calm voice", "surprise": "a sudden jump in pitch",
        "disgust": "a low, clipped tone",
    },
    "zh": {
        "happy": "声音明亮轻快", "sad": "声音低沉缓慢、语调下沉", "anger": "声音响亮、紧绷、语速很快",
        "fear": "声音发颤、语速急促", "neutral": "声音平稳", "surprise": "音调突然升高", "disgust": "语气低沉生硬",
    },
}

# The empathetic-response task's system prompt: the teacher agent answers live under it, and the
# IEAT builder uses it for the empathy samples, so what the model is trained on is what it runs with.
EMPATHY_SYSTEM = {
    "en": "You are a warm, emotionally attentive voice assistant. Reply to the user in English in one to three "
          "short spoken sentences: name how they feel and why, then support them. No lists.",
    "zh": "你是一个温暖、善解人意的语音助手。请用中文口语回复一到三句话："
          "先说出用户的感受和原因，再给予支持。不要列清单。",
}

HEARD = {
    "en": "The user speaks with {evidence}{agreement}, so the emotion I hear is {tag}.",
    "zh": "用户说话时{evidence}{agreement}，我听到的情绪是{name}（{tag}）。",
}
CAUSE = {"en": " The most likely reason they feel {tag} is", "zh": "用户感到{name}最可能的原因是"}
# When the user asks how their feelings changed: every user turn's perceived emotion, in order.
TRAJECTORY = {
    "en": " They ask how their feelings changed. Turn by turn I heard {path}, so I name exactly {arrow}, in that "
          "order, with no other emotion word. What moved them from one to the next is",
    "zh": "用户问自己的情绪是怎么变化的。我逐轮听到的是{path}，所以我按顺序说出{arrow}，不用别的情绪词。"
          "情绪变化的原因是",
}
TRAJECTORY_REPLY = {
    "en": {1: "You have sounded {0} all along.", 2: "Your emotions went from {0} to {1}.",
           "many": "Your emotions went from {first} to {middle}, and now {last}."},
    "zh": {1: "你一直听起来很{0}。", 2: "你的情绪从{0}变成了{1}。",
           "many": "你的情绪先是{first}，后来是{middle}，现在是{last}。"},
}
# "How did my feelings change?" in the words HumDial's T1 questions and the IEAT instructions use.
ASKS_TRAJECTORY = {
    "en": re.compile(r"\b(emotion|emotions|emotional|feeling|feelings|mood|moods)\b.*\b(chang\w*|shift\w*|went|go|"
                     r"gone|path|journey|evolv\w*|over|during|through)\b|\bhow\b.*\b(i|my)\b.*\b(felt|feel|feeling)\b"
                     r".*\b(chang\w*|over|during|through|since)\b", re.IGNORECASE),
    "zh": re.compile(r"(情绪|心情|感受|情感).*(变化|转变|变了|经历|历程|起伏)|(变化|经历).*(情绪|心情|感受)"),
}
AGREEMENT = {
    "en": {"same": ", and their words say the same", "conflict": ", although their words sound {words}", "none": ""},
    "zh": {"same": "，说的话也印证了这一点", "conflict": "，虽然字面上听起来像{words}", "none": ""},
}


def think_opening(tag: str, lang: str = "en", words_tag: str | None = None,
                  trajectory: list[str] | None = None) -> str:
    """The injected start of the think: the emotion tag and what in the audio shows it, ending open.

    ``trajectory`` (every user turn's perceived emotion, this one last) is given when the user asks how
    their feelings changed: the think then carries the whole path, as perceived, in order.
    """
    lang = "zh" if lang == "zh" else "en"
    kind = "none" if words_tag is None else ("same" if words_tag == tag else "conflict")
    agreement = AGREEMENT[lang][kind].format(words=ZH_NAMES.get(words_tag or "", words_tag) if lang == "zh"
                                             else words_tag)
    heard = HEARD[lang].format(evidence=VOICE_EVIDENCE[lang][tag], agreement=agreement, tag=tag, name=ZH_NAMES[tag])
    if trajectory:
        path = emotion_path(trajectory)
        return heard + TRAJECTORY[lang].format(path=_path_words(path, lang), arrow=" → ".join(path))
    return heard + CAUSE[lang].format(tag=tag, name=ZH_NAMES[tag])


def asks_trajectory(text: str, lang: str) -> bool:
    """Does the user ask how their feelings changed over the conversation (HumDial's T1 question)?"""
    if lang == "zh":
        return bool(ASKS_TRAJECTORY["zh"].search(simplified(text)))  # Whisper often writes traditional characters
    return bool(ASKS_TRAJECTORY["en"].search(text))


def emotion_path(tags: list[str | None]) -> list[str]:
    """The perceived tags in order, a repeat of the previous one counted once (as T1 is scored)."""
    known = [t for t in tags if t]
    return [t for i, t in enumerate(known) if i == 0 or t != known[i - 1]]


def _path_words(path: list[str], lang: str) -> str:
    if lang == "zh":
        return "，然后是".join(f"{ZH_NAMES[t]}（{t}）" for t in path)
    return ", then ".join(path)


def trajectory_reply(tags: list[str | None], lang: str) -> str:
    """The reply's first sentence for a trajectory question: the perceived path in the tag words.

    A small teacher paraphrases ("excited" for happy) or drops the transitional neutral, which HumDial's
    judge punishes; starting the reply with the path it perceived keeps the answer (and the IEAT target
    the student learns) faithful, and the teacher goes on with the causes.
    """
    lang = "zh" if lang == "zh" else "en"
    path = emotion_path(tags)
    words = [ZH_NAMES[t] if lang == "zh" else t for t in path]
    forms = TRAJECTORY_REPLY[lang]
    if len(words) <= 2:
        return forms[len(words)].format(*words) if words else ""
    middle = ("、" if lang == "zh" else " to ").join(words[1:-1])
    return forms["many"].format(first=words[0], middle=middle, last=words[-1])


@dataclass
class ThoughtReply:
    think: str
    reply: str
    think_tokens: int
    reply_tokens: int
    think_closed_by_budget: bool
    seconds: float


NOTES = {
    "en": "\nYour private reasoning about the user, for you only (do not repeat or mention it): {think}",
    "zh": "\n你对用户的内心分析，仅供你自己参考（不要复述或提及）：{think}",
}


@dataclass
class Piece:
    """One delta of a thought-then-reply stream: ``part`` is "think" or "reply"."""

    part: str
    text: str


def think_stream(llm: LLM, messages: list[Message], opening: str, think_budget: int = 96,
                 reply_budget: int = 160, sampling: Sampling | None = None, lang: str = "en",
                 writer: LLM | None = None, reply_opening: str = "") -> Generator[Piece, None, ThoughtReply]:
    """Continue ``<think>`` + ``opening`` within the budget, close it, then answer, delta by delta.

    The think pieces joined equal the returned think and the reply pieces the returned reply: a
    budget-closed think is cut back to its last full sentence, so think text is only let out up to
    a sentence end until the think is over. Thinking models continue after ``</think>``; others
    answer in a fresh turn given the think as notes, written by ``writer`` when given: a second
    context of the same model, so that each context's cached prompt prefix stays valid from turn to
    turn (the think prompt grows by one exchange per turn; the notes prompt differs early).
    """
    base = sampling or Sampling(temperature=0.6, top_p=0.9, repeat_penalty=1.15)
    prompt = open_think(llm.render(messages), opening)
    # Without think tokens a model runs on from its reasoning into the answer after a blank line: stop there.
    stops = [THINK_CLOSE, "<|im_end|>", "<|im_start|>"] + ([] if llm.native_think() else ["\n\n"])
    yield Piece("think", opening)
    think_part = llm.stream(prompt, _with(base, think_budget, stops))
    think_text = Incremental(lambda raw: _last_sentence_end(raw, always=True).rstrip())
    for delta in think_part:
        yield Piece("think", think_text.update(delta))
    closed_by_budget = think_part.completion.finish_reason == "length"
    continuation = think_part.completion.text.split(THINK_CLOSE)[0]
    continuation = (_last_sentence_end(continuation) if closed_by_budget else continuation).rstrip()
    yield Piece("think", think_text.finish(continuation))
    think = (opening + continuation).strip()
    stops = ["<|im_end|>", "<|im_start|>", THINK_OPEN]
    start = f"{reply_opening} " if reply_opening and lang != "zh" else reply_opening
    if reply_opening:  # one more line at most: a small model rambles on into emotion words it was told not to use
        stops = [*stops, "\n"]
    if llm.native_think():
        answer = llm.stream(f"{prompt}{continuation}\n{THINK_CLOSE}\n\n{start}", _with(base, reply_budget, stops))
    else:
        noted = _with_notes(messages, NOTES["zh" if lang == "zh" else "en"].format(think=think))
        writer = writer or llm
        answer = writer.stream(writer.render(noted) + start, _with(base, reply_budget, stops + ["\n\n"]))
    reply_text = Incremental(clean_reply)
    yield Piece("reply", reply_text.update(start))
    for delta in answer:
        yield Piece("reply", reply_text.update(delta))
    yield Piece("reply", reply_text.finish())
    think_done, answer_done = think_part.completion, answer.completion
    return ThoughtReply(think, reply_text.emitted, think_done.completion_tokens, answer_done.completion_tokens,
                        closed_by_budget, think_done.seconds + answer_done.seconds)


def think_then_answer(llm: LLM, messages: list[Message], opening: str, think_budget: int = 96,
                      reply_budget: int = 160, sampling: Sampling | None = None, lang: str = "en",
                      reply_opening: str = "") -> ThoughtReply:
    """``think_stream``, drained: the think and the reply in one go (the IEAT builder's call)."""
    return drain(think_stream(llm, messages, opening, think_budget, reply_budget, sampling, lang,
                              reply_opening=reply_opening))


def open_think(rendered: str, opening: str = "") -> str:
    """A rendered chat prompt with the assistant's think opened (and the injected opening written in)."""
    return f"{rendered}{THINK_OPEN}\n{opening}"


def clean_reply(raw: str) -> str:
    """The reply as shown and spoken: answer tags some models write dropped, outer blanks trimmed."""
    return re.sub(r"</?answer>", "", raw).strip()


class Incremental:
    """Let a cleaned text out delta by delta while the raw text grows.

    ``clean`` maps the raw text so far to what may be shown; only text that extends what was already
    let out is emitted, and a tail that might still change (trailing blanks, a half-written tag) is
    held until more arrives or ``finish`` gives the final form.
    """

    def __init__(self, clean: Callable[[str], str]) -> None:
        self.clean, self.raw, self.emitted = clean, "", ""

    def update(self, delta: str) -> str:
        self.raw += delta
        visible = self.raw[: self.raw.rfind("<")] if "<" in self.raw[-12:] else self.raw
        return self._extend(self.clean(visible))

    def finish(self, final: str | None = None) -> str:
        text = self.clean(self.raw) if final is None else final
        if not text.startswith(self.emitted):
            raise AssertionError(f"streamed text {self.emitted!r} is not a prefix of the final {text!r}")
        return self._extend(text)

    def _extend(self, text: str) -> str:
        if not text.startswith(self.emitted) or len(text) <= len(self.emitted):
            return ""
        delta, self.emitted = text[len(self.emitted):], text
        return delta


def _with_notes(messages: list[Message], notes: str) -> list[Message]:
    """The notes as a system message just before the newest user turn.

    There (not appended to the first system prompt) the prompt's head — system prompt and history — is
    the same text as the think prompt's and the next turn's, so a backend that keeps its KV cache only
    evaluates the notes and the newest turn (llama.cpp on 2 cores: ~0.4 s per 130 tokens saved).
    """
    return [*messages[:-1], {"role": "system", "content": notes.strip()}, messages[-1]]


def _with(base: Sampling, max_tokens: int, stop: list[str]) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=base.temperature, top_p=base.top_p, top_k=base.top_k,
                    repeat_penalty=base.repeat_penalty, seed=base.seed, stop=list(base.stop) + stop)


def _last_sentence_end(text: str, always: bool = False) -> str:
    """Cut a budget-truncated think back to its last full sentence (keeps the cause sentence whole).

    ``always`` cuts even when the last sentence end is early (for the part of a think safe to stream).
    """
    cut = max(text.rfind(p) for p in (".", "!", "?", "。", "！", "？"))
    return text[: cut + 1] if cut > len(text) // 3 or always else text


def strip_think(text: str) -> str:
    """Remove any think block (closed or left open) before a reply is shown, spoken or judged."""
    text = re.sub(rf"{THINK_OPEN}.*?{THINK_CLOSE}", "", text, flags=re.DOTALL)
    if THINK_OPEN in text:
        text = text.split(THINK_OPEN)[0]
    return text.replace(THINK_CLOSE, "").strip()


def language_of(text: str) -> str:
    """zh when at least a fifth of the letters are CJK characters, else en (HumDial's two languages)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "en"
    return "zh" if sum(bool(CJK.match(c)) for c in letters) / len(letters) >= 0.2 else "en"


def validate(think: str, reply: str, tag: str, lang: str) -> list[str]:
    """Problems that disqualify an IEAT sample or a teacher turn (empty list when it is good)."""
    problems = []
    if tag not in think:
        problems.append(f"think does not name the emotion '{tag}'")
    if not reply.strip():
        problems.append("empty reply")
    elif language_of(reply) != lang:
        problems.append(f"reply language is {language_of(reply)}, user spoke {lang}")
    if THINK_OPEN in reply or THINK_CLOSE in reply:
        problems.append("think leaked into the reply")
    return problems


_NAMED = re.compile(r"emotion i hear is (\w+)|我听到的情绪是[^（(]*[（(](\w+)[）)]")


def tag_in_think(think: str) -> str | None:
    """The emotion a think names (how a model's think is read back as an emotion).

    The opening's own statement ("the emotion I hear is sad") wins over a tag mentioned earlier in
    passing ("although their words sound anger"); without it, the first tag named.
    """
    low = think.lower()
    for match in _NAMED.finditer(low):
        named = match.group(1) or match.group(2)
        if named in TAGS:
            return named
    found = [(m.start(), t) for t in TAGS for m in re.finditer(rf"\b{t}\b", low)]
    return min(found)[1] if found else None
