"""Emotion from the words: lexicon cues, sentence-embedding zero-shot, and optionally the LLM.

Each source turns a transcript into a few numbers; a small learned model (see ``classifier``)
turns those into a distribution over the 7 tags. English uses VADER valence, NRC categories and
MiniLM similarity to emotion descriptions; Chinese, where none of those apply, uses a keyword
lexicon written for the project. The LLM labeller works for both but costs a generation.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np

from emoslm.emotions import NRC_TO_TAG, TAGS, normalise_tag
from emoslm.errors import DataError, MissingPackageError
from emoslm.textnorm import tokens

# What each tag sounds like as a first-person statement; MiniLM compares the transcript to these.
DESCRIPTIONS: dict[str, str] = {
    "happy": "I am so happy, this is wonderful and I feel great joy.",
    "sad": "I feel sad and heartbroken, I miss them and want to cry.",
    "anger": "I am furious and angry, this is outrageous and unfair.",
    "fear": "I am scared and terrified, I am afraid something bad will happen.",
    "neutral": "This is an ordinary factual statement about plans and everyday things.",
    "surprise": "Wow, I can't believe it, this is so unexpected and surprising!",
    "disgust": "That is disgusting and gross, it makes me feel sick.",
}

ZH_KEYWORDS: dict[str, tuple[str, ...]] = {
    "happy": ("开心", "高兴", "快乐", "太好了", "太棒", "喜欢", "兴奋", "庆祝", "幸福", "笑", "美好", "顺利",
              "第一名"),
    "sad": ("难过", "伤心", "想他", "想她", "哭", "孤单", "绝望", "心碎", "碎了", "失去", "空空", "死了",
            "走了", "丢了"),
    "anger": ("气死", "生气", "愤怒", "受够", "过分", "讨厌", "怎么敢", "撒谎", "不可理喻", "大喊", "气得"),
    "fear": ("害怕", "怕", "恐惧", "发抖", "担心", "紧张", "救救", "万一", "闯进来", "跟着我"),
    "surprise": ("居然", "竟然", "没想到", "不敢相信", "天哪", "我的天", "真的吗", "不会吧", "意外", "突然"),
    "disgust": ("恶心", "脏", "臭", "想吐", "反感", "作呕", "霉", "馊", "蟑螂"),
    "neutral": (),
}
_NEGATION = re.compile(r"\b(not|never|no|n't)\b|不|没")


@lru_cache(maxsize=2)
def load_sentence_model(name: str = "minilm-l6-v2") -> Any:
    """The packaged all-MiniLM-L6-v2 as a sentence-transformers model (offline)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MissingPackageError("sentence-transformers", "MiniLM text emotion", "emoslm[emotion]") from None
    import torch
    import transformers

    from emoslm.config import torch_threads
    from emoslm.store import resolve

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(torch_threads())  # the job's choice (one thread beside llama.cpp), set as torch loads
    resolved = resolve(name)
    return SentenceTransformer(str(resolved.path or resolved.hub_id), device="cpu")


class EnglishTextFeatures:
    """VADER (4) + NRC categories (6 tags + positive/negative) + MiniLM similarity to each tag (7)."""

    names = (["vader_neg", "vader_neu", "vader_pos", "vader_compound"]
             + [f"nrc_{t}" for t in TAGS if t != "neutral"] + ["nrc_positive", "nrc_negative", "negation"]
             + [f"minilm_{t}" for t in TAGS])

    def __init__(self, use_nrc: bool = True) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise MissingPackageError("vadersentiment", "English text emotion", "emoslm[emotion]") from None
        self.vader = SentimentIntensityAnalyzer()
        self.nrc = _load_nrc() if use_nrc else None
        self.model = load_sentence_model()
        self.anchors = self.model.encode([DESCRIPTIONS[t] for t in TAGS], normalize_embeddings=True)

    def __call__(self, texts: list[str]) -> np.ndarray:
        embeddings = self.model.encode(texts, normalize_embeddings=True, batch_size=32)
        rows = []
        for text, embedding in zip(texts, embeddings, strict=True):
            vader = self.vader.polarity_scores(text)
            rows.append([vader["neg"], vader["neu"], vader["pos"], vader["compound"], *self._nrc(text),
                         float(bool(_NEGATION.search(text.lower()))), *(self.anchors @ embedding).tolist()])
        return np.asarray(rows, dtype=np.float32)

    def _nrc(self, text: str) -> list[float]:
        if self.nrc is None:
            return [0.0] * 8
        self.nrc.load_token_list(tokens(text))
        scores = self.nrc.raw_emotion_scores
        words = max(1, len(tokens(text)))
        by_tag = dict.fromkeys(TAGS, 0.0)
        for category, count in scores.items():
            tag = NRC_TO_TAG.get(category)
            if tag:
                by_tag[tag] += count / words
        return [by_tag[t] for t in TAGS if t != "neutral"] + [scores.get("positive", 0) / words,
                                                               scores.get("negative", 0) / words]


def _load_nrc() -> Any:
    try:
        from nrclex import NRCLex
    except ImportError:
        return None  # optional: research/non-commercial lexicon; the other cues still work
    return NRCLex()


class ChineseTextFeatures:
    """Keyword hits per tag (written for the project) plus exclamation/question/negation cues."""

    names = [f"kw_{t}" for t in TAGS] + ["exclaim", "question", "negation"]

    def __call__(self, texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            hits = [float(sum(text.count(k) for k in ZH_KEYWORDS[t])) for t in TAGS]
            rows.append([*hits, float("！" in text or "!" in text), float("？" in text or "?" in text),
                         float(bool(_NEGATION.search(text)))])
        return np.asarray(rows, dtype=np.float32)


@lru_cache(maxsize=2)
def text_featurizer(lang: str) -> EnglishTextFeatures | ChineseTextFeatures:
    """One featurizer per language per process (VADER, NRC and the MiniLM anchors load once)."""
    return ChineseTextFeatures() if lang == "zh" else EnglishTextFeatures()


LLM_PROMPT = {
    "en": "Which emotion does the speaker of this sentence feel? Answer with exactly one word from: "
          "happy, sad, anger, fear, neutral, surprise, disgust.\nSentence: {text}\nEmotion:",
    "zh": "这句话的说话人是什么情绪？只用一个英文单词回答，从 happy, sad, anger, fear, neutral, surprise, "
          "disgust 中选。\n句子：{text}\n情绪：",
}


class LLMTextEmotion:
    """Zero-shot labelling by an LLM (any ``emoslm.llm`` backend); returns a one-hot-ish distribution.

    Slower than the lexicon path (one short generation per text), so it is opt-in, e.g. for
    labelling data offline with a strong model behind an HTTP endpoint.
    """

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def probs(self, text: str, lang: str = "en") -> dict[str, float]:
        from emoslm.llm.base import Sampling

        messages = [{"role": "user", "content": LLM_PROMPT.get(lang, LLM_PROMPT["en"]).format(text=text)}]
        answer = self.llm.chat(messages, Sampling(max_tokens=6, temperature=0.0)).text.lower()
        for word in re.findall(r"[a-z]+", answer):
            try:
                tag = normalise_tag(word)
            except DataError:
                continue
            return {t: (0.82 if t == tag else 0.03) for t in TAGS}
        return {t: 1.0 / len(TAGS) for t in TAGS}
