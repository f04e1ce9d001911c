"""The learning run's report (``reports/learn-en/report.md``): replies, hearing, the probes and the minutes each
step took, with the issue's targets beside the measurements, and a plot of the replies per model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TARGETS = {"reply_relevance": 0.30, "distinct_2": 0.5, "reply_repeats_think": 0.05}


def _f(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def replies_table(replies: dict[str, Any]) -> list[str]:
    lines = [f"{replies['clips']} held-out clips ({replies['texts']} texts the model never trained on, spoken by "
             f"{', '.join(replies['voices'])}: voices it never heard). Think, then reply, greedy, as `generate`.", "",
             "| model | relevance to the teacher's reply (≥ 0.30) | relevance to another clip's teacher reply | "
             "distinct-2 (≥ 0.5) | distinct-2 per voice | replies repeating the think (≤ 0.05) | "
             "replies saying \"the user\" | think = acted emotion |", "|---|---|---|---|---|---|---|---|"]
    for name, m in replies["models"].items():
        lines.append(f"| {name} | **{_f(m['reply_relevance'])}** | {_f(m['relevance_other_clip'])} | "
                     f"{_f(m['distinct_2'])} | {_f(m.get('distinct_2_per_voice'))} | "
                     f"{_f(m['reply_repeats_think'])} | {_f(m['third_person'])} | {_f(m['think_vs_acted'])} |")
    teacher = next(iter(replies["models"].values()), {}).get("teacher_distinct_2_per_voice")
    if teacher is not None:
        lines += ["", f"Distinct-2 against what the set allows: each held-out text is said by every held-out voice, "
                      f"so replies to the same words repeat by design over the whole set; per voice (the mean over "
                      f"the voices of distinct-2 within one voice's replies, all to different words) the teacher's "
                      f"own replies score {_f(teacher)}."]
    return lines


def samples(replies: dict[str, Any], model: str = "stage 1-2") -> list[str]:
    rows = replies["models"].get(model, {}).get("samples", [])
    out = [f"Replies of {model} (unheard voices; the words are what the voice said, the model only heard them):", ""]
    for s in rows:
        out += [f"- [{s['acted']}, {s['voice']}] \"{s['words']}\"", f"  - model: \"{s['reply']}\"",
                f"  - teacher: \"{s['teacher']}\""]
    return out


def curve_table(run: Path) -> list[str]:
    path = run / "listening.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = ["| epoch | step | relevance | distinct-2 | repeats think | think = acted | collapsed |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['epoch']} | {r['step']} | {_f(r.get('reply_relevance'))} | {_f(r.get('distinct_2'))} | "
              f"{_f(r.get('reply_repeats_think'))} | {_f(r.get('think_vs_acted'))} | "
              f"{'; '.join(r.get('collapsed') or []) or 'no'} |" for r in rows]
    return lines


def hearing_table(hearing: dict[str, Any]) -> list[str]:
    lines = ["| set (unheard voices) | clips | think | recogniser fused | recogniser acoustic | head on frozen "
             "encoder | commonest |", "|---|---|---|---|---|---|---|"]
    for s in hearing["sets"].values():
        lines.append(f"| {s['title']} | {s['clips']} | **{_f(s['think'])}** | {_f(s['recogniser_fused'])} | "
                     f"{_f(s['recogniser_acoustic'])} | {_f(s['encoder_head'])} | {_f(s['commonest'])} |")
    return lines


def plot_replies(replies: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(replies["models"])
    series = [("reply_relevance", "relevance (teacher's reply)"),
              ("relevance_other_clip", "relevance (another clip's)"),
              ("distinct_2", "distinct-2"), ("reply_repeats_think", "repeat the think"),
              ("third_person", "say \"the user\"")]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        ax.bar([n + i * width for n in range(len(names))], [replies["models"][m].get(key) or 0.0 for m in names],
               width, label=label)
    ax.axhline(TARGETS["reply_relevance"], linestyle=":", color="grey", label="relevance target 0.30")
    ax.set_xticks([n + 0.4 - width / 2 for n in range(len(names))], names, fontsize=8)
    ax.set(ylim=(0, 1), title=f"Replies on {replies['clips']} held-out clips (unheard voices, unseen texts)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(runs: Path, out: Path) -> Path:
    """``out/report.md`` and ``out/replies.png`` from what the steps wrote."""
    from emoslm.eval.learning import timings

    replies = json.loads((out / "replies.json").read_text())
    hearing = json.loads((out / "hearing" / "hearing-think.json").read_text())
    spent = timings(runs)
    plot_replies(replies, out / "replies.png")
    from emoslm.train.listening import plot_curve

    plot_curve(runs / "1-2", out)
    minutes = ", ".join(f"{k} {v / 60:.1f}" for k, v in spent.items())
    lines = ["# The learning run (`make learn`, recipes/learn-en.yaml)", "",
             f"Minutes per step: {minutes}; **total {sum(spent.values()) / 60:.1f} min** (target ≤ 90; "
             f"steps run in one pass or resumed, each timed once: `{os.path.relpath(runs)}/timings.jsonl`).", "",
             "## Replies (issue 33 §4)", "", *replies_table(replies), "", "![replies](replies.png)", "",
             "Learning curve of stage 1-2 on its first held-out clips (the collapse guard reads it; the best check "
             "by relevance is what final/ holds):", "", *curve_table(runs / "1-2"), "",
             *samples(replies), "",
             "## Hearing (§3): the think's emotion where the words cannot tell", "", *hearing_table(hearing), "",
             "![hearing](hearing/hearing-think.png) — confusions and samples: `hearing/hearing-think.md`.", ""]
    probes = out / "probes-build.md"
    if probes.exists():
        lines += ["## Where the emotion is along the listening path (linear probes)", "",
                  probes.read_text().split("\n", 2)[-1]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"
