"""``emoslm units evaluate``: how good are the units and the decoder, on unheard voices and unseen texts.

For each tokenizer (the VQ one and the k-means baseline, each with the decoder trained on its units):
encode → decode every held-out clip with the voice enrolled from its other clips and the style estimated
from the clip itself, then

- **intelligibility**: Whisper base transcribes the resynthesis; WER (en) / CER (zh, simplified) against
  the text, next to the same figure for the original clip and for the original's mel through the vocoder
  (the two ceilings: the voice's own, and what the vocoder leaves of it);
- **emotion survival**: the recogniser's acoustic tag on the resynthesis vs on the original clip;
- **codebook**: codes used and perplexity of the held-out units;
- **speed**: tokenizer and decoder real-time factors, and the streaming decoder's first-chunk latency
  (the compute from having the first chunk's units to its first audio);
- **streaming = offline**: the largest difference between streamed and offline audio, and its SNR.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emoslm.audio import load_audio
from emoslm.progress import Start, silent
from emoslm.textnorm import edit_distance, tokens


@dataclass
class Pair:
    """A tokenizer folder and the decoder trained on its units."""

    name: str
    tokenizer: Path
    decoder: Path


@dataclass
class Tally:
    edits: Counter = field(default_factory=Counter)
    words: Counter = field(default_factory=Counter)
    agree: list[bool] = field(default_factory=list)
    encode_s: float = 0.0
    decode_s: float = 0.0
    audio_s: float = 0.0
    codes: list[np.ndarray] = field(default_factory=list)
    unit_edits: Counter = field(default_factory=Counter)  # Whisper's decoder reading the units directly
    voice_edits: Counter = field(default_factory=Counter)
    voice_words: Counter = field(default_factory=Counter)

    def error(self, lang: str) -> float | None:
        return self.edits[lang] / self.words[lang] if self.words[lang] else None

    def by_voice(self) -> dict[str, float]:
        """Error rate per held-out voice: a voice Whisper cannot follow even in the original caps its row."""
        return {voice: self.voice_edits[voice] / self.voice_words[voice] for voice in sorted(self.voice_words)}

    def unit_error(self, lang: str) -> float | None:
        return self.unit_edits[lang] / self.words[lang] if self.words[lang] and self.unit_edits else None


def pairs_in(run: Path) -> list[Pair]:
    """The (tokenizer, decoder) pairs a ``units train`` run folder holds."""
    found = [Pair("vq", run / "tokenizer" / "final", run / "decoder" / "final"),
             Pair("kmeans", run / "kmeans" / "final", run / "decoder-kmeans" / "final")]
    return [p for p in found if (p.tokenizer / "config.json").exists() and (p.decoder / "config.json").exists()]


def evaluate(run: Path, clips: list[Any], out: Path, per_lang: int = 40, progress: Start = silent) -> dict[str, Any]:
    """Evaluate every pair in ``run`` on up to ``per_lang`` held-out clips per language; writes out/report.md."""
    from emoslm.errors import EmoslmError
    from emoslm.perception.asr import FasterWhisperASR
    from emoslm.perception.recognizer import EmotionRecognizer
    from emoslm.speech.units.decoder import UnitDecoder
    from emoslm.speech.units.tokenizer import SpeechTokenizer

    pairs = pairs_in(run)
    if not pairs:
        raise EmoslmError(f"{run}: no trained tokenizer + decoder here; run `emoslm units train RECIPE --out {run}`")
    test = _held_out(clips, per_lang)
    asr, recogniser = FasterWhisperASR("whisper-base"), EmotionRecognizer()
    originals = {c.id: load_audio(c.audio) for c in test}
    enrol = _enrolment(test, clips)
    results: dict[str, Any] = {"clips": len(test), "by_lang": dict(Counter(c.lang for c in test)), "pairs": {}}
    ceiling, heard = Tally(), {}
    for clip in test:
        _score(ceiling, clip, originals[clip.id], asr)
        heard[clip.id] = recogniser.acoustic_model.acoustic(originals[clip.id]).tag
    results["original"] = {lang: ceiling.error(lang) for lang in ceiling.words}
    results["original_by_voice"] = ceiling.by_voice()
    results["vocoded"] = vocoder_ceiling(UnitDecoder.from_pretrained(pairs[0].decoder).vocoder, test, originals, asr)
    rows: list[dict[str, Any]] = []
    whisper = _whisper_decoder(pairs)
    for pair in pairs:
        tokenizer, decoder = SpeechTokenizer.from_pretrained(pair.tokenizer), UnitDecoder.from_pretrained(pair.decoder)
        tally, advance = Tally(), progress(f"resynthesis ({pair.name})", len(test))
        for clip in test:
            audio = originals[clip.id]
            speaker = decoder.speaker_of(load_audio(c.audio) for c in enrol[clip.voice] if c.id != clip.id)
            began = time.perf_counter()
            units = tokenizer.encode(audio)
            tally.encode_s += time.perf_counter() - began
            began = time.perf_counter()
            resynth = decoder.decode(units, speaker, decoder.style_of(audio, speaker))
            tally.decode_s += time.perf_counter() - began
            tally.audio_s += len(audio) / 16_000
            tally.codes.append(units.codes)
            text = _score(tally, clip, resynth, asr)
            if whisper and tokenizer.config.kind == "vq":
                heard_units = transcribe_units(tokenizer, units.codes, clip.lang, whisper)
                tally.unit_edits[clip.lang] += edit_distance(tokens(clip.text), tokens(heard_units))
            tag = recogniser.acoustic_model.acoustic(resynth).tag
            tally.agree.append(tag == heard[clip.id])
            rows.append({"pair": pair.name, "id": clip.id, "lang": clip.lang, "voice": clip.voice, "text": clip.text,
                         "heard": text, "acted": clip.emotion, "tag_original": heard[clip.id], "tag_resynth": tag})
            advance()
        results["pairs"][pair.name] = _summary(tally, tokenizer, decoder, test[0], originals[test[0].id])
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    _plots(out, results)
    training_curves(run, out)
    (out / "report.md").write_text(report(results))
    return results


def vocoder_ceiling(vocoder: Any, test: list[Any], originals: dict[str, np.ndarray], asr: Any
                    ) -> dict[str, float | None]:
    """Error rate of each original clip's own mel through the vocoder: what a perfect unit-to-mel network
    would reach, so a resynthesis figure splits into what the vocoder loses and what the units lose."""
    from emoslm.speech.vocoder import log_mel

    tally = Tally()
    for clip in test:
        _score(tally, clip, vocoder.mel_to_audio(log_mel(originals[clip.id])), asr)
    return {lang: tally.error(lang) for lang in tally.words}


def _whisper_decoder(pairs: list[Pair]) -> tuple[Any, Any] | None:
    """The frozen Whisper decoder and its text side, when a VQ tokenizer is evaluated (it was trained through it)."""
    from emoslm.speech.units.tokenizer import SpeechTokenizer
    from emoslm.speech.whisper_ct2 import WhisperText

    for pair in pairs:
        config = SpeechTokenizer.from_pretrained(pair.tokenizer).config
        if config.kind == "vq":
            from emoslm.speech.whisper_ct2 import load_whisper_decoder

            return load_whisper_decoder(config.encoder), WhisperText(config.encoder)
    return None


def _held_out(clips: list[Any], per_lang: int) -> list[Any]:
    """Test voices speaking test scripts, spread over voices and emotions, the same every run."""
    import zlib

    chosen = []
    for lang in sorted({c.lang for c in clips}):
        pool = [c for c in clips if c.split == "test" and c.lang == lang]
        pool.sort(key=lambda c: zlib.crc32(c.id.encode()))
        chosen.extend(pool[:per_lang])
    return chosen


def _enrolment(test: list[Any], clips: list[Any], per_voice: int = 8) -> dict[str, list[Any]]:
    """A few other clips of each test voice to enrol it from (neutral first)."""
    out = {}
    for voice in {c.voice for c in test}:
        own = sorted((c for c in clips if c.voice == voice), key=lambda c: (c.emotion != "neutral", c.id))
        out[voice] = own[: per_voice + 1]
    return out


def _score(tally: Tally, clip: Any, audio: np.ndarray, asr: Any) -> str:
    text = asr.transcribe(audio, language=clip.lang).text
    ref = tokens(clip.text)
    edits = edit_distance(ref, tokens(text))
    tally.edits[clip.lang] += edits
    tally.words[clip.lang] += len(ref)
    tally.voice_edits[clip.voice] += edits
    tally.voice_words[clip.voice] += len(ref)
    return text


def _summary(tally: Tally, tokenizer: Any, decoder: Any, clip: Any, audio: np.ndarray) -> dict[str, Any]:
    import torch

    from emoslm.speech.units.tokenizer import codebook_stats

    codes = np.concatenate(tally.codes)
    stats = codebook_stats(torch.from_numpy(codes), tokenizer.config.codes)
    return {"error": {lang: tally.error(lang) for lang in tally.words}, "error_by_voice": tally.by_voice(),
            "units_error": {lang: tally.unit_error(lang) for lang in tally.words},
            "emotion_agreement": float(np.mean(tally.agree)) if tally.agree else None,
            "codes": tokenizer.config.codes, "rate_hz": tokenizer.rate, **stats,
            "tokenizer_rtf": tally.encode_s / max(1e-9, tally.audio_s),
            "decoder_rtf": tally.decode_s / max(1e-9, tally.audio_s),
            **streaming_figures(tokenizer, decoder, audio)}


def transcribe_units(tokenizer: Any, codes: np.ndarray, lang: str, whisper: tuple[Any, Any], max_tokens: int = 96
                     ) -> str:
    """Greedy Whisper decoding of what a VQ tokenizer's units alone keep (no speech decoder in between)."""
    import torch

    from emoslm.speech.whisper_ct2 import decode_logits

    decoder, text = whisper
    ids = text.ids("", lang)[:-2]  # the prompt: <|sot|><|lang|><|transcribe|><|notimestamps|>
    eot = text.ids("", lang)[-1]
    with torch.inference_mode():
        memory = tokenizer.bottleneck.memory(torch.as_tensor(codes)[None])
        for _ in range(max_tokens):
            token = int(decode_logits(decoder, torch.tensor([ids]), memory)[0, -1].argmax())
            if token == eot:
                break
            ids.append(token)
    prompt = len(text.ids("", lang)) - 2
    return text.raw.decode(ids[prompt:])


def streaming_figures(tokenizer: Any, decoder: Any, audio: np.ndarray) -> dict[str, float]:
    """First-chunk latency (units in hand → first audio out) and how far streaming is from offline."""
    units = tokenizer.encode(audio)
    offline = decoder.decode(units)
    needed = 10 + decoder.config.context  # the first chunk's units plus its look-ahead
    decoder.decode(units.codes[:needed])  # warm the vocoder's first call
    began = time.perf_counter()
    stream = decoder.decode_stream([units.codes[:needed]])
    next(iter(stream))
    first = time.perf_counter() - began
    pieces = [units.codes[k:k + 7] for k in range(0, len(units.codes), 7)]  # as a generator would write them
    streamed = np.concatenate(list(decoder.decode_stream(pieces)))
    n = min(len(offline), len(streamed))
    diff = offline[:n] - streamed[:n]
    snr = 10 * np.log10(np.sum(offline[:n] ** 2) / max(1e-12, float(np.sum(diff ** 2))))
    return {"first_chunk_ms": 1000 * first, "stream_max_abs_diff": float(np.max(np.abs(diff))),
            "stream_snr_db": float(snr), "stream_length_diff": int(len(offline) - len(streamed))}


def report(results: dict[str, Any]) -> str:
    """The markdown report: one table per measure, the pairs side by side."""
    names = list(results["pairs"])
    lines = ["# Speech units: resynthesis on held-out voices and texts", "",
             f"{results['clips']} clips ({', '.join(f'{k}: {v}' for k, v in results['by_lang'].items())}), test voices "
             "speaking test scripts of the perception corpus; Whisper base transcribes; the recogniser's acoustic "
             "tag judges emotion.", "",
             "| measure | original | " + " | ".join(names) + " | target |", "|---|---|" + "---|" * len(names) + "---|"]

    def cells(get: Any, fmt: str = "{:.3f}") -> str:
        return " | ".join(fmt.format(v) if (v := get(results["pairs"][n])) is not None else "–" for n in names)

    for lang, target in (("en", "≤ 0.15"), ("zh", "≤ 0.30")):
        if lang in results["original"]:
            name = "WER en" if lang == "en" else "CER zh"
            errors = cells(lambda p, lang=lang: p["error"].get(lang))
            lines.append(f"| {name} resynthesis | {results['original'][lang]:.3f} | {errors} | {target} |")
            if results.get("vocoded", {}).get(lang) is not None:
                lines.append(f"| {name}, the original's mel through the vocoder | {results['vocoded'][lang]:.3f} | "
                             f"{' | '.join('–' for _ in names)} | |")
            direct = cells(lambda p, lang=lang: p.get("units_error", {}).get(lang))
            lines.append(f"| {name}, Whisper's decoder reading the units | – | {direct} | |")
    lines += [f"| emotion agreement (resynth vs original) | 1 | {cells(lambda p: p['emotion_agreement'])} | ≥ 0.70 |",
              f"| codes used (of codebook) | – | {cells(lambda p: p['codes_used'], '{:.0f}')} | |",
              f"| code perplexity | – | {cells(lambda p: p['perplexity'], '{:.0f}')} | |",
              f"| tokenizer RTF | – | {cells(lambda p: p['tokenizer_rtf'])} | |",
              f"| decoder RTF (units → mel → HiFi-GAN) | – | {cells(lambda p: p['decoder_rtf'])} | ≤ 0.2 |",
              f"| streaming first chunk (ms) | – | {cells(lambda p: p['first_chunk_ms'], '{:.0f}')} | ≤ 150 |",
              f"| streaming vs offline SNR (dB) | – | {cells(lambda p: p['stream_snr_db'], '{:.1f}')} | |", "",
              *_voice_table(results, names),
              "![error rates](errors.png)", "", "![code use](codes.png)", "",
              "Training (`log.jsonl` of each part): the tokenizer's transcript loss through the frozen Whisper "
              "decoder and its codebook perplexity per batch; each decoder's mel L1.", "",
              "![training](training.png)", ""]
    return "\n".join(lines)


def _voice_table(results: dict[str, Any], names: list[str]) -> list[str]:
    """WER (en voices) / CER (zh voices) per held-out voice, the original beside each resynthesis."""
    voices = results.get("original_by_voice", {})
    if not voices:
        return []
    lines = ["Per held-out voice (WER for English voices, CER for Mandarin ones):", "",
             "| voice | original | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for voice, original in voices.items():
        row = " | ".join(f"{results['pairs'][n].get('error_by_voice', {}).get(voice, float('nan')):.3f}" for n in names)
        lines.append(f"| {voice} | {original:.3f} | {row} |")
    return [*lines, ""]


def _plots(out: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = sorted(results["original"])
    names = ["original", *results["pairs"]]
    values = [[results["original"][lang] for lang in langs],
              *[[p["error"].get(lang) or 0 for lang in langs] for p in results["pairs"].values()]]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.8 / len(names)
    for k, (name, row) in enumerate(zip(names, values, strict=True)):
        ax.bar(np.arange(len(langs)) + k * width, row, width, label=name)
    ax.set_xticks(np.arange(len(langs)) + width * (len(names) - 1) / 2, [f"{x} ({'WER' if x == 'en' else 'CER'})"
                                                                          for x in langs])
    ax.set_ylabel("error rate")
    ax.legend()
    ax.set_title("Resynthesis intelligibility (held-out voices and texts)")
    fig.tight_layout()
    fig.savefig(out / "errors.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, pair in results["pairs"].items():
        ax.bar(name, pair["codes_used"], label=f"{name}: perplexity {pair['perplexity']:.0f}")
    ax.set_ylabel("codes used on held-out clips")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "codes.png", dpi=110)
    plt.close(fig)


def training_curves(run: Path, out: Path) -> Path | None:
    """One figure of the run's logs: tokenizer text loss and perplexity, decoders' mel L1, by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {p.parent.name: [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
            for p in sorted(run.glob("*/log.jsonl"))}
    if not logs:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    if "tokenizer" in logs:
        rows = logs["tokenizer"]
        left.plot([r["step"] for r in rows], [r["text_loss"] for r in rows], label="text loss")
        twin = left.twinx()
        twin.plot([r["step"] for r in rows], [r.get("perplexity", 0) for r in rows], color="tab:orange",
                  label="code perplexity")
        twin.set_ylabel("perplexity per batch")
        left.set_title("tokenizer (through the frozen Whisper decoder)")
        left.set_xlabel("step")
        left.set_ylabel("cross-entropy")
    for name in ("decoder", "decoder-kmeans"):
        if name in logs:
            right.plot([r["step"] for r in logs[name]], [r["mel_l1"] for r in logs[name]], label=name)
    right.set_title("unit decoders: mel L1 (normalised)")
    right.set_xlabel("step")
    right.legend()
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=110)
    plt.close(fig)
    return out / "training.png"
