"""The main job on the embedded default: the example dialogues played through the teacher agent.

``run_demo`` plays the example dialogues through the teacher agent the way HumDial plays them:
voice each user turn, then turn by turn hear it (VAD, ASR), estimate the emotion (voice + words),
think about its cause with the emotion injected into an open think, answer (the agent's own
replies become the history) and speak the answer. It prints gold vs detected emotion, the think and
the reply per turn, writes reply audio, HumDial-format results and an emotion-trajectory plot, and
finally builds a small IEAT training set from ``recipes/tiny.yaml`` and prints its summary.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from emoslm.agents import Agent, Conversation, load_agent
from emoslm.audio import SAMPLE_RATE, load_audio, save_audio
from emoslm.dialogues import Dialogue, examples_dir, read_dialogues, write_dialogues
from emoslm.emotions import TAGS
from emoslm.errors import EmoslmError
from emoslm.eval.checks import CHECK_NAMES, check_dialogue, minilm_similarity
from emoslm.perception.recognizer import recogniser_dir
from emoslm.perception.training import ensure_recogniser
from emoslm.progress import rich_progress
from emoslm.textnorm import error_rate

TINY_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny.yaml"


@dataclass
class TurnResult:
    dialogue_id: str
    turn_id: int
    lang: str
    emotion: str  # gold
    detected: str
    voice_says: str
    words_say: str
    text: str  # gold transcript
    transcript: str
    error_rate: float
    think: str
    reply: str
    reply_audio: str
    audio_s: float
    timings: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # the cheap reply checks that failed (emoslm.eval.checks)


def pick_dialogues(dialogues: list[Dialogue], langs: list[str], limit: int) -> list[Dialogue]:
    """Up to ``limit`` dialogues per language, taking the tasks in turn (T1, T2, T3, T1, ...)."""
    picked = []
    for lang in langs:
        pool = [d for d in dialogues if d.lang == lang]
        by_task: dict[str, list[Dialogue]] = {}
        for d in pool:
            by_task.setdefault(d.task or "", []).append(d)
        rounds = [d for group in _zip_all(list(by_task.values())) for d in group]
        picked += rounds[:limit] if limit else pool
    return picked


def _zip_all(groups: list[list[Dialogue]]) -> list[list[Dialogue]]:
    depth = max((len(g) for g in groups), default=0)
    return [[g[i] for g in groups if i < len(g)] for i in range(depth)]


def play_dialogue(dialogue: Dialogue, root: Path, agent: Agent, replies: Path,
                  similarity: Callable[[str, str], float] | None = None) -> list[TurnResult]:
    """Run one dialogue turn by turn through a Conversation (the agent's own replies become the history),
    then run the cheap reply checks over its replies."""
    conversation = Conversation(agent, dialogue.lang)
    results = []
    for turn in dialogue.turns:
        audio = load_audio(root / turn.split_audio_file)
        reply = conversation.respond(audio)
        estimate = reply.emotion
        wav = ""
        if reply.audio is not None:
            wav = str(save_audio(replies / f"{dialogue.dialogue_id}_{turn.turn_id}.wav", reply.audio,
                                 reply.sample_rate))
        results.append(TurnResult(
            dialogue.dialogue_id, turn.turn_id, dialogue.lang, turn.emotion, estimate.tag, estimate.acoustic.tag,
            estimate.textual.tag if estimate.textual else "-", turn.text, reply.transcript,
            error_rate(turn.text, reply.transcript), reply.think, reply.text, wav, round(len(audio) / SAMPLE_RATE, 3),
            reply.timings, reply.problems))
    verdicts = check_dialogue([r.reply for r in results], dialogue.lang, [r.detected for r in results],
                              dialogue.task, similarity)
    for result, verdict in zip(results, verdicts, strict=True):
        result.checks = verdict.problems
    return results


class Phases:
    """Each phase of the demo says when it ends and how long it took; the total comes last.

    A first run does more than later ones (the recogniser, Qwen's assembly, voicing); printing each phase's
    time lets a user see where their minutes went, and lets a support question name the slow phase.
    """

    def __init__(self, console: Console) -> None:
        self.console, self.seconds, self.started = console, {}, time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 1)
        self.console.print(f"[green]✓[/] {name} [dim]({_clock(self.seconds[name])})[/]", highlight=False)

    def report(self, out: Path) -> None:
        total = round(time.perf_counter() - self.started, 1)
        parts = " · ".join(f"{name} {_clock(s)}" for name, s in self.seconds.items())
        self.console.print(f"demo finished in {_clock(total)}: {parts}", highlight=False)
        (out / "phases.json").write_text(json.dumps({"total_s": total, "phases_s": self.seconds}, indent=2))


def _clock(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60} s"


def run_demo(llm_spec: str, langs: list[str], limit: int, out: Path, console: Console,
             ieat_limit: int = 4) -> list[TurnResult]:
    from emoslm.voicing import voice_dialogues

    dialogues = pick_dialogues([d for d in read_dialogues(examples_dir()) if d.lang in langs], langs, limit)
    if not dialogues:
        raise EmoslmError(f"no example dialogues for languages {langs}; use --lang en,zh")
    phase, voices = Phases(console), out / "voices"
    with phase("voicing the example dialogues"):
        bar, progress = rich_progress(console)
        with bar:
            tick = progress("voicing user turns", sum(len(d.turns) for d in dialogues))
            voiced = voice_dialogues(dialogues, voices, on_turn=lambda d, t: tick(1))
    with phase("emotion recogniser"):
        bar, progress = rich_progress(console)
        with bar:
            if not (recogniser_dir() / "meta.json").exists():
                console.print("installing the shipped emotion recogniser (or training it once, 4-13 min on 2 cores, "
                              "when this scikit-learn cannot load it)")
            ensure_recogniser(progress)
    results: list[TurnResult] = []
    answered: list[Dialogue] = []
    with phase("loading the teacher agent"):
        similarity = minilm_similarity()  # the reply checks' near-copy test (first: it cannot leak the agent)
        agent = load_agent("teacher", llm=llm_spec)
    with agent, phase(f"playing {len(voiced)} dialogues ({sum(len(d.turns) for d in voiced)} turns)"):
        for k, dialogue in enumerate(voiced, 1):
            console.rule(f"{dialogue.dialogue_id} ({dialogue.task or 'dialogue'}, {dialogue.lang}) · "
                         f"dialogue {k}/{len(voiced)}")
            turns = play_dialogue(dialogue, voices, agent, out / "replies", similarity)
            for r in turns:
                _print_turn(console, r)
            results.extend(turns)
            answered.append(replace(dialogue, turns=[replace(t, response_text=r.reply, response_audio=r.reply_audio)
                                                     for t, r in zip(dialogue.turns, turns, strict=True)]))
    _write_outputs(out, answered, results)
    trajectory_plot(results, out / "trajectory.png")
    _print_summary(console, results, out)
    if ieat_limit:
        with phase(f"IEAT build ({ieat_limit} items)"):
            run_ieat(out / "ieat", ieat_limit, console)
    phase.report(out)
    return results


def _print_turn(console: Console, r: TurnResult) -> None:
    metric = "CER" if r.lang == "zh" else "WER"
    mark = "✓" if r.detected == r.emotion else "✗"
    latency = " ".join(f"{k} {v:.2f}s" for k, v in r.timings.items())
    console.print(f"[bold]turn {r.turn_id}[/] gold emotion [magenta]{r.emotion}[/] · detected "
                  f"[magenta]{r.detected}[/] {mark} (voice {r.voice_says}, words {r.words_say})  "
                  f"{metric} {r.error_rate:.0%}  {latency}", highlight=False)
    console.print(f"  user  : {r.transcript}", highlight=False)
    console.print(f"  [dim]think : {r.think}[/]", highlight=False)
    console.print(f"  reply : {r.reply}", highlight=False)
    if r.checks:
        console.print(f"  [yellow]checks: {', '.join(r.checks)}[/]", highlight=False)


def run_ieat(out: Path, limit: int, console: Console) -> dict[str, Any]:
    """A small IEAT build from the tiny recipe (resumes if the folder already holds one)."""
    from emoslm.ieat.recipe import load_recipe
    from emoslm.ieat.runner import build, built_from

    if not TINY_RECIPE.exists():
        console.print(f"skipping the IEAT build: {TINY_RECIPE} is not here (run the demo from the repository)")
        return {}
    console.rule(f"IEAT data: recipes/tiny.yaml, first {limit} items")
    recipe = demo_recipe(load_recipe(TINY_RECIPE))
    built = built_from(out)
    if built is not None and built.get("digest") != recipe.digest():
        console.print(f"{out} holds a build of an older tiny recipe; the demo rebuilds its own folder")
        shutil.rmtree(out)
    bar, progress = rich_progress(console)
    with bar:
        report = build(recipe, out, limit=limit, progress=progress)
    s = report.summary
    console.print(f"{s['items']} items → stage 1-1 {s['stage1_1']}, stage 1-2 {s['stage1_2']} {s['tasks']}, "
                  f"multi-turn {s['multiturn']}, errors {s['errors']}; emotions {s['emotions']} "
                  f"({report.seconds:.0f} s) → {out}/", highlight=False)
    sample = next(iter(_first_line(out / "stage1_2.jsonl")), None)
    if sample:
        console.print(f"  e.g. [{sample['task']}] user: {sample['turns'][0]['text']}", highlight=False)
        console.print(f"  [dim]think: {sample['think']}[/]", highlight=False)
        console.print(f"  reply: {sample['response']}", highlight=False)
    console.print(f"inspect it with `emoslm data inspect {out}`")
    return s


def demo_recipe(recipe: Any) -> Any:
    """The tiny recipe with a smaller spoken-instruction pool: 2 per task from 4 drafts, one voice per language.

    The pool is drafted by the LLM and spoken before the first item — a fixed cost that was half of the
    demo's IEAT phase (40 of 78 s for 4 items here, 30 clips, the Mandarin ones by Kokoro). The demo shows
    the build; `emoslm data build recipes/tiny.yaml` makes the full pool."""
    spec = recipe.data.instructions
    smaller = spec.model_copy(update={"per_task": min(spec.per_task, 2), "candidates": min(spec.candidates, 4),
                                      "voices": {lang: voices[:1] for lang, voices in spec.voices.items()}})
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"instructions": smaller})})


def _first_line(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        line = f.readline()
    return [json.loads(line)] if line.strip() else []


def trajectory_plot(results: list[TurnResult], path: Path) -> Path:
    """Gold vs detected emotion per turn, one row per dialogue: where the agent lost the user's mood."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(dict.fromkeys(r.dialogue_id for r in results))
    fig, axes = plt.subplots(len(ids), 1, figsize=(7, 1.6 * len(ids) + 0.6), squeeze=False, sharex=True)
    for ax, dialogue_id in zip(axes[:, 0], ids, strict=True):
        rows = [r for r in results if r.dialogue_id == dialogue_id]
        turns = [r.turn_id for r in rows]
        ax.plot(turns, [TAGS.index(r.emotion) for r in rows], "o-", color="#4c72b0", label="gold")
        ax.plot(turns, [TAGS.index(r.detected) for r in rows], "x--", color="#dd8452", label="detected")
        ax.set_yticks(range(len(TAGS)), TAGS, fontsize=7)
        ax.set_title(dialogue_id, fontsize=9)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("turn")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _write_outputs(out: Path, answered: list[Dialogue], results: list[TurnResult]) -> None:
    for lang in sorted({d.lang for d in answered}):
        write_dialogues(out / f"responses_{lang}.jsonl", [d for d in answered if d.lang == lang])
    tmp = out / "turns.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
    tmp.replace(out / "turns.jsonl")


def summarise(results: list[TurnResult]) -> dict[str, dict[str, Any]]:
    summary = {}
    for lang in sorted({r.lang for r in results}):
        rows = [r for r in results if r.lang == lang]
        stages = sorted({k for r in rows for k in r.timings})
        summary[lang] = {
            "turns": len(rows),
            "error_rate": sum(r.error_rate for r in rows) / len(rows),
            "emotion_accuracy": sum(r.detected == r.emotion for r in rows) / len(rows),
            "empty_replies": sum(1 for r in rows if not r.reply),
            "turns_with_problems": sum(1 for r in rows if r.problems),
            "reply_checks": {"ok": sum(not r.checks for r in rows),
                             **{name: sum(name in r.checks for r in rows) for name in CHECK_NAMES}},
            "mean_seconds": {k: round(sum(r.timings.get(k, 0.0) for r in rows) / len(rows), 3) for k in stages},
        }
    return summary


def _print_summary(console: Console, results: list[TurnResult], out: Path) -> None:
    summary = summarise(results)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.rule("summary")
    for lang, s in summary.items():
        metric = "CER" if lang == "zh" else "WER"
        latency = ", ".join(f"{k} {v:.2f}s" for k, v in s["mean_seconds"].items())
        failed = ", ".join(f"{name} {n}" for name, n in s["reply_checks"].items() if name != "ok" and n)
        console.print(f"{lang}: {s['turns']} turns, ASR {metric} {s['error_rate']:.1%}, emotion detected "
                      f"{s['emotion_accuracy']:.0%} (chance 14%), empty replies {s['empty_replies']}, "
                      f"turns failing validation {s['turns_with_problems']}, replies passing the cheap checks "
                      f"{s['reply_checks']['ok']}/{s['turns']}{f' ({failed})' if failed else ''}; mean per turn: "
                      f"{latency}", highlight=False)
    console.print(f"results: {out}/responses_*.jsonl (HumDial format), {out}/replies/*.wav, {out}/trajectory.png, "
                  f"{out}/turns.jsonl, {out}/summary.json")

