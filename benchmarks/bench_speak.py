"""Speaking speed: decoding with the speech branch against plain ``transformers.generate``, and first audio.

Measured side by side in one run on the embedded default (SmolLM2-135M, fp32 unless named), the same
prompt, the same number of new tokens (greedy, the end token ignored so every variant decodes as many);
the variants are interleaved round by round and the median of the rounds is kept:

- ``transformers.generate``: the baseline the issue names;
- the TokenLoop on the ``transformers`` forward (how emoslm decoded before the lean path);
- the TokenLoop on the lean path (``emoslm.llm.lean``), text only;
- **speaking**: the lean text stream plus one speech-branch step (top-4 layers, 4 units) per token — the
  unified model's decoding with its voice;
- ``transformers.generate`` and the two lean variants with bf16 weights (fast where the CPU has AVX512-BF16;
  tokens may differ slightly from fp32);
- the text stream in llama.cpp (the LLM exported to GGUF Q8_0, ``emoslm.slm.llama_text``), alone and with
  the speech branch fed the layer-n state llama.cpp hands over.

``--first-audio N`` speaks N Piper clips through ``SLMAgent`` with a stage-2-shaped, untrained checkpoint
(the embedded default's size, a 1,024-unit branch and a unit decoder of the CPU recipe's size), text in
PyTorch and in llama.cpp side by side: p50 seconds after the user stops to the first think, the end of
the think, the first reply text and the first audio. It needs no training run.

With ``--run`` (a stage 2 run folder) it also speaks the run's held-out clips through ``SLMAgent`` and
reports first-audio latency split by stage, WER of the speech against the model's own text, emotion
agreement and RTF (``emoslm.eval.speaking``).

Writes ``benchmarks/results/speak.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.eval.speaking import table  # noqa: E402
from emoslm.llm.base import Sampling  # noqa: E402
from emoslm.llm.decoding import TokenLoop  # noqa: E402
from emoslm.slm.generate import from_parts  # noqa: E402
from emoslm.slm.speak import SpeechSpec, UnitWriter  # noqa: E402

TEXT = "My flight got cancelled for the third time and nobody at the desk will help me at all today."
GREEDY = Sampling(temperature=0.0, repeat_penalty=1.0)


def loop_decode(model, ids: torch.Tensor, tokens: int, lean: bool, speak: bool = False) -> None:
    llm = model.llm
    loop = TokenLoop(llm, GREEDY, hidden_layer=model.speech_layer if speak else None, lean=lean)
    writer = UnitWriter(model.speech_branch, max_steps=10 ** 6) if speak else None
    loop.feed(ids[0].tolist())
    for _ in range(tokens):
        loop.feed([loop.sample()])
        if writer is not None:
            writer.step(loop.hidden)


def speaking_model() -> tuple:
    """The embedded default with a fresh 4-layer branch over 1,024 units (seeded), its tokenizer and the
    benchmark prompt's ids."""
    torch.manual_seed(0)
    model, tokenizer = from_parts()
    model.add_speech_branch(SpeechSpec(units=1024, layers=4, group=4))
    model.eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": TEXT}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    return model, tokenizer, ids


def interleaved(variants: dict, tokens: int, rounds: int) -> dict[str, float]:
    """Tokens/s of each variant: one warm-up each, then ``rounds`` rounds in turn, the median kept."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for run in variants.values():
            run()
        for _ in range(rounds):
            for name, run in variants.items():
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
    return {name: round(tokens / statistics.median(s), 2) for name, s in seconds.items()}


def generation(tokens: int, rounds: int) -> dict[str, float]:
    model, tokenizer, ids = speaking_model()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    half = copy.deepcopy(model).to(torch.bfloat16).eval()

    def hf_generate(llm) -> None:
        llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                     min_new_tokens=tokens, do_sample=False, pad_token_id=end)

    def bf16(speak: bool) -> None:
        loop_decode(half, ids, tokens, lean=True, speak=speak)

    variants = {"transformers.generate": lambda: hf_generate(model.llm),
                "TokenLoop, transformers forward": lambda: loop_decode(model, ids, tokens, lean=False),
                "TokenLoop, lean": lambda: loop_decode(model, ids, tokens, lean=True),
                "speaking: lean + speech branch": lambda: loop_decode(model, ids, tokens, lean=True, speak=True),
                "transformers.generate, bf16": lambda: hf_generate(half.llm),
                "TokenLoop, lean, bf16": lambda: bf16(False),
                "speaking: lean + speech branch, bf16": lambda: bf16(True)}
    return interleaved(variants, tokens, rounds)


def llama_speeds(tokens: int, rounds: int) -> dict[str, float]:
    """The llama.cpp rows, in a process of their own with one torch thread, as ``SLMAgent`` runs them (the
    torch rows' two-thread OpenMP team would otherwise be alive beside llama.cpp's)."""
    import subprocess

    done = subprocess.run([sys.executable, __file__, "--llama-speed", "--tokens", str(tokens), "--rounds",
                           str(rounds)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def llama_speed(tokens: int, rounds: int) -> dict[str, float]:
    from emoslm.config import configure_threads
    from emoslm.slm.llama_text import llama_text

    configure_threads(torch_threads=1)
    model, _, ids = speaking_model()
    text = llama_text(model, "q8_0", speak=True)
    variants = {"llama.cpp Q8_0 text": lambda: llama_decode(text, ids, tokens),
                "speaking: llama.cpp Q8_0 text + speech branch":
                    lambda: llama_decode(text, ids, tokens, UnitWriter(model.speech_branch, max_steps=10 ** 6))}
    try:
        return interleaved(variants, tokens, rounds)
    finally:
        text.close()


def llama_decode(text, ids: torch.Tensor, tokens: int, writer=None) -> None:
    loop = text.loop(GREEDY)
    loop.feed(ids[0].tolist())
    for _ in range(tokens):
        loop.feed([loop.sample()])
        if writer is not None:
            writer.step(loop.hidden)


def stage2_shaped(folder: Path) -> Path:
    """A checkpoint of the embedded default's shape with a voice: SmolLM2 + Whisper tiny.en, a 4-layer branch
    over 1,024 units and a unit decoder of ``recipes/units-tiny.yaml``'s size, all untrained. What it says is
    noise; what it computes, and so its latency, is what a trained model of that shape computes."""
    import numpy as np

    from emoslm.speech.mel_front_end import MelFrontEnd
    from emoslm.speech.units.decoder import DecoderConfig, UnitDecoder
    from emoslm.speech.units.tokenizer import SpeechTokenizer, TokenizerConfig

    torch.manual_seed(0)
    SpeechTokenizer(TokenizerConfig(codes=1024)).save_pretrained(folder / "tokenizer")
    config = DecoderConfig(codes=1024, default_speaker="bench", tokenizer=str(folder / "tokenizer"))
    UnitDecoder(config, speakers={"bench": np.full(80, -6.0, np.float32)}).save_pretrained(folder / "decoder")
    model, tokenizer = from_parts()
    model.add_speech_branch(SpeechSpec(units=1024, layers=4, group=4, decoder=str(folder / "decoder")))
    model.save_pretrained(folder / "final")
    tokenizer.save_pretrained(folder / "final")
    MelFrontEnd.for_mels(model.config.encoder().num_mel_bins).save_pretrained(folder / "final")
    return folder / "final"


SENTENCES = ["My flight got cancelled for the third time and nobody will help me.",
             "I finally finished the marathon I trained a whole year for.",
             "My cat has been sick all week and the vet says there is not much left to do.",
             "Wait, what? I just got an email saying I have been picked for the leadership program.",
             "I got home from work a bit late today.",
             "Why do I feel so empty when I should be proud?"]


def first_audio(clips: int) -> dict[str, dict[str, float]]:
    """p50 seconds after the end of the user's speech to the first think delta, the end of the think, the
    first reply text and the first audio, through ``SLMAgent`` with its own voice (the serving path), with
    the text stream in PyTorch and in llama.cpp (Q8_0), each in a fresh process of its own (the agent sets
    the process's torch threads), the same clips (Piper's voice, 48 think tokens)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        final = stage2_shaped(Path(tmp))
        out = {}
        for name, text in (("PyTorch fp32 text", "torch"), ("llama.cpp Q8_0 text", "llama-cpp")):
            done = subprocess.run([sys.executable, __file__, "--agent-latency", str(final), "--text", text,
                                   "--first-audio", str(clips)], capture_output=True, text=True, check=True)
            out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def agent_latency(final: Path, text: str, clips: int) -> dict[str, float]:
    """One agent's p50 marks over ``clips`` Piper clips (after one warm-up turn)."""
    from emoslm.agents.events import AudioChunk, Done, TextDelta, ThinkDelta
    from emoslm.agents.slm import SLMAgent
    from emoslm.speech.voice import voice_pool

    piper = voice_pool().tts("piper", "en")
    audio = [piper.synthesize(SENTENCES[i % len(SENTENCES)]).at(16_000) for i in range(clips)]
    agent = SLMAgent(final, think_budget=48, max_new_tokens=64, text=text)
    rows = []
    for index, clip in enumerate([audio[0], *audio]):  # the first one warms every model up
        seen: dict[str, float] = {}
        for event in agent.stream([], clip, "en"):
            kind = {ThinkDelta: "think", TextDelta: "text", AudioChunk: "audio"}.get(type(event))
            if kind:
                seen.setdefault(f"first {kind}", event.t)
            if kind == "think":
                seen["end of think"] = event.t
            if isinstance(event, Done) and event.reply.audio is not None:  # untrained: speech to the step cap
                seen["rtf"] = event.reply.timings["slm"] / (len(event.reply.audio) / event.reply.sample_rate)
        if index:
            rows.append(seen)
    agent.close()
    keys = ("first think", "end of think", "first text", "first audio", "rtf")
    return {k: round(statistics.median(r[k] for r in rows if k in r), 3) for k in keys}


def speaking(run: Path, clips: int) -> dict:
    """The run's held-out clips (unheard voice, unseen texts; each clip once) through ``SLMAgent`` with its own
    voice, then the teacher agent on the same clips for the whole-turn comparison."""
    from emoslm.eval.speaking import forced_rows, speech_rows, summarise, summarise_forced
    from emoslm.speech.units.phonemes import parse_spec
    from emoslm.train.data import load_examples

    info = json.loads((run / "run.json").read_text())
    held = set(info["held_out_keys"])
    phonemes = bool(parse_spec(info["config"].get("unit_decoder") or ""))
    seen, examples, taught = set(), [], []
    for example in load_examples(Path(info["config"]["data"]), "2", reply_audio=not phonemes):
        if example.audio is None:  # text-only samples teach words; only clips can be heard
            continue
        if example.key in held and example.key not in seen:
            seen.add(example.key)
            examples.append(example)
        if example.key in held and example.id.endswith("#teacher"):
            taught.append(example)
    examples = examples[:clips]
    forced = {}
    if phonemes:  # the branch saying held-out texts (the teacher's), apart from what the text model writes
        said = forced_rows(run / "final", taught[:clips])
        keys = ("emotion", "style", "text", "heard", "speech_s", "teacher_s")
        forced = {**summarise_forced(said), "samples": [{k: r[k] for k in keys} for r in said[:6]]}
    rows = speech_rows(run / "final", examples)
    teacher = teacher_turns(examples)
    return {**summarise(rows), "teacher_agent_p50_turn_s": teacher, "clip_ids": [e.id for e in examples],
            "forced": forced,
            "samples": [{k: r[k] for k in ("emotion", "think_tag", "text", "heard", "voice_tag", "teacher_voice_tag",
                                           "speech_s", "teacher_s", "marks")} for r in rows[:6]]}


def teacher_turns(examples: list) -> float | None:
    """p50 seconds from the end of the user's speech to the teacher agent's ``Done`` (ASR, think, reply, voice),
    on the same clips, after one warm-up turn."""
    from emoslm.agents import load_agent
    from emoslm.agents.events import Done
    from emoslm.audio import load_audio

    agent = load_agent("teacher")
    if examples:
        list(agent.stream([], load_audio(examples[0].audio), "en"))
    turns = [next(e.t for e in agent.stream([], load_audio(x.audio), "en") if isinstance(e, Done)) for x in examples]
    agent.close()
    return round(statistics.median(turns), 3) if turns else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run", type=Path, default=Path("runs/train-learn-en-200/2"),
                        help="a stage 2 run folder (skipped when it has no final/)")
    parser.add_argument("--clips", type=int, default=20, help="held-out clips to speak (0: speed only)")
    parser.add_argument("--first-audio", type=int, default=6,
                        help="Piper clips through a stage-2-shaped untrained model, torch vs llama.cpp text (0: skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--agent-latency", type=Path, help=argparse.SUPPRESS)  # one agent, in its own process
    parser.add_argument("--text", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--llama-speed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.llama_speed:
        print(json.dumps(llama_speed(args.tokens, args.rounds)))
        return
    if args.agent_latency:
        print(json.dumps(agent_latency(args.agent_latency, args.text, args.first_audio)))
        return
    speeds = {**generation(args.tokens, args.rounds), **llama_speeds(args.tokens, args.rounds)}
    base = speeds["transformers.generate"]
    results = {"tokens": args.tokens, "rounds": args.rounds, "threads": torch.get_num_threads(),
               "tokens_per_s": speeds, "ratio_over_generate": {k: round(v / base, 3) for k, v in speeds.items()}}
    if args.first_audio:
        results["first_audio"] = first_audio(args.first_audio)
    if args.clips and (args.run / "final" / "config.json").exists():
        results["speaking"] = {"run": str(args.run), **speaking(args.run, args.clips)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speak.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    lines = [f"# Speaking speed (SmolLM2-135M, {args.tokens} new tokens, median of {args.rounds} interleaved "
             f"rounds, {results['threads']} CPU threads)", "", "| decoding | tokens/s | × transformers.generate |",
             "|---|---|---|"]
    lines += [f"| {k} | {v} | {results['ratio_over_generate'][k]}× |" for k, v in speeds.items()]
    if "first_audio" in results:
        keys = ("first think", "end of think", "first text", "first audio", "rtf")
        lines += ["", f"## First audio, stage-2-shaped model (untrained), p50 of {args.first_audio} Piper clips "
                  "through SLMAgent, 48 think tokens, seconds after the user stops; RTF = the turn's compute / "
                  "its seconds of speech (untrained, every turn speaks to the 400-step cap: 32 s)", "",
                  "| text stream | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        lines += [f"| {name} | " + " | ".join(str(row[k]) for k in keys) + " |"
                  for name, row in results["first_audio"].items()]
    if "speaking" in results:
        s = results["speaking"]
        lines += ["", f"## Speaking for itself: {s['run']}, {s['clips']} held-out clips through SLMAgent "
                  f"(teacher agent's whole turn on the same clips: {s['teacher_agent_p50_turn_s']} s p50)", "",
                  *table(s)]
        if s.get("forced"):
            f = s["forced"]
            lines += ["", f"### The branch saying held-out texts ({f['clips']} teacher replies it never trained on, "
                      "text teacher-forced)", "", "| measure | value |", "|---|---|",
                      f"| WER of its speech vs the text (Whisper tiny.en) | {f['wer']} |",
                      f"| … the text's own units through the same decoder (ceiling) | {f['wer_text_units_ceiling']} |",
                      f"| its style code = the think's emotion | {f['style_follows_think']} |",
                      f"| recogniser reads the think's emotion: own voice / teacher TTS | "
                      f"{f['own_voice_reads_think_emotion']} / {f['teacher_tts_reads_think_emotion']} |",
                      f"| length / teacher TTS, p50 (share within ±30 %) | {f['length_ratio_p50']} "
                      f"({f['length_within_30pct']}) |"]
            lines += [f"- [{x['emotion']} → style {x['style']}] {x['text'][:120]!r} → heard {x['heard'][:120]!r}"
                      for x in f["samples"]]
        lines += ["", "What it wrote, and what Whisper heard in its own voice:", ""]
        lines += [f"- [{x['think_tag']}] said: {x['text'][:140]!r} → heard: {x['heard'][:140]!r} "
                  f"({x['speech_s']} s; teacher TTS {x['teacher_s']} s)" for x in s["samples"]]
    (args.out / "speak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
