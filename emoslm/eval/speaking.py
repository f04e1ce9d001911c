"""How well the unified model speaks for itself (stage 2), on held-out clips, through the serving path.

Each held-out user clip goes through ``SLMAgent.stream`` with the model's own voice (the same events a
server sends), and then:

- **intelligibility of its own words**: Whisper (tiny.en for English, base for Mandarin, as issue 34 names)
  transcribes the model's speech; WER (CER in Mandarin) against the text the model wrote in the same turn;
- **emotion in the voice**: the emotion the think named (``tag_in_think``; neutral when none) against the
  recogniser's acoustic tag of the model's voice, and of the teacher's rule-prosody TTS saying the same reply
  with the prosody that emotion asks for (``reply_prosody``) — the reference the own voice must match;
- **length**: seconds of its speech over the teacher TTS's seconds for the same text;
- **latency**, from the end of the user's speech (the agent's clock): first think delta, end of the think,
  first reply text, first audio and the whole turn (``Done``); p50 over the clips, after one warm-up turn;
- **real-time factor**: the turn's compute over the seconds of speech it produced.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from emoslm.agents.events import AudioChunk, Done, TextDelta, ThinkDelta
from emoslm.audio import load_audio
from emoslm.progress import Start, silent
from emoslm.textnorm import edit_distance, tokens

ASR_FOR = {"en": "whisper-tiny.en", "zh": "whisper-base"}


def speech_rows(final: Path, examples: list[Any], think_budget: int = 48, max_new_tokens: int = 64,
                progress: Start = silent, text: str = "auto", teacher_voice: str = "auto", lang: str = "en"
                ) -> list[dict[str, Any]]:
    """One row per held-out example: what the model wrote and said, how it was heard, when it started
    (``text``: the agent's text stream, ``SLMAgent``'s option; ``teacher_voice``: the reference TTS)."""
    from emoslm.agents.slm import SLMAgent
    from emoslm.perception.asr import FasterWhisperASR
    from emoslm.perception.recognizer import EmotionRecognizer
    from emoslm.speech.prosody import reply as reply_prosody
    from emoslm.speech.voice import voice_pool
    from emoslm.think import tag_in_think

    agent = SLMAgent(final, think_budget=think_budget, max_new_tokens=max_new_tokens, text=text)
    asr, recogniser = FasterWhisperASR(ASR_FOR[lang]), EmotionRecognizer()
    teacher = voice_pool().voice(teacher_voice, lang)
    if examples:  # warm-up: the first turn loads the voice and the G2P
        list(agent.stream([], load_audio(examples[0].audio), lang))
    rows, advance = [], progress("speaking held-out replies", len(examples))
    for example in examples:
        marks: dict[str, float] = {}
        reply = None
        for event in agent.stream([], load_audio(example.audio), lang):
            kind = {ThinkDelta: "think", TextDelta: "text", AudioChunk: "audio"}.get(type(event))
            if kind:
                marks.setdefault(f"first_{kind}", event.t)
                marks[f"last_{kind}"] = event.t
            if isinstance(event, Done):
                reply = event.reply
                marks["done"] = event.t
        audio = reply.audio if reply is not None and reply.audio is not None else np.zeros(0, np.float32)
        said = reply.text if reply else ""
        seconds = len(audio) / 16_000
        heard = asr.transcribe(audio, lang).text if seconds > 0.1 else ""
        think_tag = tag_in_think(reply.think if reply else "") or "neutral"
        reference = teacher.speak(said, reply_prosody(think_tag)) if said.strip() else np.zeros(0, np.float32)
        rows.append({"id": example.id, "emotion": example.emotion, "text": said,
                     "think": reply.think if reply else "", "think_tag": think_tag, "heard": heard,
                     "errors": edit_distance(tokens(said), tokens(heard)), "words": len(tokens(said)),
                     "speech_s": round(seconds, 3), "teacher_s": round(len(reference) / 16_000, 3),
                     "voice_tag": recogniser.acoustic_model.acoustic(audio).tag if seconds > 0.1 else None,
                     "teacher_voice_tag": recogniser.acoustic_model.acoustic(reference).tag if reference.size
                     else None,
                     "marks": {k: round(v, 4) for k, v in marks.items()},
                     "compute_s": round(reply.timings.get("slm", 0.0), 4) if reply else 0.0})
        advance()
    agent.close()
    return rows


def forced_rows(final: Path, examples: list[Any], teacher_voice: str = "auto", lang: str = "en",
                progress: Start = silent) -> list[dict[str, Any]]:
    """The branch saying held-out texts it never trained on (the teacher's think and reply, teacher-forced):
    its words and style against the text's, beside the same text's own units through the same decoder (the
    ceiling) and the teacher's rule-prosody TTS (the reference length and emotion)."""
    import torch
    from transformers import AutoTokenizer

    from emoslm.perception.asr import FasterWhisperASR
    from emoslm.perception.recognizer import EmotionRecognizer
    from emoslm.slm.generate import speak_text
    from emoslm.slm.model import UnifiedSLM
    from emoslm.speech.prosody import reply as reply_prosody
    from emoslm.speech.units.files import load_decoder
    from emoslm.speech.units.phonemes import PhonemeVocab, text_units
    from emoslm.speech.voice import voice_pool

    model, tokenizer = UnifiedSLM.from_pretrained(final).eval(), AutoTokenizer.from_pretrained(final)
    front_end = model.processor.front_end
    decoder, vocab = load_decoder(model.speech_spec.decoder), PhonemeVocab.kokoro()
    asr, recogniser = FasterWhisperASR(ASR_FOR[lang]), EmotionRecognizer()
    teacher = voice_pool().voice(teacher_voice, lang)
    rows, advance = [], progress("saying held-out texts", len(examples))
    for example in examples:
        think, _, reply = example.target.rpartition("\n</think>\n\n")
        mel = torch.from_numpy(front_end(load_audio(example.audio)))
        units = speak_text(model, tokenizer, mel, think, reply, example.history)
        style, _ = vocab.decode(units)
        audio = decoder.decode(units)
        ceiling = decoder.decode(text_units(reply, example.emotion or "neutral", vocab))
        reference = teacher.speak(reply, reply_prosody(example.emotion or "neutral"))
        heard, heard_ceiling = asr.transcribe(audio, lang).text, asr.transcribe(ceiling, lang).text
        rows.append({"id": example.id, "emotion": example.emotion, "style": style, "text": reply, "heard": heard,
                     "errors": edit_distance(tokens(reply), tokens(heard)), "words": len(tokens(reply)),
                     "ceiling_errors": edit_distance(tokens(reply), tokens(heard_ceiling)),
                     "speech_s": round(len(audio) / decoder.sample_rate, 3),
                     "teacher_s": round(len(reference) / 16_000, 3),
                     "voice_tag": recogniser.acoustic_model.acoustic(audio).tag if len(audio) > 1600 else None,
                     "teacher_voice_tag": recogniser.acoustic_model.acoustic(reference).tag})
        advance()
    return rows


def summarise_forced(rows: list[dict[str, Any]]) -> dict[str, Any]:
    words = sum(r["words"] for r in rows)
    ratios = [r["speech_s"] / r["teacher_s"] for r in rows if r["teacher_s"] > 0.1 and r["speech_s"] > 0]
    tagged = [r for r in rows if r["emotion"]]
    return {"clips": len(rows), "wer": round(sum(r["errors"] for r in rows) / words, 4) if words else None,
            "wer_text_units_ceiling": round(sum(r["ceiling_errors"] for r in rows) / words, 4) if words else None,
            "style_follows_think": round(sum(r["style"] == r["emotion"] for r in tagged) / len(tagged), 4)
            if tagged else None,
            "own_voice_reads_think_emotion": round(sum(r["voice_tag"] == r["emotion"] for r in tagged) / len(tagged),
                                                   4) if tagged else None,
            "teacher_tts_reads_think_emotion": round(sum(r["teacher_voice_tag"] == r["emotion"] for r in tagged)
                                                     / len(tagged), 4) if tagged else None,
            "length_ratio_p50": round(statistics.median(ratios), 3) if ratios else None,
            "length_within_30pct": round(sum(0.7 <= x <= 1.3 for x in ratios) / len(ratios), 4) if ratios else None}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """WER, emotion agreement (own voice and teacher TTS vs the think), length ratio, p50 latencies and RTF."""
    words = sum(r["words"] for r in rows)
    speech = sum(r["speech_s"] for r in rows)
    ratios = [r["speech_s"] / r["teacher_s"] for r in rows if r["teacher_s"] > 0.1 and r["speech_s"] > 0]

    def p50(key: str) -> float | None:
        values = [r["marks"][key] for r in rows if key in r["marks"]]
        return round(statistics.median(values), 3) if values else None

    def agree(key: str) -> float | None:
        tagged = [r for r in rows if r[key]]
        return round(sum(r[key] == r["think_tag"] for r in tagged) / len(tagged), 4) if tagged else None

    return {"clips": len(rows), "wer_speech_vs_own_text": round(sum(r["errors"] for r in rows) / words, 4)
            if words else None,
            "own_voice_reads_think_emotion": agree("voice_tag"),
            "teacher_tts_reads_think_emotion": agree("teacher_voice_tag"),
            "length_ratio_p50": round(statistics.median(ratios), 3) if ratios else None,
            "length_within_30pct": round(sum(0.7 <= x <= 1.3 for x in ratios) / len(ratios), 4) if ratios else None,
            "spoken_clips": sum(r["speech_s"] > 0.1 for r in rows),
            "p50_first_think_s": p50("first_think"), "p50_think_end_s": p50("last_think"),
            "p50_first_text_s": p50("first_text"), "p50_first_audio_s": p50("first_audio"),
            "p50_turn_s": p50("done"),
            "rtf": round(sum(r["compute_s"] for r in rows) / speech, 3) if speech else None,
            "mean_speech_s": round(speech / len(rows), 2) if rows else None}


def plot_losses(run: Path, out: Path) -> Path | None:
    """Stage 2's two losses per step (``RUN/log.jsonl``) → ``out/stage2-losses.png``."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = run / "log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    rows = [r for r in rows if "unit_loss" in r]
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(6, 3.2))
    steps = [r["step"] for r in rows]
    axis.plot(steps, [r["unit_loss"] for r in rows], label="unit loss (per unit)")
    if all("text_loss" in r for r in rows):  # a frozen text path trains the branch alone: no text loss
        axis.plot(steps, [r["text_loss"] for r in rows], label="text loss (per token)")
    config = run / "final" / "config.json"
    speech = json.loads(config.read_text()).get("speech") if config.exists() else None
    if speech:
        vocab = speech["units"] + 2
        axis.axhline(float(np.log(vocab)), color="grey", linestyle=":", label=f"uniform over {vocab:,} units")
    axis.set_xlabel("step")
    axis.set_ylabel("nats")
    axis.set_title(f"stage 2: {run}")
    axis.legend(fontsize=8)
    figure.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "stage2-losses.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def table(s: dict[str, Any]) -> list[str]:
    """The measures of ``summarise`` as a markdown table, with issue 34's targets beside them."""
    def f(value: Any) -> str:
        return "–" if value is None else str(value)

    return ["| measure | value | target |", "|---|---|---|",
            f"| WER (CER zh) of its speech vs its own text (Whisper tiny.en / base) | "
            f"{f(s['wer_speech_vs_own_text'])} | ≤ 0.10 en, ≤ 0.20 zh |",
            f"| recogniser reads the think's emotion in its own voice | {f(s['own_voice_reads_think_emotion'])} | "
            f"≥ the teacher TTS's |",
            f"| … in the teacher's rule-prosody TTS, same replies | {f(s['teacher_tts_reads_think_emotion'])} | |",
            f"| speech length / teacher TTS length, p50 (share within ±30 %) | {f(s['length_ratio_p50'])} "
            f"({f(s['length_within_30pct'])}) | 0.7-1.3 |",
            f"| p50 first think (prefill) | {f(s['p50_first_think_s'])} s | |",
            f"| p50 end of think | {f(s['p50_think_end_s'])} s | |",
            f"| p50 first reply text | {f(s['p50_first_text_s'])} s | |",
            f"| p50 first audio | {f(s['p50_first_audio_s'])} s | ≤ 1.0 s |",
            f"| p50 whole turn | {f(s['p50_turn_s'])} s | ≤ the teacher agent's |",
            f"| RTF (turn compute / speech seconds) | {f(s['rtf'])} | |",
            f"| clips with speech / mean seconds | {s['spoken_clips']} / {f(s['mean_speech_s'])} | |"]
