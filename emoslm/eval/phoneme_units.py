"""``emoslm units evaluate kokoro``: do phoneme units keep the words, in both languages, on unheard voices?

The same held-out clips as the learned units' evaluation (test voices speaking test scripts of the perception
corpus), three ways, each transcribed by Whisper base and scored against the script (WER en, CER zh):

- **original**: the clip itself (what Whisper makes of the voice: the ceiling of any resynthesis);
- **resynthesis**: audio → units (Whisper base → misaki's G2P) → Kokoro;
- **text → units → Kokoro**: the script's own units, what the model's branch is trained to write.

Speed: the tokenizer's and decoder's real-time factors, and the streaming decoder's first chunk (the compute
from having the first clause's units to its audio).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from emoslm.audio import load_audio
from emoslm.eval.units import Tally, _held_out, _score
from emoslm.progress import Start, silent


def evaluate_phonemes(spec: str, clips: list[Any], out: Path, per_lang: int = 40, progress: Start = silent
                      ) -> dict[str, Any]:
    from emoslm.perception.asr import FasterWhisperASR, transcriber
    from emoslm.speech.units.files import load_decoder
    from emoslm.speech.units.phonemes import PhonemeTokenizer, text_units

    test = _held_out(clips, per_lang)
    asr, decoder = FasterWhisperASR("whisper-base"), load_decoder(spec)
    hear = transcriber("whisper-base")
    tokenizers = {lang: PhonemeTokenizer(hear, lang) for lang in {c.lang for c in test}}
    original, resynth, spoken = Tally(), Tally(), Tally()
    rows, first_ms = [], []
    advance = progress("phoneme units: resynthesis", len(test))
    for clip in test:
        audio = load_audio(clip.audio)
        _score(original, clip, audio, asr)
        began = time.perf_counter()
        units = tokenizers[clip.lang].encode(audio)
        resynth.encode_s += time.perf_counter() - began
        began = time.perf_counter()
        speech = decoder.decode(units)
        resynth.decode_s += time.perf_counter() - began
        resynth.audio_s += len(speech) / decoder.sample_rate
        heard = _score(resynth, clip, speech, asr)
        from_text = decoder.decode(text_units(clip.text))
        heard_text = _score(spoken, clip, from_text, asr)
        first_ms.append(_first_chunk_ms(decoder, text_units(clip.text).codes))
        rows.append({"id": clip.id, "lang": clip.lang, "voice": clip.voice, "text": clip.text,
                     "heard_resynth": heard, "heard_from_text": heard_text, "units": len(units.codes),
                     "seconds": round(len(speech) / decoder.sample_rate, 2)})
        advance()
    langs = sorted(original.words)
    results = {"decoder": decoder.name, "clips": len(test), "by_lang": {lang: sum(c.lang == lang for c in test)
                                                                         for lang in langs},
               "original": {lang: original.error(lang) for lang in langs},
               "resynthesis": {lang: resynth.error(lang) for lang in langs},
               "text_units": {lang: spoken.error(lang) for lang in langs},
               "resynthesis_by_voice": resynth.by_voice(), "original_by_voice": original.by_voice(),
               "tokenizer_rtf": resynth.encode_s / max(1e-9, resynth.audio_s),
               "decoder_rtf": resynth.decode_s / max(1e-9, resynth.audio_s),
               "first_chunk_ms_p50": sorted(first_ms)[len(first_ms) // 2] if first_ms else None}
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(report(results))
    return results


def _first_chunk_ms(decoder: Any, codes: Any) -> float:
    """Feed the units a few at a time, as a branch writes them; the compute of the call that gave the first audio."""
    streamer = decoder.streamer()
    for start in range(0, len(codes), 4):
        began = time.perf_counter()
        if streamer.feed(codes[start:start + 4]):
            return 1000 * (time.perf_counter() - began)
    began = time.perf_counter()
    streamer.flush()
    return 1000 * (time.perf_counter() - began)


def report(results: dict[str, Any]) -> str:
    lines = [f"# Phoneme units ({results['decoder']}): resynthesis on held-out voices and texts", "",
             f"{results['clips']} clips ({', '.join(f'{k}: {v}' for k, v in results['by_lang'].items())}): test voices "
             "speaking test scripts of the perception corpus; Whisper base transcribes (WER en, CER zh, simplified).",
             "", "| measure | " + " | ".join(results["original"]) + " |", "|---|" + "---|" * len(results["original"])]
    for key, name in (("original", "the original clip"), ("resynthesis", "resynthesis: audio → ASR + G2P → Kokoro"),
                      ("text_units", "the script's units → Kokoro (what the branch learns to write)")):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in results[key].values()) + " |")
    lines += ["", f"Tokenizer RTF (Whisper base + G2P): {results['tokenizer_rtf']:.3f}; decoder RTF (Kokoro, "
              f"one clause at a time): {results['decoder_rtf']:.3f}; streaming first clause: "
              f"{results['first_chunk_ms_p50']:.0f} ms p50 of compute once its units are written.", ""]
    return "\n".join(lines)
