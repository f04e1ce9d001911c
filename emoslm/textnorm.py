"""Text normalisation and error rates shared by ASR checks, the demo and evaluation.

CJK text has no spaces, so each CJK character is one token (the TELEVAL convention); other
scripts split into alphanumeric runs. Non-verbal tags such as ``[sigh]`` are not words. Chinese is
compared in simplified characters: Whisper often writes traditional ones for Mandarin speech, and
"檢查" for "检查" is not a recognition error.
"""

from __future__ import annotations

import re
import unicodedata

_TAG = re.compile(r"\[[^\]]*\]")
_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)


def tokens(text: str) -> list[str]:
    """Lower-cased tokens without punctuation or non-verbal tags; each CJK character is a token (simplified)."""
    text = unicodedata.normalize("NFKC", _TAG.sub(" ", text)).lower()
    if _HAN.search(text):
        text = simplified(text)
    return _TOKEN.findall(text)


_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def simplified(text: str) -> str:
    """Traditional Chinese characters → simplified (zhconv's tables)."""
    import zhconv

    return zhconv.convert(text, "zh-cn")


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h))
        previous = current
    return previous[-1]


def error_rate(reference: str, hypothesis: str) -> float:
    """Word error rate (character error rate for CJK) of ``hypothesis`` against ``reference``."""
    ref, hyp = tokens(reference), tokens(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
