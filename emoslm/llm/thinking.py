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
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from emoslm.llm.base import LLM, Message, Sampling

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

ZH_NAMES = {"happy": "开心", "sad": "难过", "anger": "愤怒", "fear": "害怕", "neutral": "平静", "surprise": "惊讶",
            "disgust": "厌恶"}

OPENING = {
    "en": "The user speaks with {evidence}{agreement}, so the emotion I hear is {tag}. "
          "The most likely reason they feel {tag} is",
    "zh": "用户说话时{evidence}{agreement}，我听到的情绪是{name}（{tag}）。用户感到{name}最可能的原因是",
}
AGREEMENT = {
    "en": {"same": ", and their words say the same", "conflict": ", although their words sound {words}", "none": ""},
    "zh": {"same": "，说的话也印证了这一点", "conflict": "，虽然字面上听起来像{words}", "none": ""},
}


def think_opening(tag: str, lang: str = "en", words_tag: str | None = None) -> str:
    """The injected start of the think: the emotion tag and what in the audio shows it, ending open."""
    lang = "zh" if lang == "zh" else "en"
    kind = "none" if words_tag is None else ("same" if words_tag == tag else "conflict")
    agreement = AGREEMENT[lang][kind].format(words=ZH_NAMES.get(words_tag or "", words_tag) if lang == "zh"
                                             else words_tag)
    return OPENING[lang].format(evidence=VOICE_EVIDENCE[lang][tag], agreement=agreement, tag=tag,
                                name=ZH_NAMES[tag])


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


def think_then_answer(llm: LLM, messages: list[Message], opening: str, think_budget: int = 96,
                      reply_budget: int = 160, sampling: Sampling | None = None, lang: str = "en") -> ThoughtReply:
    """Continue ``<think>`` + ``opening`` within the budget, close it, then answer.

    Thinking models continue after ``</think>``; others answer in a fresh turn given the think as notes.
    """
    base = sampling or Sampling(temperature=0.6, top_p=0.9, repeat_penalty=1.15)
    prompt = llm.render(messages) + f"{THINK_OPEN}\n{opening}"
    # Without think tokens a model runs on from its reasoning into the answer after a blank line: stop there.
    stops = [THINK_CLOSE, "<|im_end|>", "<|im_start|>"] + ([] if llm.native_think() else ["\n\n"])
    think_part = llm.complete(prompt, _with(base, think_budget, stops))
    continuation = think_part.text.split(THINK_CLOSE)[0]
    closed_by_budget = think_part.finish_reason == "length"
    if closed_by_budget:
        continuation = _last_sentence_end(continuation)
    continuation = continuation.rstrip()
    think = (opening + continuation).strip()
    stops = ["<|im_end|>", "<|im_start|>", THINK_OPEN]
    if llm.native_think():
        answer = llm.complete(f"{prompt}{continuation}\n{THINK_CLOSE}\n\n", _with(base, reply_budget, stops))
    else:
        noted = _with_notes(messages, NOTES["zh" if lang == "zh" else "en"].format(think=think))
        answer = llm.complete(llm.render(noted), _with(base, reply_budget, stops + ["\n\n"]))
    reply = re.sub(r"</?answer>", "", answer.text).strip()
    return ThoughtReply(think, reply, think_part.completion_tokens, answer.completion_tokens, closed_by_budget,
                        think_part.seconds + answer.seconds)


def _with_notes(messages: list[Message], notes: str) -> list[Message]:
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + notes}, *messages[1:]]
    return [{"role": "system", "content": notes.strip()}, *messages]


def _with(base: Sampling, max_tokens: int, stop: list[str]) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=base.temperature, top_p=base.top_p, top_k=base.top_k,
                    repeat_penalty=base.repeat_penalty, seed=base.seed, stop=list(base.stop) + stop)


def _last_sentence_end(text: str) -> str:
    """Cut a budget-truncated think back to its last full sentence (keeps the cause sentence whole)."""
    cut = max(text.rfind(p) for p in (".", "!", "?", "。", "！", "？"))
    return text[: cut + 1] if cut > len(text) // 3 else text


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


def tag_in_think(think: str) -> str | None:
    """The first of the seven tags a think names (how a model's think is read back as an emotion)."""
    from emoslm.perception.labels import TAGS

    found = [(m.start(), t) for t in TAGS for m in re.finditer(rf"\b{t}\b", think.lower())]
    return min(found)[1] if found else None
