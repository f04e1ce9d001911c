"""How well the unified model speaks for itself (stage 2), on held-out clips, through the serving path.

Each held-out user clip goes through ``SLMAgent.stream`` with the model's own voice (the same events a
server sends), and then:

- **intelligibility of its own words**: Whisper base transcribes the model's speech; WER against the text
  the model wrote in the same turn (the branch is meant to say exactly that);
- **emotion in the voice**: the recogniser's acoustic tag on the model's speech against its tag on the
  teacher's spoken reply for the same clip (rendered with the prosody the teacher chose for the user's
  emotion) — do both voices carry the same emotion?;
- **latency**, from the end of the user's speech (the agent's clock): first think delta (prefill: encoder,
  adapter and prompt), end of the think, first reply text, first audio; p50 over the clips;
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


def speech_rows(final: Path, examples: list[Any], think_budget: int = 48, max_new_tokens: int = 64,
                progress: Start = silent, text: str = "auto") -> list[dict[str, Any]]:
    """One row per held-out example: what the model wrote and said, how it was heard, when it started
    (``text``: the agent's text stream, ``SLMAgent``'s option)."""
    from emoslm.agents.slm import SLMAgent
    from emoslm.perception.asr import FasterWhisperASR
    from emoslm.perception.recognizer import EmotionRecognizer

    agent = SLMAgent(final, think_budget=think_budget, max_new_tokens=max_new_tokens, text=text)
    asr, recogniser = FasterWhisperASR("whisper-base"), EmotionRecognizer()
    rows, advance = [], progress("speaking held-out replies", len(examples))
    for example in examples:
        marks: dict[str, float] = {}
        reply = None
        for event in agent.stream([], load_audio(example.audio), "en"):
            kind = {ThinkDelta: "think", TextDelta: "text", AudioChunk: "audio"}.get(type(event))
            if kind:
                marks.setdefault(f"first_{kind}", event.t)
                marks[f"last_{kind}"] = event.t
            if isinstance(event, Done):
                reply = event.reply
        audio = reply.audio if reply is not None and reply.audio is not None else np.zeros(0, np.float32)
        seconds = len(audio) / 16_000
        heard = asr.transcribe(audio, "en").text if seconds > 0.1 else ""
        teacher = load_audio(example.reply_audio) if example.reply_audio else None
        rows.append({"id": example.id, "emotion": example.emotion, "text": reply.text if reply else "",
                     "think": reply.think if reply else "", "heard": heard,
                     "errors": edit_distance(tokens(reply.text if reply else ""), tokens(heard)),
                     "words": len(tokens(reply.text if reply else "")), "speech_s": round(seconds, 3),
                     "voice_tag": recogniser.acoustic_model.acoustic(audio).tag if seconds > 0.1 else None,
                     "teacher_voice_tag": recogniser.acoustic_model.acoustic(teacher).tag if teacher is not None
                     else None,
                     "marks": {k: round(v, 4) for k, v in marks.items()},
                     "compute_s": round(reply.timings.get("slm", 0.0), 4) if reply else 0.0})
        advance()
    agent.close()
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """WER, emotion agreement, p50 latencies and RTF over the rows."""
    words = sum(r["words"] for r in rows)
    tagged = [r for r in rows if r["voice_tag"] and r["teacher_voice_tag"]]
    speech = sum(r["speech_s"] for r in rows)

    def p50(key: str) -> float | None:
        values = [r["marks"][key] for r in rows if key in r["marks"]]
        return round(statistics.median(values), 3) if values else None

    return {"clips": len(rows), "wer_speech_vs_own_text": round(sum(r["errors"] for r in rows) / words, 4)
            if words else None,
            "emotion_agreement_with_teacher_voice": round(sum(r["voice_tag"] == r["teacher_voice_tag"]
                                                              for r in tagged) / len(tagged), 4) if tagged else None,
            "spoken_clips": sum(r["speech_s"] > 0.1 for r in rows),
            "p50_first_think_s": p50("first_think"), "p50_think_end_s": p50("last_think"),
            "p50_first_text_s": p50("first_text"), "p50_first_audio_s": p50("first_audio"),
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
