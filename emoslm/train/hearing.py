"""Where does the unified model's Whisper encoder keep the emotion, and how much can a small head hear?

Issue 33 asks the listening path to keep the paralinguistics; first it has to be known what the frozen
encoder holds, layer by layer. This measures it on the recogniser corpus (acted speech, every tag equally
often), with the recogniser's own split so the numbers sit beside its evaluation:

- **fit** on the training voices' clips, **score** on the held-out voices' test clips (unheard voices,
  unseen scripts) and on the *conflict* clips, where the words say one emotion and the voice acts another
  (a reader of the words follows the words there; a listener follows the voice);
- a **linear probe per layer** (softmax regression on each clip's time mean and spread, C by voice-grouped
  cross-validation on the training voices only) — is the emotion there, and where;
- an **emotion head** (``EmotionHead``: attention pooling, mean + spread, linear) on the last layer alone and
  on a learned **layer mix** (``LayerMix``) of all layers, trained a fixed number of epochs (nothing is tuned
  on the scored clips), three seeds; the mix's learned weights say which layers it chose.

Writes ``hearing.json``, ``hearing.md`` and ``hearing.png`` into ``out``.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoslm.emotions import TAGS
from emoslm.progress import Start, silent
from emoslm.slm.listen import EmotionHead
from emoslm.speech.mel_front_end import MelFrontEnd
from emoslm.train.frames import FrameCache


@dataclass
class HearClip:
    id: str
    audio: Path
    voice: str
    acted: str  # the emotion the voice acts (the gold)
    words: str  # the emotion the words say (differs from ``acted`` on conflict clips)
    text: str = ""  # what is said


def corpus_sets(lang: str = "en", per_split: int = 0) -> dict[str, list[HearClip]]:
    """The recogniser corpus's clips of ``lang`` by split (train, test, conflict, and ``same``: held-out plain
    scripts acted in every emotion by the held-out voices), rendered if missing; ``per_split``: only that many
    clips of each, spread evenly (a quick check renders those alone)."""
    from emoslm.perception import corpus
    from emoslm.perception.training import TrainConfig, corpus_clips

    clips = [c for c in corpus_clips(TrainConfig()) if c.lang == lang] + corpus.same_sentence_plan(lang)
    clips += chitchat_plan(lang)
    if per_split:
        by_split = {s: [c for c in clips if c.split == s] for s in ("train", "test", "conflict", "same", "chitchat")}
        clips = [c for chosen in by_split.values() for c in chosen[:: max(1, len(chosen) // per_split)][:per_split]]
    root = corpus.corpus_root()
    corpus.synthesize(clips, root)
    return {split: [HearClip(c.id, root / c.path, c.voice, c.emotion, c.words, c.text) for c in clips
                    if c.split == split]
            for split in ("train", "test", "conflict", "same", "chitchat")}


def chitchat_plan(lang: str = "en", per_tag: int = 12) -> list[Any]:
    """Real chat turns (the packaged chitchat data set's last conversations, which no build here starts from)
    spoken by the corpus's held-out voices in turn, every emotion acted equally often: what an IEAT build's
    held-out clips are (words unrelated to the acted emotion), without its teacher. English only (the data set)."""
    from emoslm.ieat.sources import SourceSpec, read_chitchat
    from emoslm.perception import corpus

    if lang != "en":
        return []
    voices = [v for v in corpus.VOICES if v.lang == lang and v.split == "test"]
    items = list(read_chitchat(SourceSpec(type="chitchat", lang="en", min_words=6, max_words=30), None, None))
    chosen = items[-per_tag * len(TAGS):]
    return [corpus.make_clip(voices[i % len(voices)], "chitchat", f"chitchat-{item.id}", item.text,
                             TAGS[i % len(TAGS)], "", 0) for i, item in enumerate(chosen)]


def pooled(states: np.ndarray) -> np.ndarray:
    """(layers, frames, d) → (layers, 2d): each layer's time mean and spread (what the probes read)."""
    states = states.astype(np.float32)
    return np.concatenate([states.mean(1), states.std(1)], axis=-1)


def fit_head(states: list[np.ndarray], tags: list[str], mix: bool, seed: int, epochs: int = 40,
             lr: float = 1e-3, batch_size: int = 32) -> EmotionHead:
    """An emotion head trained on the clips' layer stacks (``mix``: all layers, else the last alone)."""
    torch.manual_seed(seed)
    layers, _, d = states[0].shape
    head = EmotionHead(d, len(TAGS), mix_layers=layers if mix else None)
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-2)
    y = torch.tensor([TAGS.index(t) for t in tags])
    rng = np.random.default_rng(seed)
    head.train()
    for _ in range(epochs):
        order = rng.permutation(len(states))
        for start in range(0, len(states), batch_size):
            index = order[start:start + batch_size]
            frames, padding = _batch([states[i] for i in index], mix)
            loss = torch.nn.functional.cross_entropy(head(frames, padding), y[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return head.eval()


def _batch(stacks: list[np.ndarray], mix: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded frames (batch, [layers,] frames, d) and the padding mask (batch, frames)."""
    longest = max(s.shape[1] for s in stacks)
    layers, _, d = stacks[0].shape
    frames = torch.zeros(len(stacks), layers, longest, d)
    padding = torch.ones(len(stacks), longest, dtype=torch.bool)
    for i, s in enumerate(stacks):
        frames[i, :, : s.shape[1]] = torch.from_numpy(s.astype(np.float32))
        padding[i, : s.shape[1]] = False
    return (frames if mix else frames[:, -1]), padding


@torch.no_grad()
def predict(head: EmotionHead, states: list[np.ndarray], batch_size: int = 64) -> list[str]:
    mix = head.mix is not None
    out: list[str] = []
    for start in range(0, len(states), batch_size):
        frames, padding = _batch(states[start:start + batch_size], mix)
        out += [TAGS[k] for k in head(frames, padding).argmax(-1).tolist()]
    return out


def scores(predicted: list[str], clips: list[HearClip]) -> dict[str, Any]:
    hits = [p == c.acted for p, c in zip(predicted, clips, strict=True)]
    by_voice = {v: round(float(np.mean([h for h, c in zip(hits, clips, strict=True) if c.voice == v])), 4)
                for v in sorted({c.voice for c in clips})}
    return {"accuracy": round(float(np.mean(hits)), 4), "by_voice": by_voice,
            "follows_words": round(float(np.mean([p == c.words for p, c in zip(predicted, clips, strict=True)])), 4)}


def run(out: Path, encoder_name: str = "whisper-tiny.en", lang: str = "en", seeds: tuple[int, ...] = (0, 1, 2),
        epochs: int = 40, progress: Start = silent) -> dict[str, Any]:
    """Probe every layer and train the heads; write the report into ``out``."""
    from emoslm.speech.whisper_ct2 import load_whisper_encoder
    from emoslm.train.probes import probe

    encoder = load_whisper_encoder(encoder_name).eval()
    cache = FrameCache(encoder, MelFrontEnd.for_mels(encoder.config.num_mel_bins), layers=True)
    sets = corpus_sets(lang)
    everything = [c for clips in sets.values() for c in clips]
    step = progress("encoder layers", len(everything))
    cache.fill([c.audio for c in everything], step)
    states = {split: [cache(c.audio) for c in clips] for split, clips in sets.items()}
    feats = {split: np.stack([pooled(s) for s in stacks]) for split, stacks in states.items()}
    train, test, conflict = sets["train"], sets["test"], sets["conflict"]
    layers = feats["train"].shape[1]

    per_layer = []
    for layer in range(layers):
        result = probe(feats["train"][:, layer], train, feats["test"][:, layer], test)  # type: ignore[arg-type]
        per_layer.append({"layer": layer, "test": result["held_out_accuracy"], "cv": result["cv_accuracy"]})

    heads: dict[str, Any] = {}
    for name, mix in (("last layer", False), ("layer mix", True)):
        runs = []
        for seed in seeds:
            head = fit_head(states["train"], [c.acted for c in train], mix, seed, epochs)
            runs.append({"seed": seed, "test": scores(predict(head, states["test"]), test),
                         "conflict": scores(predict(head, states["conflict"]), conflict),
                         "weights": [round(w, 4) for w in head.mix.weights.tolist()] if head.mix is not None else None})
        heads[name] = {"runs": runs, "test_mean": _mean([r["test"]["accuracy"] for r in runs]),
                       "test_sd": _sd([r["test"]["accuracy"] for r in runs]),
                       "conflict_follows_voice": _mean([r["conflict"]["accuracy"] for r in runs]),
                       "conflict_follows_words": _mean([r["conflict"]["follows_words"] for r in runs])}
    summary = {"encoder": encoder_name, "lang": lang, "layers": layers, "epochs": epochs,
               "clips": {k: len(v) for k, v in sets.items()},
               "train_voices": sorted({c.voice for c in train}), "test_voices": sorted({c.voice for c in test}),
               "chance": round(1 / len(TAGS), 4),
               "commonest": round(max(Counter(c.acted for c in test).values()) / len(test), 4),
               "per_layer_probe": per_layer, "heads": heads, "recogniser": _recogniser_reference()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "hearing.json").write_text(json.dumps(summary, indent=1))
    (out / "hearing.md").write_text(markdown(summary))
    plot(summary, out / "hearing.png")
    return summary


def _mean(values: list[float]) -> float:
    return round(statistics.fmean(values), 4)


def _sd(values: list[float]) -> float:
    return round(statistics.pstdev(values), 4)


def _recogniser_reference() -> dict[str, Any] | None:
    """The shipped recogniser's evaluation on the same held-out English clips (its committed report)."""
    path = Path(__file__).resolve().parents[2] / "reports" / "recogniser-shipped" / "report.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    english = report["test"]["by_lang_en"]
    return {"acoustic": english["acoustic"]["accuracy"], "fused": english["fused"]["accuracy"],
            "conflict_follows_voice_acoustic": report["conflict"]["acoustic"]["follows_voice"],
            "conflict_clips_all_langs": report["conflict"]["n"]}


def markdown(s: dict[str, Any]) -> str:
    lines = [f"# Where does {s['encoder']} keep the emotion? ({s['lang']})", "",
             f"Fit on the recogniser corpus's training voices ({s['clips']['train']} clips: "
             f"{', '.join(s['train_voices'])}); scored on unheard voices and unseen scripts ({s['clips']['test']} test "
             f"clips: {', '.join(s['test_voices'])}) and on {s['clips']['conflict']} conflict clips (the words say "
             "one emotion, the voice acts another). Chance "
             f"{s['chance']}, the commonest tag {s['commonest']}.", "",
             "| encoder layer (0: input) | linear probe, held-out voices | (voice-grouped CV on training voices) |",
             "|---|---|---|"]
    lines += [f"| {p['layer']} | {p['test']:.3f} | {p['cv']:.3f} |" for p in s["per_layer_probe"]]
    lines += ["", f"Emotion heads (attention pooling; {s['epochs']} epochs, seeds "
                  f"{', '.join(str(r['seed']) for r in next(iter(s['heads'].values()))['runs'])}):", "",
              "| head | held-out voices (mean ± sd) | conflict: follows the voice | conflict: follows the words |",
              "|---|---|---|---|"]
    for name, h in s["heads"].items():
        lines.append(f"| {name} | {h['test_mean']:.3f} ± {h['test_sd']:.3f} | {h['conflict_follows_voice']:.3f} | "
                     f"{h['conflict_follows_words']:.3f} |")
    mix = s["heads"]["layer mix"]["runs"]
    if mix and mix[0]["weights"]:
        mean = np.mean([r["weights"] for r in mix], axis=0)
        lines += ["", "Learned layer weights (mean over seeds): " + ", ".join(
            f"layer {i} {w:.2f}" for i, w in enumerate(mean))]
    rec = s.get("recogniser")
    if rec:
        lines += ["", f"The shipped recogniser on the same {s['clips']['test']} English test clips (its committed "
                      f"evaluation): acoustic part {rec['acoustic']:.3f}, fused with the words {rec['fused']:.3f}; on "
                      f"conflict clips (en and zh, {rec['conflict_clips_all_langs']}) its acoustic part follows the "
                      f"voice {rec['conflict_follows_voice_acoustic']:.3f}."]
    return "\n".join(lines) + "\n"


def plot(s: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    layers = [p["layer"] for p in s["per_layer_probe"]]
    ax.bar(layers, [p["test"] for p in s["per_layer_probe"]], color="#9bb7e0", label="linear probe per layer")
    styles = {"last layer": ("-", "#d2691e"), "layer mix": ("-", "#2e8b57")}
    for name, h in s["heads"].items():
        ax.axhline(h["test_mean"], linestyle=styles[name][0], color=styles[name][1], label=f"head: {name}")
    ax.axhline(s["chance"], linestyle=":", color="grey", label="chance")
    if s.get("recogniser"):
        ax.axhline(s["recogniser"]["acoustic"], linestyle="--", color="black", label="recogniser (acoustic)")
    ax.set(xlabel="encoder layer (0: input)", ylabel="accuracy, held-out voices", ylim=(0, 1),
           title=f"Emotion in {s['encoder']}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- does the adapter keep it? stage 1-1 with and without the listening path, then the probes --------------

HELD_VOICES = ("espeak-en-us-f3", "flite-awb", "flite-slt", "kokoro-en-jf-nezumi")  # the corpus's test voices


def corpus_build(out: Path, lang: str = "en") -> Path:
    """An IEAT-format build (stage 1-1 only) of the corpus's train and test clips: each clip's target is its
    own words (speech–text alignment), its provenance the acted emotion and the voice. Written atomically."""
    from emoslm.atomic import atomic_dir

    if (out / "stage1_1.jsonl").exists():
        return out
    sets = corpus_sets(lang)
    rows = [{"id": c.id, "lang": lang, "audio": str(c.audio.resolve()), "transcript": c.text,
             "response": c.text, "provenance": {"acted_emotion": c.acted, "voiced_by": c.voice}}
            for c in sets["train"] + sets["test"]]
    with atomic_dir(out) as tmp:
        (tmp / "recipe.json").write_text(json.dumps({"name": "hearing-corpus", "lang": lang}))
        (tmp / "stage1_1.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return out


def listening_runs(build: Path, runs: Path, epochs: int = 1, progress: Start = silent, **config: Any) -> list[Path]:
    """Stage 1-1 on ``build`` twice, the same seed and steps: the last encoder layer alone (as before), and the
    listening path (layer mix + emotion head); each run resumes if killed."""
    from emoslm.train.loop import TrainConfig, train

    done = []
    for name, listening in (("last-layer", False), ("listening-path", True)):
        cfg = TrainConfig(stage="1-1", data=str(build), out=str(runs / name), epochs=epochs, batch_size=8, lr=1e-3,
                          held_out=0.05, held_out_voices=list(HELD_VOICES), save_every=20,
                          encoder_mix=listening, emotion_head=listening, **config)
        if not (runs / name / "final" / "config.json").exists():
            train(cfg, progress)
        done.append(runs / name)
    return done


def listening_experiment(out: Path, max_steps: int = 40, progress: Start = silent, runs: Path = Path("runs")) -> Path:
    """`emoslm train hearing runs`: the corpus build, the two stage 1-1 runs, the probes along the path into
    ``out`` (each step resumes or is skipped when done)."""
    from emoslm.train.probes import probe_runs

    build = corpus_build(runs / "hearing-build")
    trained = listening_runs(build, runs / "train-hearing", epochs=1, progress=progress, max_steps=max_steps)
    return probe_runs(trained, out=out, progress=progress)


def prosody_run(runs: Path, max_steps: int = 0, progress: Start = silent, epochs: int = 2,
                frame_dropout: float = 1.0) -> Path:
    """Stage 1-1 on the corpus build with the whole listening path: the layer mix, and an emotion head that reads
    the adapter's output and the clip's prosody and opens the think (``inject_emotion``); resumes if killed.
    Returns the checkpoint."""
    from emoslm.train.loop import TrainConfig, train

    build = corpus_build(runs / "hearing-build")
    run = runs / "train-hearing" / "prosody-head"
    if not (run / "final" / "config.json").exists():
        train(TrainConfig(stage="1-1", data=str(build), out=str(run), epochs=epochs, max_steps=max_steps, batch_size=8,
                          lr=1e-3, held_out=0.05, held_out_voices=list(HELD_VOICES), save_every=20, encoder_mix=True,
                          emotion_head=True, emotion_prosody=True, inject_emotion=True,
                          emotion_frame_dropout=frame_dropout, emotion_lr=1e-2), progress)
    return run / "final"
