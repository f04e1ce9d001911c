"""JSON Lines reading shared by every manifest and dialogue reader: a bad line names its file and line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from emoslm.errors import DataError


def open_text(path: Path) -> IO[str]:
    """A text handle, transparently un-gzipping ``.gz`` files (lhotse and GigaSpeech ship them)."""
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def json_lines(path: Path, expect: str = "a JSON object") -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file:line, object)`` for every non-empty line; a bad line is a DataError naming both."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected {expect}")
            yield where, obj
