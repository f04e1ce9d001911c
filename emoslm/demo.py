"""The main job on the embedded default, and a plain spoken chat, both built from the real backends.

Until the IEAT teacher lands, the demo is the cascade with emotion perception but without the
injected thinking: voice each example dialogue, transcribe every user turn, estimate the user's
emotion (voice + words), and answer it with the LLM, keeping the model's own replies as history, as
HumDial plays a dialogue. It prints a line per turn (gold vs detected emotion) and writes
HumDial-format results plus a summary with the measured costs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from emoslm.audio import load_audio, save_audio
from emoslm.dialogues import Dialogue, examples_dir, read_dialogues, write_dialogues
from emoslm.errors import EmoslmError
from emoslm.llm import LLM, LLMPool, Message, Sampling
from emoslm.perception.asr import ASRPool
from emoslm.perception.recognizer import EmotionRecognizer, recogniser_dir
from emoslm.perception.training import ensure_recogniser
from emoslm.progress import rich_progress
from emoslm.speech.tts import TTS, default_tts
from emoslm.textnorm import error_rate

SYSTEM = {
    "en": "You are a warm, attentive voice assistant. Answer the user in English in at most two short "
          "sentences. Acknowledge how they seem to feel.",
    "zh": "你是一个温暖、细心的语音助手。请用中文回答，最多两句话，并回应用户的感受。",
}
REPLY_SAMPLING = Sampling(max_tokens=80, temperature=0.6, top_p=0.9, repeat_penalty=1.15, seed=0, stop=["\n\n"])



@dataclass
class TurnResult:
    dialogue_id: str
    turn_id: int
    lang: str
    emotion: str
    text: str
    transcript: str
    error_rate: float
    reply: str
    asr_s: float
    llm_s: float
    tokens: int
    audio_s: float
    detected: str = ""
    voice_says: str = ""
    words_say: str = ""


def reply_to(llm: LLM, history: list[Message], lang: str) -> tuple[str, int, float]:
    """One assistant turn for the conversation so far; returns text, tokens, seconds."""
    messages = [{"role": "system", "content": SYSTEM.get(lang, SYSTEM["en"])}, *history]
    done = llm.chat(messages, REPLY_SAMPLING)
    return done.text.strip(), done.completion_tokens, done.seconds


def play_dialogue(dialogue: Dialogue, root: Path, llms: LLMPool, asr: ASRPool,
                  recognizer: EmotionRecognizer | None = None) -> list[TurnResult]:
    """Run one dialogue turn by turn; the model's own replies become the history."""
    history: list[Message] = []
    results = []
    lang = dialogue.lang
    llm = llms.for_lang(lang)
    for turn in dialogue.turns:
        audio = load_audio(root / turn.split_audio_file)
        heard = asr.for_lang(lang).transcribe(audio, language=lang)
        history.append({"role": "user", "content": heard.text})
        reply, tokens, llm_s = reply_to(llm, history, lang)
        history.append({"role": "assistant", "content": reply})
        result = TurnResult(dialogue.dialogue_id, turn.turn_id, lang, turn.emotion, turn.text, heard.text,
                            error_rate(turn.text, heard.text), reply, heard.seconds, llm_s, tokens, heard.duration)
        if recognizer is not None:
            estimate = recognizer.estimate(audio, heard.text, lang)
            result.detected, result.voice_says = estimate.tag, estimate.acoustic.tag
            result.words_say = estimate.textual.tag if estimate.textual else "-"
        results.append(result)
    return results


def run_demo(llm_spec: str, langs: list[str], limit: int, out: Path, console: Console) -> list[TurnResult]:
    from emoslm.voicing import voice_dialogues

    dialogues = [d for d in read_dialogues(examples_dir()) if d.lang in langs]
    if limit:
        dialogues = [d for lang in langs for d in [x for x in dialogues if x.lang == lang][:limit]]
    if not dialogues:
        raise EmoslmError(f"no example dialogues for languages {langs}; use --lang en,zh")
    voices = out / "voices"
    start = time.perf_counter()
    with console.status("voicing the example dialogues"):
        voiced = voice_dialogues(dialogues, voices)
    console.print(f"voiced {sum(len(d.turns) for d in voiced)} user turns in {time.perf_counter() - start:.1f} s "
                  f"→ {voices}/")
    bar, progress = rich_progress(console)
    with bar:
        if not (recogniser_dir() / "meta.json").exists():
            console.print("training the built-in emotion recogniser once "
                          "(about 9 minutes on 2 cores; cached afterwards)")
        ensure_recogniser(progress)
    recognizer = EmotionRecognizer()
    llms, asr = LLMPool(llm_spec), ASRPool()
    results: list[TurnResult] = []
    answered: list[Dialogue] = []
    for dialogue in voiced:
        console.rule(f"{dialogue.dialogue_id} ({dialogue.task or 'dialogue'}, {dialogue.lang})")
        turns = play_dialogue(dialogue, voices, llms, asr, recognizer)
        for r in turns:
            metric = "CER" if r.lang == "zh" else "WER"
            mark = "✓" if r.detected == r.emotion else "✗"
            console.print(f"[bold]turn {r.turn_id}[/] gold emotion [magenta]{r.emotion}[/] · detected "
                          f"[magenta]{r.detected}[/] {mark} (voice {r.voice_says}, words {r.words_say})  "
                          f"{metric} {r.error_rate:.0%}  ASR {r.asr_s:.2f}s  LLM {r.llm_s:.2f}s", highlight=False)
            console.print(f"  user  : {r.transcript}", highlight=False)
            console.print(f"  reply : {r.reply}", highlight=False)
        results.extend(turns)
        answered.append(replace(dialogue, turns=[replace(t, response_text=r.reply)
                                                 for t, r in zip(dialogue.turns, turns, strict=True)]))
    llms.close()
    _write_outputs(out, answered, results)
    _print_summary(console, results, out)
    return results


def _write_outputs(out: Path, answered: list[Dialogue], results: list[TurnResult]) -> None:
    for lang in sorted({d.lang for d in answered}):
        write_dialogues(out / f"responses_{lang}.jsonl", [d for d in answered if d.lang == lang])
    tmp = out / "turns.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r.__dict__, ensure_ascii=False) + "\n")
    tmp.replace(out / "turns.jsonl")


def summarise(results: list[TurnResult]) -> dict[str, dict[str, float]]:
    summary = {}
    for lang in sorted({r.lang for r in results}):
        rows = [r for r in results if r.lang == lang]
        audio = sum(r.audio_s for r in rows)
        summary[lang] = {
            "turns": len(rows),
            "error_rate": sum(r.error_rate for r in rows) / len(rows),
            "asr_rtf": sum(r.asr_s for r in rows) / audio if audio else 0.0,
            "llm_tokens_per_s": sum(r.tokens for r in rows) / max(1e-9, sum(r.llm_s for r in rows)),
            "empty_replies": sum(1 for r in rows if not r.reply),
            "emotion_accuracy": sum(r.detected == r.emotion for r in rows) / len(rows),
        }
    return summary


def _print_summary(console: Console, results: list[TurnResult], out: Path) -> None:
    summary = summarise(results)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.rule("summary")
    for lang, s in summary.items():
        metric = "CER" if lang == "zh" else "WER"
        console.print(f"{lang}: {s['turns']} turns, ASR {metric} {s['error_rate']:.1%}, ASR RTF {s['asr_rtf']:.2f}, "
                      f"LLM {s['llm_tokens_per_s']:.0f} tok/s, emotion detected {s['emotion_accuracy']:.0%} "
                      f"(chance 14%), empty replies {s['empty_replies']}")
    console.print(f"results: {out}/responses_*.jsonl (HumDial format), {out}/turns.jsonl, {out}/summary.json")


def cascade_chat(files: list[Path], llm_spec: str, asr_name: str | None, lang: str | None,
                 speak: Path | None, console: Console) -> None:
    """Transcribe each file as the next user turn and answer it; optionally speak the replies."""
    clips = [load_audio(f) for f in files]
    asr, llms = ASRPool(asr_name), LLMPool(llm_spec)
    tts: dict[str, TTS] = {}
    history: list[Message] = []
    for index, (path, audio) in enumerate(zip(files, clips, strict=True), 1):
        heard = asr.for_lang(lang).transcribe(audio, language=lang)
        turn_lang = lang or heard.language
        history.append({"role": "user", "content": heard.text})
        reply, _, _ = reply_to(llms.for_lang(turn_lang), history, turn_lang)
        history.append({"role": "assistant", "content": reply})
        console.print(f"[bold]user[/] ({path.name}): {heard.text}", highlight=False)
        console.print(f"[bold]assistant[/]: {reply}", highlight=False)
        if speak and reply:
            if turn_lang not in tts:  # one voice per language, loaded once
                tts[turn_lang] = default_tts(turn_lang)
            wav = save_audio(speak / f"reply_{index}.wav", tts[turn_lang].synthesize(reply).at())
            console.print(f"  spoken → {wav}")
    llms.close()
