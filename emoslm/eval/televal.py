"""TELEVAL's AQA exact-match scorer and its external-evaluation prediction files.

The scorer follows TELEVAL's ``ExistMatch``: normalise (Unicode NFD, lower case, punctuation removed),
tokenise (each CJK character one token, other alphanumeric runs one token), and score a sample 1
when any reference answer occurs as a contiguous run of tokens in the prediction. A reference may be
a list of alternatives (any of them), each a string or a tuple of parts (all of them; a nested list in
JSON). Dataset score: mean × 100.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from emoslm.atomic import atomic_file

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_MARKS = r"\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
# A token: one CJK character, or a run of letters, digits and the combining marks NFD splits off them.
_TOKEN = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_]|[{_MARKS}])+", re.UNICODE)


def normalise(text: str) -> str:
    """NFD, lower case, punctuation and symbols removed (accents stay, as combining marks)."""
    text = unicodedata.normalize("NFD", text).lower()
    return "".join(c for c in text if not unicodedata.category(c).startswith(("P", "S")))


def aqa_tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalise(text))


def _contains(haystack: list[str], needle: list[str]) -> bool:
    if not needle:
        return False
    n = len(needle)
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def exist_match(prediction: str, references: str | Sequence[Any]) -> int:
    """1 if any reference (a tuple: all its parts) appears as a contiguous token run in ``prediction``."""
    pred = aqa_tokens(prediction)
    refs = [references] if isinstance(references, str) else list(references)
    for ref in refs:
        parts = list(ref) if isinstance(ref, (tuple, list)) else [ref]
        if all(_contains(pred, aqa_tokens(str(p))) for p in parts):
            return 1
    return 0


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
    if isinstance(ref, (list, tuple)):
        return [_jsonable(r) for r in ref]
    return ref
