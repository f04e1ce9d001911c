"""`report.md` and `report.html`: the scores beside the paper's, the objective metrics, three plots.

The paper's figures were judged by Qwen3-Omni-30B-A3B (and human raters for T3 D2/D3); any other judge
makes the comparison indicative only, and the table says so.
"""

from __future__ import annotations

import base64
import html
import statistics
from pathlib import Path
from typing import Any

PAPER = {  # arXiv 2601.04960: dev set (judge: Qwen3-Omni) and the challenge test final
    "T1": {"zh": 4.98, "en": 4.87}, "T2": {"zh": 4.98, "en": 4.83}, "T3": {"zh": 4.53, "en": 4.36},
}
PAPER_TEST_FINAL = 4.27
PAPER_JUDGE = "Qwen3-Omni-30B-A3B-Instruct"


def _task_value(task: dict[str, Any]) -> float | None:
    if task["task"] == "T3":
        values = list(task["dimensions"].values())
        return round(statistics.mean(values), 3) if values else None
    return task["overall"]


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def tables(summary: dict[str, Any], metrics: list[dict[str, Any]]) -> list[str]:
    comparable = bool(summary["judge"]) and PAPER_JUDGE.lower() in summary["judge"].lower()
    note = "" if comparable else f" (**not comparable**: judge {summary['judge'] or 'none'}, paper {PAPER_JUDGE})"
    lines = [f"## Scores beside the paper{note}", "", "| task | lang | emoslm | paper (dev) |", "|---|---|---|---|"]
    for task in summary["tasks"]:
        paper = PAPER.get(task["task"], {}).get(task["lang"])
        lines.append(f"| {task['task']} | {task['lang']} | {_fmt(_task_value(task))} | {_fmt(paper)} |")
    board = summary["scoreboard"]
    lines += ["", "| final | emoslm | paper (test) |", "|---|---|---|"]
    for lang, row in board["languages"].items():
        missing = f" (missing {', '.join(row['missing'])})" if row["missing"] else ""
        lines.append(f"| {lang} | {_fmt(row['final'])}{missing} | |")
    lines.append(f"| zh+en | {_fmt(board['final'])} | {PAPER_TEST_FINAL} |")
    if board["stand_ins"]:
        lines += ["", "Stand-ins (no human raters here; the judge cannot hear): " + ", ".join(board["stand_ins"])
                  + ". See `emoslm/eval/scoring.py` for how they are measured."]
    lines += ["", "## Per dimension", "", "| task | lang | dimension | mean | judge spread | source |",
              "|---|---|---|---|---|---|"]
    for task in summary["tasks"]:
        for dim, value in task["dimensions"].items():
            lines.append(f"| {task['task']} | {task['lang']} | {dim} | {_fmt(value)} | "
                         f"{_fmt(task['spreads'].get(dim))} | {task['sources'].get(dim, '')} |")
        if task["judge_failures"]:
            lines.append(f"| {task['task']} | {task['lang']} | judge failures | {task['judge_failures']} of "
                         f"{task['judged']} | | excluded from the means |")
    lines += ["", "## Objective metrics (no judge)", "", *objective_lines(metrics)]
    return lines


def objective_lines(metrics: list[dict[str, Any]]) -> list[str]:
    lines = ["| lang | T1 trajectory exact | language match | think leaked | reply tokens (mean) | "
             "T3 speech error rate | turn seconds (mean) | first audio (mean) |", "|---|---|---|---|---|---|---|---|"]
    for lang in sorted({m["lang"] for m in metrics}):
        rows = [m for m in metrics if m["lang"] == lang]
        t1 = [m["trajectory"]["exact"] for m in rows if "trajectory" in m]
        speech = [m["speech_error_rate"] for m in rows if "speech_error_rate" in m]
        latency = [x for m in rows for x in m["latency"]]
        tokens = [n for m in rows for n in m["reply_tokens"]]
        first = [x["first_audio_s"] for x in latency if x["first_audio_s"] is not None]
        lines.append(" | ".join([
            f"| {lang}", _share(t1), _share([m.get("language_match", True) for m in rows]),
            str(sum(m["think_leaked"] for m in rows)), _mean(tokens), _mean(speech),
            _mean([x["total_s"] for x in latency]), _mean(first)]) + " |")
    return lines


def _share(values: list[bool]) -> str:
    return f"{sum(values)}/{len(values)}" if values else "–"


def _mean(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f}" if values else "–"


def plots(out: Path, summary: dict[str, Any], metrics: list[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    langs = sorted({t["lang"] for t in summary["tasks"]})
    tasks = ["T1", "T2", "T3"]
    for k, lang in enumerate(langs):
        values = [next((_task_value(t) or 0 for t in summary["tasks"] if t["task"] == task and t["lang"] == lang), 0)
                  for task in tasks]
        ax.bar([i + 0.38 * k for i in range(3)], values, width=0.36, label=lang)
    ax.set_xticks([i + 0.19 * (len(langs) - 1) for i in range(3)], tasks)
    ax.set_ylim(0, 5.2)
    ax.set_ylabel("judge score (1–5)")
    ax.set_title("Scores per task and language")
    ax.legend()
    paths.append(_save(fig, out / "scores.png"))

    fig, ax = plt.subplots(figsize=(5, 3))
    shares = []
    for lang in langs:
        t1 = [m["trajectory"]["exact"] for m in metrics if m["lang"] == lang and "trajectory" in m]
        shares.append(sum(t1) / len(t1) if t1 else 0.0)
    ax.bar(langs, shares, color="#55a868")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of T1 dialogues")
    ax.set_title("Trajectory exactness (all gold tags, in order, nothing else)")
    paths.append(_save(fig, out / "trajectory_exactness.png"))

    fig, ax = plt.subplots(figsize=(6, 3))
    totals = [x["total_s"] for m in metrics for x in m["latency"]]
    firsts = [x["first_audio_s"] for m in metrics for x in m["latency"] if x["first_audio_s"] is not None]
    if totals:
        ax.hist([totals, firsts], bins=15, label=["whole turn", "first audio"])
        ax.legend()
    ax.set_xlabel("seconds")
    ax.set_ylabel("turns")
    ax.set_title("Latency per turn")
    paths.append(_save(fig, out / "latency.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out: Path, summary: dict[str, Any], metrics: list[dict[str, Any]]) -> tuple[Path, Path]:
    pictures = plots(out, summary, metrics)
    head = [f"# HumDial Track 1 evaluation: {summary['dialogues']} dialogues", "",
            f"Judge: {summary['judge'] or 'none'} ({summary['judge_samples']} sample(s) per dialogue, "
            f"{'hears' if summary['judge_hears_audio'] else 'cannot hear'} audio).", ""]
    body = tables(summary, metrics)
    md = out / "report.md"
    md.write_text("\n".join(head + body + [""] + [f"![{p.stem}]({p.name})" for p in pictures]) + "\n",
                  encoding="utf-8")
    page = out / "report.html"
    page.write_text(_html(head + body, pictures), encoding="utf-8")
    return md, page


def _html(lines: list[str], pictures: list[Path]) -> str:
    """A self-contained page: the markdown tables as HTML tables, the plots inlined."""
    parts, table = [], []
    for line in lines + [""]:
        if line.startswith("|"):
            cells = [html.escape(c.strip()).replace("**", "") for c in line.strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if table:
            parts.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            parts.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.strip():
            parts.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    for path in pictures:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f'<img alt="{path.stem}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:.25em .6em}img{max-width:100%}")
    return f"<!doctype html><meta charset=utf-8><title>emoslm HumDial report</title><style>{style}</style>" + \
        "".join(parts)
