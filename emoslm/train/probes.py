"""Where is the emotion lost on the way in? Linear probes for the acted tag along the listening path.

The think can only name the emotion the LLM was given. A linear probe (softmax regression on each clip's
time-pooled mean and spread) is fitted on the build's clips of the *training* voices and scored on the
clips of the *held-out* voices, at each point the audio passes: the frozen Whisper encoder's frames, the
subsampler, the adapter (what replaces the user's tokens) and two layers of the LLM reading the speech
stretch alone (the prompt around it is left out, so this measures what the speech embeddings carry, not
what the model attends to). If a probe reads the tag at the encoder but not after the adapter, the
alignment training threw it away; if the encoder already lacks it, no training of the layers above can
find it. Beside them on the same clips: the recogniser's hand-made prosodic features through the same
probe, the recogniser that labelled the data, chance and always-the-commonest-tag.

The probe's regularisation is chosen per point by voice-grouped cross-validation on the training voices
only, so the held-out voices are never looked at before they are scored.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoslm.audio import load_audio
from emoslm.emotions import TAGS
from emoslm.errors import DataError
from emoslm.progress import Start, silent
from emoslm.train.data import load_examples, provenance_by_key
from emoslm.train.frames import FrameCache

C_GRID = (0.003, 0.03, 0.3)
FIT_ON = ("build", "corpus")


@dataclass
class ProbeClip:
    """A clip the probes read: its voice (held out or not) and the emotion it was acted with (the gold)."""

    key: str
    audio: Path
    voice: str
    acted: str
    label: str  # the recogniser's tag ("" where the build kept no stage 1-2 sample of the item)


def build_clips(build: Path) -> list[ProbeClip]:
    """Every clip of a build that emoslm voiced with a known acted emotion (the probe's gold)."""
    acted = provenance_by_key(build, "acted_emotion")
    has_1_2 = (build / "stage1_2.jsonl").exists()  # a build for listening alone has stage 1-1 only
    labels = {e.key: e.emotion for e in load_examples(build, "1-2") if not e.history} if has_1_2 else {}
    clips = [ProbeClip(e.key, e.audio, e.voice, acted.get(e.key, ""), labels.get(e.key, ""))
             for e in load_examples(build, "1-1")]
    clips = [c for c in clips if c.acted in TAGS and c.voice]
    if not clips:
        raise DataError(f"{build}: no clips with an acted emotion and a voice; probes need a build emoslm voiced")
    return clips


def pool(hidden: torch.Tensor) -> np.ndarray:
    """(frames, d) → (2d,): mean and spread over time, the same summary the recogniser takes of Whisper frames."""
    hidden = hidden.float()
    return torch.cat([hidden.mean(0), hidden.std(0, unbiased=False)]).cpu().numpy()


@torch.no_grad()
def representations(model: Any, clips: list[ProbeClip], llm_layers: tuple[int, ...] | None = None,
                    progress: Start = silent) -> dict[str, np.ndarray]:
    """Pooled features of every clip at each point of ``model``'s listening path (one row per clip)."""
    model.eval()
    layers = llm_layers or (model.config.llm().num_hidden_layers // 2, model.config.llm().num_hidden_layers)
    cache = FrameCache.for_model(model, model.processor.front_end)
    device = next(model.parameters()).device
    decoder = model.llm.get_decoder()  # the layers without the LM head: no vocabulary-sized logits per frame
    rows: dict[str, list[np.ndarray]] = {}
    step = progress("probe features", len(clips))
    for clip in clips:
        frames = torch.from_numpy(cache(clip.audio).astype(np.float32))[None].to(device)
        points = {}
        if model.layer_mix is not None:  # every layer cached: the last layer, then the model's own mix of them
            points["encoder"] = frames[0, -1]
            frames = model.layer_mix(frames)
            points["layer mix"] = frames[0]
        sub = model.subsampler(frames)
        adapted = model.adapter(sub)
        hidden = decoder(inputs_embeds=adapted, output_hidden_states=True).hidden_states
        points = {"encoder": frames[0], **points, "subsampler": sub[0], "adapter": adapted[0]}
        points.update({f"llm layer {n}": hidden[n][0] for n in layers})
        for name, value in points.items():
            rows.setdefault(name, []).append(pool(value))
        step(1)
    return {name: np.stack(value) for name, value in rows.items()}


def prosody_features(clips: list[ProbeClip], progress: Start = silent) -> np.ndarray:
    """The recogniser's hand-made prosodic features of every clip (a reference readout that needs no model)."""
    from emoslm.perception.features import AcousticFeaturizer

    featurizer = AcousticFeaturizer(("prosody",))
    step = progress("prosodic features", len(clips))
    rows = []
    for clip in clips:
        rows.append(featurizer(load_audio(clip.audio)))
        step(1)
    return np.stack(rows)


def probe(x_fit: np.ndarray, fit: list[ProbeClip], x_test: np.ndarray, test: list[ProbeClip], seed: int = 0
          ) -> dict[str, Any]:
    """Fit on ``fit`` (C by voice-grouped cross-validation there), score on ``test`` (other voices)."""
    from emoslm.perception.classifier import LinearClassifier
    from emoslm.perception.training import out_of_fold

    y_fit = [c.acted for c in fit]
    groups = [c.voice for c in fit]

    def cv_accuracy(c: float) -> float:
        probs = out_of_fold(x_fit, y_fit, groups, c, seed, folds=3)
        return float(np.mean([TAGS[k] == y for k, y in zip(probs.argmax(1), y_fit, strict=True)]))

    scores = {c: cv_accuracy(c) for c in C_GRID}
    best = max(scores, key=lambda c: (scores[c], -c))
    predicted = [TAGS[k] for k in LinearClassifier.fit(x_fit, y_fit, best, seed).predict_proba(x_test).argmax(1)]
    hits = [p == c.acted for p, c in zip(predicted, test, strict=True)]
    return {"held_out_accuracy": _share(hits), "cv_accuracy": round(scores[best], 4), "c": best,
            "by_voice": _by_voice(hits, test),
            "confusion": {t: dict(Counter(p for p, c in zip(predicted, test, strict=True) if c.acted == t))
                          for t in TAGS}}


def references(clips: list[ProbeClip], held_voices: set[str]) -> dict[str, float | None]:
    """Chance, always the commonest acted tag of the training voices, and the recogniser, on the held-out clips."""
    test = [c for c in clips if c.voice in held_voices]
    commonest = Counter(c.acted for c in clips if c.voice not in held_voices).most_common(1)[0][0]
    labelled = [c for c in test if c.label]
    return {"chance": round(1 / len(TAGS), 4), "commonest_tag": _share([c.acted == commonest for c in test]),
            "recogniser": _share([c.label == c.acted for c in labelled]), "recogniser_clips": len(labelled),
            "recogniser_by_voice": _by_voice([c.label == c.acted for c in labelled], labelled)}


def corpus_clips(lang: str, avoid: set[str]) -> list[ProbeClip]:
    """The recogniser corpus's training-voice clips of ``lang`` (acted labels; rendered if missing) — many more
    clips to fit a probe on than a small build has; ``avoid`` drops voices the probe is scored on."""
    from emoslm.perception import corpus
    from emoslm.perception.training import TrainConfig
    from emoslm.perception.training import corpus_clips as planned

    chosen = [c for c in planned(TrainConfig()) if c.split == "train" and c.lang == lang
              and corpus.VOICE_BY_NAME[c.voice].engine + ":" + corpus.VOICE_BY_NAME[c.voice].voice not in avoid]
    root = corpus.corpus_root()
    corpus.synthesize(chosen, root)
    return [ProbeClip(c.id, root / c.path, c.voice, c.emotion, "") for c in chosen]


def run_probes(models: dict[str, Any], build: Path, held_voices: tuple[str, ...], out: Path,
               progress: Start = silent, seed: int = 0, fit_on: str = "build", fit_limit: int = 0) -> dict[str, Any]:
    """Probe each named model's listening path; scored on the build's clips of the held-out voices, fitted on
    the build's other clips (``fit_on="build"``) or on the recogniser corpus's (``"corpus"``: words there may
    carry the emotion, the build's chit-chat words do not, so a probe that learned words fails the test).
    ``fit_limit``: fit on an evenly spaced N of them (0: all; each clip is a pass through every model).
    Writes probes-FIT.json, .md and .png into ``out``."""
    _check_fit(fit_on)
    clips = build_clips(build)
    held = set(held_voices)
    test = [c for c in clips if c.voice in held]
    fit = corpus_clips("en", held) if fit_on == "corpus" else [c for c in clips if c.voice not in held]
    if fit_limit and len(fit) > fit_limit:
        fit = fit[:: -(-len(fit) // fit_limit)]
    if not test or not fit:
        raise DataError(f"{build}: probes need clips of both training and held-out voices {sorted(held)}")
    summary: dict[str, Any] = {
        "build": str(build), "fit_on": fit_on, "fit_clips": len(fit), "held_out_clips": len(test),
        "held_out_voices": sorted(held), "references": references(clips, held),
        "prosody": probe(prosody_features(fit, progress), fit, prosody_features(test, progress), test, seed),
        "models": {}}
    for name, model in models.items():
        x_fit, x_test = representations(model, fit, progress=progress), representations(model, test, progress=progress)
        summary["models"][name] = {point: probe(x_fit[point], fit, x_test[point], test, seed) for point in x_fit}
    out.mkdir(parents=True, exist_ok=True)
    stem = f"probes-{fit_on}"
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    (out / f"{stem}.md").write_text(markdown(summary))
    plot(summary, out / f"{stem}.png")
    return summary


def probe_runs(runs: list[Path], data: Path | None = None, out: Path | None = None, progress: Start = silent,
               fit_on: str = "build", fit_limit: int = 0) -> Path:
    """`emoslm train probe RUN...`: the untrained adapter and each finished run's model, on the first run's
    build (or ``data``) and held-out voices; returns the folder the report went to (default: the last run)."""
    from emoslm.slm.model import UnifiedSLM
    from emoslm.train.runs import finished_runs, untrained_model

    _check_fit(fit_on)  # before any model loads
    infos = [info["config"] for info in finished_runs(runs)]
    config = infos[0]
    voices = tuple(config.get("held_out_voices") or ())
    if not voices:
        raise DataError(f"{runs[0]}: the run held out no voices (train.held_out_voices); probes score on them")
    models = {"untrained adapter": untrained_model(config)[0]}
    for run, info in zip(runs, infos, strict=True):
        models[f"stage {info['stage']} ({run.name})"] = UnifiedSLM.from_pretrained(run / "final")
    target = out or runs[-1]
    run_probes(models, Path(data or config["data"]), voices, target, progress, config["seed"], fit_on, fit_limit)
    return target


def markdown(summary: dict[str, Any]) -> str:
    refs = summary["references"]
    points = list(dict.fromkeys(p for row in summary["models"].values() for p in row))  # a mixing model has one more
    fitted = {"build": "the build's clips of the training voices",
              "corpus": "the recogniser corpus's English training-voice clips"}[summary["fit_on"]]
    lines = ["# Where is the emotion lost? Linear probes for the acted tag", "",
             f"Accuracy on the build's {summary['held_out_clips']} clips of the held-out voices "
             f"({', '.join(summary['held_out_voices'])}); each probe fitted on {fitted} ({summary['fit_clips']}), "
             "its C chosen by voice-grouped cross-validation there (that accuracy in brackets).", "",
             "| model | " + " | ".join(points) + " |", "|---|" + "---|" * len(points)]
    for name, row in summary["models"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{row[p]['held_out_accuracy']:.3f} ({row[p]['cv_accuracy']:.2f})" if p in row else "—"
            for p in points) + " |")
    prosody = summary["prosody"]
    lines += ["", "| reference on the same clips | accuracy |", "|---|---|",
              f"| prosodic features through the same probe | {prosody['held_out_accuracy']:.3f} |",
              f"| the recogniser that labelled the data ({refs['recogniser_clips']} clips) | "
              f"{_fmt(refs['recogniser'])} |",
              f"| always the commonest tag of the training voices | {_fmt(refs['commonest_tag'])} |",
              f"| chance | {refs['chance']:.3f} |", ""]
    columns = [("the recogniser", refs["recogniser_by_voice"]), ("prosodic features", prosody["by_voice"])]
    columns += [(f"{name}: {point}", row[point]["by_voice"]) for name, row in summary["models"].items()
                for point in ("encoder", "layer mix", "adapter") if point in row]
    lines += ["Per held-out voice:", "", "| voice | " + " | ".join(c for c, _ in columns) + " |",
              "|---|" + "---|" * len(columns)]
    for voice in summary["held_out_voices"]:
        lines.append(f"| {voice} | " + " | ".join(_fmt(values.get(voice)) for _, values in columns) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    names = list(summary["models"])
    points = list(dict.fromkeys(p for row in summary["models"].values() for p in row))
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        row = summary["models"][name]
        values = [row[p]["held_out_accuracy"] if p in row else 0.0 for p in points]
        ax.bar(np.arange(len(points)) + k * width - 0.4 + width / 2, values, width, label=name)
    refs = summary["references"]
    lines = [("prosodic features", summary["prosody"]["held_out_accuracy"], "-"),
             ("the recogniser", refs["recogniser"], "-."), ("commonest tag", refs["commonest_tag"], "--"),
             ("chance", refs["chance"], ":")]
    for label, value, style in lines:
        if value is not None:
            ax.axhline(value, linestyle=style, color="grey", linewidth=1, label=f"{label} {value:.2f}")
    ax.set_xticks(range(len(points)), points, fontsize=8)
    ax.set(ylabel="acted tag, held-out voices", ylim=(0, 1), title="Linear probes along the listening path")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _check_fit(fit_on: str) -> None:
    if fit_on not in FIT_ON:
        raise DataError(f"unknown probe data '{fit_on}'; use {' or '.join(FIT_ON)}")


def _by_voice(hits: list[bool], clips: list[ProbeClip]) -> dict[str, float | None]:
    return {v: _share([h for h, c in zip(hits, clips, strict=True) if c.voice == v])
            for v in sorted({c.voice for c in clips})}


def _share(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
