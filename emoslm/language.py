"""The one rule for a turn's language: emoslm answers in English or Mandarin (HumDial's two languages).

Every caller used to write it out (``"zh" if lang == "zh" else "en"``, ``lang or "en"``, an any-CJK test, a
CJK-share test), and they disagreed: the slm agent fell back to English where the others detected. Now:

- ``served(lang)``: a language code → the one a turn is answered in (zh, else en);
- ``of_text(text)``: written text → zh when at least a fifth of its letters are CJK characters;
- ``of_turn(fixed, heard)``: the session's fixed language when it has one, else the one the ASR heard.
"""

from __future__ import annotations

import re

LANGUAGES = ("en", "zh")
CJK = re.compile(r"[\u4e00-\u9fff]")


def served(lang: str | None) -> str:
    """The language a turn in ``lang`` is answered in (unknown or any other language: English)."""
    return "zh" if lang == "zh" else "en"


def of_text(text: str) -> str:
    """zh when at least a fifth of the letters are CJK characters, else en."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "en"
    return "zh" if sum(bool(CJK.match(c)) for c in letters) / len(letters) >= 0.2 else "en"


def of_turn(fixed: str | None, heard: str | None) -> str:
    """A turn's language: the session's own when it fixed one, else what the speech was heard as."""
    return served(fixed or heard)
