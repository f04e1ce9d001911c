"""`emoslm perception evaluate`: the recogniser on voices and scripts it never saw.

Reports, for acoustic-only, text-only and fused: accuracy and macro-F1 over the 7 tags, per
language and per voice, confusion matrices (PNG), and on the conflict set how often each part
follows the voice or the words.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from emoslm.atomic import atomic_file
from emoslm.emotions import TAGS
from emoslm.perception import corpus as corpus_mod
from emoslm.perception.classifier import LinearClassifier, load_classifier
from emoslm.perception.corpus import Clip
from emoslm.perception.recognizer import fusion_input, recogniser_dir
from emoslm.perception.training import TrainConfig, acoustic_matrix, corpus_clips, text_matrix

PARTS = ("acoustic", "text", "fused")


def scores(probs: np.ndarray, labels: list[str]) -> dict[str, float]:
    from sklearn.metrics import f1_score

    predicted = [TAGS[i] for i in probs.argmax(axis=1)]
    return {"accuracy": round(float(np.mean([p == y for p, y in zip(predicted, labels, strict=True)])), 4),
            "macro_f1": round(float(f1_score(labels, predicted, labels=list(TAGS), average="macro",
                                             zero_division=0)), 4),
            "n": len(labels)}


def predict_parts(directory: Path, clips: list[Clip], features: np.ndarray,
                  transcripts: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Acoustic, text and fused probabilities for ``clips`` (text from the script or from ``transcripts``)."""
    acoustic = load_classifier(directory / "acoustic").predict_proba(features)
    text = np.zeros_like(acoustic)
    for lang in sorted({c.lang for c in clips}):
        rows = [i for i, c in enumerate(clips) if c.lang == lang]
        model = LinearClassifier.load(directory / f"text_{lang}.npz")
        text[rows] = model.predict_proba(text_matrix([clips[i] for i in rows], lang, transcripts))
    fused = LinearClassifier.load(directory / "fusion.npz").predict_proba(fusion_input(acoustic, text))
    return {"acoustic": acoustic, "text": text, "fused": fused}


def evaluate(out: Path, progress: Callable[[str, int], Callable[[int], None]], directory: Path | None = None,
             transcribe: bool = False) -> dict:
    directory = directory or recogniser_dir()
    meta = json.loads((directory / "meta.json").read_text())
    config = TrainConfig(**{**meta["config"], "features": tuple(meta["config"]["features"]),
                            "voices": tuple(meta["config"]["voices"])})
    root = corpus_mod.corpus_root()
    clips = [c for c in corpus_clips(config) if c.split != "train"]
    corpus_mod.synthesize(clips, root, config.seed, progress("rendering held-out clips", len(clips)))
    features = acoustic_matrix(root, clips, config.features, progress("acoustic features", len(clips)))
    report: dict = {"recogniser": str(directory), "train_voices": meta["train_voices"],
                    "test_voices": meta["test_voices"], "text_source": "script text (oracle transcript)"}
    for split in ("test", "conflict"):
        idx = [i for i, c in enumerate(clips) if c.split == split]
        subset = [clips[i] for i in idx]
        parts = predict_parts(directory, subset, features[idx])
        report[split] = _split_report(subset, parts, split)
        if split == "test":
            _plot(parts, [c.emotion for c in subset], out / "confusion.png")
            if transcribe:
                texts = asr_transcripts(root, subset, progress("transcribing test clips", len(subset)))
                asr_parts = predict_parts(directory, subset, features[idx], texts)
                report["test_asr"] = _split_report(subset, asr_parts, split)
                report["test_asr"]["mean_error_rate"] = _error_rate(subset, texts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out / "report.md").write_text(markdown(report))
    _remember(directory, meta, report)
    return report


def _remember(directory: Path, meta: dict, report: dict) -> None:
    """The recogniser keeps its own held-out accuracy, so a retrain can be compared with it (shipped copy)."""
    meta["held_out"] = {part: report["test"][part]["accuracy"] for part in PARTS}
    with atomic_file(directory / "meta.json", suffix=".json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))


def _split_report(clips: list[Clip], parts: dict[str, np.ndarray], split: str) -> dict:
    voice_labels = [c.emotion for c in clips]
    if split == "conflict":
        word_labels = [c.words for c in clips]
        return {part: {"follows_voice": scores(probs, voice_labels)["accuracy"],
                       "follows_words": scores(probs, word_labels)["accuracy"]} for part, probs in parts.items()} \
            | {"n": len(clips)}
    result = {part: scores(probs, voice_labels) for part, probs in parts.items()}
    for lang in sorted({c.lang for c in clips}):
        rows = [i for i, c in enumerate(clips) if c.lang == lang]
        result[f"by_lang_{lang}"] = {p: scores(parts[p][rows], [voice_labels[i] for i in rows]) for p in PARTS}
    result["by_voice"] = {
        voice: {p: scores(parts[p][rows], [voice_labels[i] for i in rows])["accuracy"] for p in PARTS}
        for voice in sorted({c.voice for c in clips})
        for rows in [[i for i, c in enumerate(clips) if c.voice == voice]]
    }
    return result


def asr_transcripts(root: Path, clips: list[Clip], progress: Callable[[int], None]) -> dict[str, str]:
    from emoslm.audio import load_audio
    from emoslm.perception.asr import FasterWhisperASR, asr_for_language

    models: dict[str, FasterWhisperASR] = {}
    texts = {}
    for clip in clips:
        name = asr_for_language(clip.lang)
        models.setdefault(name, FasterWhisperASR(name))
        texts[clip.id] = models[name].transcribe(load_audio(root / clip.path), language=clip.lang).text
        progress(1)
    return texts


def _error_rate(clips: list[Clip], texts: dict[str, str]) -> float:
    from emoslm.textnorm import error_rate

    return round(float(np.mean([min(1.0, error_rate(c.text, texts[c.id])) for c in clips])), 4)


def _plot(parts: dict[str, np.ndarray], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for ax, part in zip(axes, PARTS, strict=True):
        predicted = [TAGS[i] for i in parts[part].argmax(axis=1)]
        matrix = confusion_matrix(labels, predicted, labels=list(TAGS), normalize="true")
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(TAGS)), TAGS, rotation=45, ha="right")
        ax.set_yticks(range(len(TAGS)), TAGS)
        acc = scores(parts[part], labels)["accuracy"]
        ax.set_title(f"{part} (accuracy {acc:.0%})")
        ax.set_xlabel("predicted")
        for i in range(len(TAGS)):
            for j in range(len(TAGS)):
                if matrix[i, j] >= 0.05:
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] > 0.5 else "black")
    axes[0].set_ylabel("acted emotion")
    fig.suptitle("emoslm built-in recogniser on unseen voices and scripts (synthetic acted speech)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    test = report["test"]
    lines = ["# Emotion recogniser evaluation", "",
             "Synthetic acted speech; test voices and scripts never seen in training. "
             f"Text part reads the {report['text_source']}.", "",
             "| part | accuracy | macro-F1 | conflict: follows voice | conflict: follows words |",
             "|---|---|---|---|---|"]
    for part in PARTS:
        c = report["conflict"][part]
        lines.append(f"| {part} | {test[part]['accuracy']:.3f} | {test[part]['macro_f1']:.3f} | "
                     f"{c['follows_voice']:.3f} | {c['follows_words']:.3f} |")
    if "test_asr" in report:
        lines += ["", f"With ASR transcripts (mean error rate {report['test_asr']['mean_error_rate']:.2f}):", "",
                  "| part | accuracy | macro-F1 |", "|---|---|---|"]
        lines += [f"| {p} | {report['test_asr'][p]['accuracy']:.3f} | {report['test_asr'][p]['macro_f1']:.3f} |"
                  for p in PARTS]
    lines += ["", "| voice | acoustic | text | fused |", "|---|---|---|---|"]
    lines += [f"| {v} | {r['acoustic']:.3f} | {r['text']:.3f} | {r['fused']:.3f} |"
              for v, r in test["by_voice"].items()]
    lines += ["", f"chance = {1 / len(TAGS):.3f}; test clips: {test['acoustic']['n']}; "
              f"conflict clips: {report['conflict']['n']}", "", "![confusion](confusion.png)"]
    return "\n".join(lines) + "\n"
