"""TELEVAL's AQA exact-match scorer and its external-evaluation prediction files.

The scorer follows TELEVAL's ``SimpleTokenizer.has_answer``: text is Unicode-NFD normalised and lower
cased, then tokenised into runs of letters, digits and combining marks, or single other non-space
characters; every CJK character is a token of its own. Punctuation tokens are then dropped, which
never joins what stood on either side (``1,000`` is ``1`` ``000``; ``hello-world`` matches ``hello world``),
while symbols such as ``$`` stay tokens. A sample scores 1 when a reference occurs as a contiguous run of
tokens in the prediction; an empty reference matches anything. A list of references means "any of
these", nested or not; "all of these" exists only as a Python tuple, since a JSON file has no tuples.
Dataset score: mean × 100.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from emoslm.atomic import atomic_file

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_MARKS = r"\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
# One CJK character; or a run of letters, digits and combining marks; or any other single non-space character.
_TOKEN = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_]|[{_MARKS}])+|\S", re.UNICODE)


def normalise(text: str) -> str:
    """Unicode NFD (accents become combining marks) and lower case, as TELEVAL's tokenizer does."""
    return unicodedata.normalize("NFD", text).lower()


def aqa_tokens(text: str) -> list[str]:
    """TELEVAL's tokens: punctuation tokens dropped (not joined across), symbol tokens kept."""
    return [t for t in _TOKEN.findall(normalise(text)) if not unicodedata.category(t[0]).startswith("P")]


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def _matches(prediction: list[str], reference: Any) -> bool:
    """A string must occur; a list: any of its items; a tuple: all of its items."""
    if isinstance(reference, tuple):
        return all(_matches(prediction, part) for part in reference)
    if isinstance(reference, list):
        return any(_matches(prediction, item) for item in reference)
    return _contains(prediction, aqa_tokens(str(reference)))


def exist_match(prediction: str, references: str | Sequence[Any]) -> int:
    """1 if any reference appears as a contiguous token run in ``prediction`` (a tuple: all its parts)."""
    return int(_matches(aqa_tokens(prediction), references if isinstance(references, (list, tuple)) else [references]))


def aqa_score(predictions: Iterable[str], references: Iterable[str | Sequence[Any]]) -> float:
    """Mean exact-match × 100 over the samples."""
    hits = [exist_match(p, r) for p, r in zip(predictions, references, strict=True)]
    return 100.0 * sum(hits) / len(hits) if hits else 0.0


def write_predictions(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """TELEVAL's external-evaluation file: one JSON per line with ``key``, ``pred`` and ``ref``
    (``{save_dir}/prediction/{model}/{task}.jsonl``), written atomically."""
    lines = []
    for row in rows:
        if not {"key", "pred", "ref"} <= set(row):
            raise ValueError(f"a prediction row needs key, pred and ref: {row}")
        lines.append(json.dumps({**row, "ref": _jsonable(row["ref"])}, ensure_ascii=False) + "\n")
    with atomic_file(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
    return path


def _jsonable(ref: Any) -> Any:
    """Lists stay lists (any-of); a tuple (all-of) has no JSON form TELEVAL would read as all-of."""
    if isinstance(ref, tuple):
        raise ValueError(f"an all-of reference {ref!r} cannot be written: TELEVAL reads every JSON list as any-of")
    if isinstance(ref, list):
        return [_jsonable(r) for r in ref]
    return ref
