"""Does the unified model hear the emotion? Its think's tag on held-out clips, against three references.

IEAT labels each clip with the recogniser's tag, so "the think names the label" measures how well the
model learned to agree with the recogniser. For clips emoslm voiced itself the acted emotion is known
(``provenance.acted_emotion``) and is the fairer gold: the think and the recogniser are both scored
against it on the same clips, beside chance and always-the-commonest-label. The reply is checked for
copying the think (a model that learned the format and not the task says its notes aloud).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emoslm.audio import load_audio
from emoslm.emotions import TAGS
from emoslm.think import tag_in_think
from emoslm.train.data import Example, provenance_by_key


def acted_by_key(build: Path) -> dict[str, str]:
    """The emotion each source item's clip was acted with (text sources emoslm voiced), by source item."""
    return provenance_by_key(build, "acted_emotion")


def repeats_think(think: str, reply: str, words: int = 6) -> bool:
    """True when the reply says a run of ``words`` consecutive words of the think (its notes read aloud)."""
    said = " ".join(re.findall(r"\w+", reply.lower()))
    tokens = re.findall(r"\w+", think.lower())
    return any(" ".join(tokens[i:i + words]) in said for i in range(max(0, len(tokens) - words + 1)))


def distinct_2(replies: list[str]) -> float:
    """Distinct bigrams over all bigrams of the replies together: 1.0 when no two-word phrase repeats; a model
    whose replies collapsed into one sentence (or a run of "9"s) scores near 0."""
    bigrams = [tuple(words[i:i + 2]) for reply in replies for words in [re.findall(r"\w+", reply.lower())]
               for i in range(len(words) - 1)]
    return round(len(set(bigrams)) / len(bigrams), 4) if bigrams else 0.0


def relevance(replies: list[str], references: list[str], embedder: Any) -> float | None:
    """Mean MiniLM cosine between each reply and the teacher's reply written from the transcript (content: did
    the model understand what was said?). None when no clip has a reference."""
    pairs = [(reply or " ", ref) for reply, ref in zip(replies, references, strict=True) if ref]
    if not pairs:
        return None
    a = embedder.encode([p[0] for p in pairs], normalize_embeddings=True)
    b = embedder.encode([p[1] for p in pairs], normalize_embeddings=True)
    return round(float((a * b).sum(1).mean()), 4)


def listen(model: Any, tokenizer: Any, examples: list[Example], acted: dict[str, str],
           think_budget: int = 48, max_new_tokens: int = 64, batch_size: int = 16, embedder: Any = None
           ) -> dict[str, Any]:
    """Generate think + reply for each held-out clip (from its audio; greedy, a batch of clips at a time: the
    same text ``generate`` writes) and score the think's tag; with ``embedder`` (MiniLM) the replies' relevance
    to the teacher's too. Distinct-2 and the share of replies repeating the think are always measured: together
    they say whether the replies are still replies (the collapse guard reads them)."""
    from emoslm.slm.generate import generate_batch, heard_prosody

    front_end = model.processor.front_end
    was_training = model.training
    model.eval()
    audio = [load_audio(e.audio) for e in examples]
    outs = generate_batch(model, tokenizer, [front_end.tensor(a) for a in audio], [e.history for e in examples],
                          think_budget, max_new_tokens, batch_size, prosody=[heard_prosody(model, a) for a in audio])
    model.train(was_training)
    rows = [{"id": example.id, "label": example.emotion, "acted": acted.get(example.key, ""),
             "think_tag": tag_in_think(out.think) or "none", "voice": example.voice,
             "think": out.think, "reply": out.reply, "repeats": repeats_think(out.think, out.reply)}
            for example, out in zip(examples, outs, strict=True)]
    summary = summarise(rows)
    summary["reply_relevance"] = relevance([r["reply"] for r in rows], [e.teacher_reply for e in examples],
                                           embedder) if embedder is not None else None
    return summary


@dataclass
class CollapseGuard:
    """Says when a stage's replies stopped being replies, so training stops and keeps the last good checkpoint.

    The issue-13 learn-en run (reports/learn-en-ieat) went from varied replies to a run of "9"s within an epoch of
    stage 1-2, and its held-out loss kept falling: the loss cannot see it, the replies can. A check counts as
    collapsed when the replies' distinct-2 falls under ``min_distinct_2``, more than ``max_repeats_think`` of them
    read the think aloud, or their relevance falls under ``min_relevance_share`` of the best seen so far in this
    run."""

    min_distinct_2: float = 0.3
    max_repeats_think: float = 0.2
    min_relevance_share: float = 0.5
    best_relevance: float | None = None

    def reasons(self, result: dict[str, Any]) -> list[str]:
        """Why ``result`` (a ``listen`` summary) is collapsed; empty when the replies are still replies."""
        why = []
        if result.get("distinct_2") is not None and result["distinct_2"] < self.min_distinct_2:
            why.append(f"distinct-2 {result['distinct_2']} < {self.min_distinct_2}")
        if (result.get("reply_repeats_think") or 0.0) > self.max_repeats_think:
            why.append(f"{result['reply_repeats_think']} of the replies repeat the think (> {self.max_repeats_think})")
        relevance = result.get("reply_relevance")
        if relevance is not None and self.best_relevance is not None \
                and relevance < self.min_relevance_share * self.best_relevance:
            why.append(f"relevance {relevance} < {self.min_relevance_share} x the best {self.best_relevance}")
        if not why and relevance is not None:
            self.best_relevance = max(relevance, self.best_relevance or relevance)
        return why


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def share(hits: list[bool]) -> float | None:
        return round(sum(hits) / len(hits), 4) if hits else None

    with_acted = [r for r in rows if r["acted"] in TAGS]
    top_label = Counter(r["label"] for r in rows).most_common(1)[0][0] if rows else None
    top_acted = Counter(r["acted"] for r in with_acted).most_common(1)[0][0] if with_acted else None
    return {
        "clips": len(rows),
        "think_vs_label": share([r["think_tag"] == r["label"] for r in rows]),
        "think_vs_acted": share([r["think_tag"] == r["acted"] for r in with_acted]),
        "recogniser_vs_acted": share([r["label"] == r["acted"] for r in with_acted]),
        "commonest_label": share([r["label"] == top_label for r in rows]),
        "commonest_acted": share([r["acted"] == top_acted for r in with_acted]),
        "chance": round(1 / len(TAGS), 4),
        "reply_repeats_think": share([r["repeats"] for r in rows]),
        "distinct_2": distinct_2([r.get("reply", "") for r in rows]),
        "confusion": {t: dict(Counter(r["think_tag"] for r in rows if r["label"] == t)) for t in TAGS},
        "rows": rows,
    }


def plot_curve(run: Path, out: Path) -> list[Path]:
    """``learning-curve.png`` (the think's tag per epoch against chance, the commonest tag and the recogniser)
    and ``confusion.png`` (label vs think tag, last epoch) from a run's ``listening.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run / "listening.jsonl"
    if not path.exists():
        return []
    curve = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    gold = "acted" if curve[-1].get("think_vs_acted") is not None else "label"
    fig, ax = plt.subplots(figsize=(6, 3.6))
    epochs = [c["epoch"] for c in curve]
    ax.plot(epochs, [c[f"think_vs_{gold}"] for c in curve], "o-", label=f"think names the {gold} emotion")
    last = curve[-1]
    refs = [("chance", last["chance"], ":"), (f"always the commonest {gold}", last[f"commonest_{gold}"], "--")]
    if gold == "acted":
        refs.append(("the recogniser (labelled the data)", curve[-1]["recogniser_vs_acted"], "-."))
    for name, value, style in refs:
        ax.axhline(value, linestyle=style, color="grey", label=f"{name} {value:.2f}")
    ax.set(xlabel="epoch of stage 1-2 (0: before)", ylabel="accuracy on held-out clips", ylim=(0, 1),
           title=f"Does the model hear the emotion? ({curve[-1]['clips']} clips)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "learning-curve.png", dpi=120)
    plt.close(fig)

    confusion = curve[-1]["confusion"]
    columns = [*TAGS, "none"]
    grid = [[confusion.get(t, {}).get(c, 0) for c in columns] for t in TAGS]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.imshow(grid, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(TAGS)), TAGS)
    for i, row in enumerate(grid):
        for j, n in enumerate(row):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=8)
    ax.set(xlabel="tag the think names", ylabel="label (recogniser)", title=f"epoch {curve[-1]['epoch']}")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=120)
    plt.close(fig)
    return [out / "learning-curve.png", out / "confusion.png"]
