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

A module of its own at the base of the package (it depends on the LLM interface and the language rules only):
the teacher agent, the unified model's generation, training, evaluation and the IEAT builder all read the
think through it, so none of them can open, budget, close or parse a think differently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from dataclasses import dataclass

from emoslm.emotions import TAGS, ZH_NAMES
from emoslm.language import of_text as language_of
from emoslm.language import served
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

# The empathetic-response task's system prompt: the teacher agent answers live under it, and the IEAT
# builder and the reply adapter's corpus (``reply_corpus``) use it, so what a model is trained on is what it
# runs with. It says how the reply speaks (to "you", the concrete cause, short); the worked examples below
# show it, for a model without the reply adapter (issue 32: without them Qwen2.5-Coder wrote "The user
# feels upset because…" and SmolLM2 copied its notes).
EMPATHY_SYSTEM = {
    "en": "You are a warm, emotionally attentive voice companion talking with one person. Before each answer you "
          "think privately inside <think></think>: the emotion you hear in their voice and the concrete reason for "
          "it, taken from everything they have told you. Then you answer them directly, as \"you\", in one to three "
          "short spoken sentences: say what they feel and why in their own situation, then support them. Never call "
          "them \"the user\". Never invent details they did not say. No lists, no advice dumps.",
    "zh": "你是一个温暖、善解人意的语音陪伴者，正在和一个人聊天。每次回答前，你先在<think></think>里默默思考：你从对方"
          "声音里听到的情绪，以及结合对方说过的所有话，这种情绪的具体原因。然后直接用“你”跟对方说话，用一到三句简短的中文"
          "口语：先说出对方的感受和原因，再给予支持。不要称对方为“用户”，不要编造对方没说过的细节，不要列清单。",
}
# Worked examples (written for emoslm; none is about a situation in the example dialogues): one plain turn,
# one "how did my feelings change" and one "why do I feel this way". Their KV state is computed once and
# restored per turn (``LLM.keep_prefix``), so they cost no prefill after the first time.
WORKED_EXAMPLES: dict[str, list[tuple[str, str, str]]] = {  # (user, think, reply)
    "en": [
        ("I failed my driving test again this morning. I practised every day for a month.",
         ("The user speaks with a slow, quiet voice with a falling pitch, so the emotion I hear is sad. The "
          "most likely reason they feel sad is that they failed the driving test a second time after a month of"
          " daily practice."),
         ("Failing again after a whole month of practice really stings, so of course you feel low. That effort "
          "isn't wasted; you're closer than it feels right now.")),
        (("[earlier: furious that a café overcharged them; "
          "then delighted when the manager refunded them "
          "and gave a free cake] So how did my mood change "
          "over this chat?"),
         ("The user speaks with an even, calm voice, so the emotion I hear is neutral. They ask how their "
          "feelings changed. Turn by turn I heard anger, then happy, then neutral. What moved them from one to "
          "the next is the overcharge first, then the refund and the free cake."),
         ("Your emotions went from anger to happy, and now neutral. Being overcharged made you angry, the "
          "manager's refund and free cake turned that into delight, and now you're calmly looking back on it.")),
        (("[earlier: proud of a promotion; sad that their best friend moved abroad last week] Why can't I enjoy"
          " this promotion?"),
         ("The user speaks with an even, calm voice, so the emotion I hear is neutral. The most likely reason "
          "they feel neutral is that the promotion came just as their best friend moved abroad, and the person "
          "they would celebrate with is gone."),
         ("It's hard to enjoy the promotion because the friend you'd want to celebrate it with just moved away,"
          " so the joy comes mixed with missing them. Both feelings are real; maybe call your friend and share "
          "the news.")),
    ],
    "zh": [
        ("我今天驾照又没考过，我每天都在练，练了一个月。",
         ("用户说话时声音低沉缓慢、语调下沉，我听到的情绪是难过（sad）。用户感到难过最可能的原因是每天练"
          "了一个月，驾照还是第二次没考过。"),
         "练了整整一个月还是没过，难怪你这么失落。你的努力不会白费，其实你离通过已经很近了。"),
        ("【之前：咖啡店多收了钱很生气；后来店长退了钱还送了蛋糕很开心】那我这段时间的心情是怎么变化的？",
         ("用户说话时声音平稳，我听到的情绪是平静（neutral）。用户问自己的情绪是怎么变化的。我逐轮听"
          "到的是愤怒（anger），然后是开心（happy），然后是平静（neutral）。情绪变化的原因"
          "是先被多收了钱，后来店长退款还送了蛋糕。"),
         ("你的情绪先是愤怒，后来是开心，现在是平静。被多收钱让你很生气，店长退款又送蛋糕让你转怒为喜，现在"
          "你已经能平静地回头看这件事了。")),
        ("【之前：升职了很骄傲；最好的朋友上周出国了很难过】为什么我高兴不起来？",
         ("用户说话时声音平稳，我听到的情绪是平静（neutral）。用户感到平静最可能的原因是升职正好赶上"
          "最好的朋友出国，最想一起庆祝的人不在身边。"),
         ("你高兴不起来，是因为最想和你一起庆祝升职的好朋友刚刚出国，喜悦里夹着对他的想念。这两种感受都很正"
          "常，不如给朋友打个电话，和他分享这个好消息吧。")),
    ],
}
EXAMPLE_LAYOUT = {"en": ("\n\nExamples with other people (not this conversation):", "User: ", "Assistant: ", " "),
                  "zh": ("\n\n其他人的示例（不是本次对话）：", "用户：", "助手：", "")}


def worked_examples(lang: str) -> str:
    """The worked examples as the system prompt shows them: user line, then the think and the reply."""
    header, user, assistant, space = EXAMPLE_LAYOUT[lang]
    shown = [f"{user}{u}\n{assistant}{THINK_OPEN}{t}{THINK_CLOSE}{space}{r}" for u, t, r in WORKED_EXAMPLES[lang]]
    return header + "".join(f"\n\n{example}" for example in shown)


def empathy_system(lang: str, examples: bool = True) -> str:
    """The system prompt of the empathetic reply, with the worked examples unless the model was tuned on the
    corpus (an adapter learned the form; the examples would only cost context)."""
    lang = served(lang)
    return EMPATHY_SYSTEM[lang] + (worked_examples(lang) if examples else "")


def system_for(llm: LLM, lang: str) -> str:
    """The system prompt ``llm`` answers under: without examples when it carries the reply adapter."""
    return empathy_system(lang, examples=llm.adapter is None)


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
    lang = served(lang)
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
    lang = served(lang)
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


@dataclass
class Piece:
    """One delta of a thought-then-reply stream: ``part`` is "think" or "reply"."""

    part: str
    text: str


def think_stream(llm: LLM, messages: list[Message], opening: str, think_budget: int = 96,
                 reply_budget: int = 160, sampling: Sampling | None = None, lang: str = "en",
                 reply_opening: str = "", sentences: int = 3,
                 before_reply: Callable[[], None] | None = None) -> Generator[Piece, None, ThoughtReply]:
    """Continue ``<think>`` + ``opening`` within the budget, close it, then answer, delta by delta.

    One context throughout: the think is continued after the injected opening (one line: the cause), closed,
    and the reply continues the same assistant message, so the reply costs no second prompt. (Until issue 32
    a model without think tokens answered in a fresh turn with the think as "private notes"; SmolLM2 and
    Qwen2.5-Coder copied the notes, in the third person.) The think pieces joined equal the returned think and
    the reply pieces the returned reply: a budget-closed think is cut back to its last full sentence, so think
    text is only let out up to a sentence end until the think is over. The reply stops at a sentence end once
    it has ``sentences`` sentences, and one cut by its token budget is cut back to its last sentence end, so a
    reply never breaks off mid-sentence (``SentenceStop``). ``before_reply`` runs between the two (a live
    agent hands a core to its voice there).
    """
    base = sampling or Sampling(temperature=0.6, top_p=0.9, repeat_penalty=1.1)
    native = llm.native_think()
    prompt = open_think(llm.render(messages), opening)
    # A model without think tokens writes its reasoning as one line: stop at the line's end.
    stops = [THINK_CLOSE, "<|im_end|>", "<|im_start|>"] + ([] if native else ["\n"])
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
    start = reply_opening  # the model goes on with " The…" itself: a trailing space here doubled it
    if before_reply is not None:
        before_reply()
    answer = llm.stream(f"{prompt}{continuation}{close_think(native)}{start}",
                        _with(base, reply_budget, ["<|im_end|>", "<|im_start|>", THINK_OPEN, "\n\n"]))
    reply_text = Incremental(clean_reply)
    stop = SentenceStop(sentences)
    yield Piece("reply", reply_text.update(start))
    for delta in answer:
        delta, done = stop.feed(delta)
        yield Piece("reply", reply_text.update(delta))
        if done:
            answer.close()
            break
    cut = answer.completion.finish_reason == "length" and not stop.done
    final = _ended(clean_reply(reply_text.raw), reply_text.emitted, lang) if cut else None
    yield Piece("reply", reply_text.finish(final))
    think_done, answer_done = think_part.completion, answer.completion
    return ThoughtReply(think, reply_text.emitted, think_done.completion_tokens, answer_done.completion_tokens,
                        closed_by_budget, think_done.seconds + answer_done.seconds)


def close_think(native: bool) -> str:
    """What ends a think before the reply: a thinking model's own layout, or one line for the others."""
    return f"\n{THINK_CLOSE}\n\n" if native else f"{THINK_CLOSE}\n"


SENTENCE_ENDS = ".!?。！？…"


class SentenceStop:
    """Ends a reply at the end of its ``limit``-th sentence (a spoken turn needs no more).

    A sentence ends at ``. ! ? 。 ！ ？`` followed by anything but a digit ("3.5" is one number); an
    ellipsis ("..." or "…") is a pause, not an end.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.count, self.done, self._run = limit, 0, False, ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """The part of ``delta`` to keep, and whether the reply is complete with it."""
        if self.done:
            return "", True
        for i, char in enumerate(delta):
            if char in SENTENCE_ENDS:
                self._run += char
                continue
            run, self._run = self._run, ""
            if run and not char.isdigit() and "…" not in run and ".." not in run:
                self.count += 1
                if self.count >= self.limit:
                    self.done = True
                    return delta[:i], True
        return delta, False


def _ended(text: str, emitted: str, lang: str) -> str:
    """A reply cut by its token budget, back to its last sentence end; when part of the broken sentence was
    already let out (spoken), that part is closed with a full stop instead of being left hanging."""
    cut = max(text.rfind(p) for p in SENTENCE_ENDS)
    whole = text[: cut + 1] if cut > 0 else ""
    if whole and whole.startswith(emitted):
        return whole
    return emitted.rstrip(" ,;:，、；：—-") + ("。" if lang == "zh" else ".")


def answer_turn(llm: LLM, history: list[Message], text: str, path: list[str], lang: str,
                words_tag: str | None = None, think_budget: int = 64, reply_budget: int = 96,
                trajectory: bool = True, before_reply: Callable[[], None] | None = None
                ) -> Generator[Piece, None, ThoughtReply]:
    """One turn of the empathetic reply as the live agents give it: the system prompt (its worked examples
    kept as a saved prefix), the history (replies only), the user's ``text``; the think opened with the
    emotion perceived (``path[-1]``) and, when the user asks how their feelings changed, the whole ``path``,
    which also starts the reply (HumDial T1)."""
    system = [{"role": "system", "content": system_for(llm, lang)}]
    llm.keep_prefix(llm.render(system, add_generation_prompt=False))  # worked examples: computed once
    messages = [*system, *history, {"role": "user", "content": text or "…"}]
    asked = trajectory and len(path) > 1 and asks_trajectory(text, lang)
    opening = think_opening(path[-1], lang, words_tag, path if asked else None)
    return (yield from think_stream(llm, messages, opening, think_budget, reply_budget, lang=lang,
                                    reply_opening=trajectory_reply(path, lang) if asked else "",
                                    before_reply=before_reply))


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
