"""T1 (emotional trajectory) through the teacher agent: with and without the perceived path, side by side.

The eight T1 example dialogues (four English, four Mandarin) are voiced with the default voices and played
turn by turn through the teacher agent twice: as before (``trajectory=False``: the last turn's think holds
only that turn's emotion) and with the perceived emotion of every user turn injected into the think and
the reply's first sentence when the user asks how their feelings changed. Two measures per reply:

- **exact vs gold**: the reply names the gold tags in order, the transitional neutral included, and no
  other emotion word (``emoslm.eval.metrics.trajectory_exact``);
- **faithful**: the same test against the tags the agent *perceived* — what the agent can be held to
  when its recogniser mishears a turn.

Writes ``benchmarks/results/trajectory.{json,md}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.agents import Conversation, load_agent  # noqa: E402
from emoslm.audio import load_audio  # noqa: E402
from emoslm.config import settings  # noqa: E402
from emoslm.dialogues import examples_dir, read_dialogues  # noqa: E402
from emoslm.eval.metrics import trajectory_exact  # noqa: E402
from emoslm.think import emotion_path  # noqa: E402
from emoslm.voicing import voice_dialogues  # noqa: E402


def play(agent, dialogue, root: Path) -> dict:
    conversation = Conversation(agent, dialogue.lang)
    reply = None
    for turn in dialogue.turns:
        reply = conversation.respond(load_audio(root / turn.split_audio_file))
    perceived = conversation.user_emotions
    gold = [t.emotion for t in dialogue.turns]
    return {"id": dialogue.dialogue_id, "lang": dialogue.lang, "gold": emotion_path(gold),
            "perceived": emotion_path(perceived), "think": reply.think, "reply": reply.text,
            "exact": trajectory_exact(reply.text, gold, dialogue.lang)["exact"],
            "faithful": trajectory_exact(reply.text, perceived, dialogue.lang)["exact"]}


def main() -> None:
    dialogues = [d for d in read_dialogues(examples_dir()) if d.task == "T1"]
    root = settings().home / "bench" / "trajectory-voices"
    voiced = voice_dialogues(dialogues, root)
    rows: dict[str, list[dict]] = {}
    with load_agent("teacher", speak=False) as agent:
        for mode in ("before", "after"):
            agent.trajectory = mode == "after"
            rows[mode] = [play(agent, d, root) for d in voiced]
            for r in rows[mode]:
                print(mode, r["id"], r["gold"], r["perceived"], r["exact"], r["faithful"], r["reply"][:100], flush=True)
    summary = {mode: {"exact": sum(r["exact"] for r in rs), "faithful": sum(r["faithful"] for r in rs),
                      "dialogues": len(rs)} for mode, rs in rows.items()}
    out = ROOT / "results"
    (out / "trajectory.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, ensure_ascii=False))
    lines = ["# T1 trajectory: the perceived path in the think (teacher agent, embedded default)", "",
             "`python benchmarks/bench_trajectory.py`; 8 T1 example dialogues (4 en, 4 zh).", "",
             "| teacher | exact vs gold | faithful to what it perceived |", "|---|---|---|"]
    for mode, s in summary.items():
        lines.append(f"| {mode} | {s['exact']}/{s['dialogues']} | {s['faithful']}/{s['dialogues']} |")
    lines += ["", "| dialogue | gold path | perceived path | before: reply | after: reply |", "|---|---|---|---|---|"]
    for b, a in zip(rows["before"], rows["after"], strict=True):
        lines.append(f"| {a['id']} | {' → '.join(a['gold'])} | {' → '.join(a['perceived'])} | "
                     f"{b['reply'][:140]} | {a['reply'][:140]} |")
    (out / "trajectory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))


if __name__ == "__main__":
    main()
