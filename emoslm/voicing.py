"""Speak the user turns of HumDial dialogues with emotion-fitting prosody.

The example dialogues ship as text; this turns them into the audio HumDial provides, so every
later flow (demo, eval, chat) can run on speech. Each turn gets the acted prosody of its gold
emotion plus a small seeded variation; files that already exist are kept, so a rerun is instant —
unless another voice made them (each language folder records its voice in ``VOICE``), in which case
they are spoken again.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from emoslm.audio import SAMPLE_RATE, save_audio
from emoslm.dialogues import Dialogue, write_dialogues
from emoslm.speech.prosody import acted
from emoslm.speech.tts import TTS
from emoslm.speech.voice import voice_pool


def voice_dialogues(
    dialogues: list[Dialogue],
    out_dir: Path,
    tts_for: Callable[[str], TTS] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    on_turn: Callable[[Dialogue, int], None] | None = None,
) -> list[Dialogue]:
    """Write ``out_dir/{lang}/{dialogue_id}_{turn_id}.wav`` and ``out_dir/{lang}.jsonl`` pointing at them."""
    tts_for = tts_for or (lambda lang: voice_pool().tts("auto", lang))
    voiced: list[Dialogue] = []
    stale = {lang: overwrite or _voiced_by_another(out_dir / lang, tts_for(lang).name)
             for lang in {d.lang for d in dialogues}}
    for dialogue in dialogues:
        lang = dialogue.lang
        turns = []
        for turn in dialogue.turns:
            rel = f"{lang}/{dialogue.dialogue_id}_{turn.turn_id}.wav"
            target = out_dir / rel
            if stale[lang] or not target.exists():
                rng = random.Random(seed ^ zlib.crc32(rel.encode()))
                prosody = acted(turn.emotion or "neutral").jitter(rng, 0.05)
                speech = tts_for(lang).synthesize(turn.text, prosody)
                save_audio(target, speech.at(SAMPLE_RATE))
            turns.append(replace(turn, split_audio_file=rel))
            if on_turn:
                on_turn(dialogue, turn.turn_id)
        voiced.append(replace(dialogue, turns=turns))
    for lang in sorted({d.lang for d in voiced}):
        write_dialogues(out_dir / f"{lang}.jsonl", [d for d in voiced if d.lang == lang])
        (out_dir / lang / "VOICE").write_text(tts_for(lang).name + "\n", encoding="utf-8")
    return voiced


def _voiced_by_another(folder: Path, voice: str) -> bool:
    """True when ``folder`` holds clips spoken by a voice other than ``voice`` (or by an unrecorded one)."""
    marker = folder / "VOICE"
    if marker.exists():
        return marker.read_text(encoding="utf-8").strip() != voice
    return any(folder.glob("*.wav"))

