"""The built-in recogniser as a shipped artefact, so a first run does not spend minutes training it.

Training the recogniser renders 1,764 TTS clips of 11 voices, featurises them and fits three models: 4 to 8
minutes on a 2-core AVX-512 machine, 13 on a 2-core AVX2 EPYC — more than half of a first `make demo`. The
same files, made by `emoslm perception train --out emoslm/perception/shipped/recogniser-v6` from the committed
defaults (`TrainConfig`), ship inside the package (1.7 MB) and are copied into ``$EMOSLM_HOME`` on first use
(by `ensure_recogniser` and by a default `EmotionRecognizer`).

The acoustic model is a scikit-learn pipeline stored with joblib, which is only safe to load with the
scikit-learn release that wrote it; with any other release the shipped copy is skipped and the recogniser is
trained here as before, so a newer scikit-learn costs minutes, never a wrong model. `tests/test_perception_
training.py` retrains it from scratch (slow tier) and checks held-out accuracy against the shipped meta.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

from emoslm.atomic import atomic_dir
from emoslm.perception.recognizer import RECOGNISER_VERSION

SHIPPED = Path(__file__).parent / "shipped" / f"recogniser-{RECOGNISER_VERSION}"


def _sklearn_version() -> str | None:
    try:
        return metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:
        return None


def shipped_meta() -> dict | None:
    path = SHIPPED / "meta.json"
    return json.loads(path.read_text()) if path.exists() else None


def usable() -> tuple[bool, str]:
    """Whether the shipped recogniser can be loaded here, and why not when it cannot."""
    meta = shipped_meta()
    if meta is None:
        return False, "no shipped recogniser in this install"
    wanted, have = meta.get("sklearn"), _sklearn_version()
    if have is None:
        return False, "scikit-learn is not installed"
    if wanted != have:
        return False, f"made with scikit-learn {wanted}, this install has {have}"
    return True, f"{SHIPPED.name}, scikit-learn {wanted}"


def describe() -> str:
    ok, why = usable()
    meta = shipped_meta() or {}
    held = meta.get("held_out", {}).get("fused")
    accuracy = f", held-out fused accuracy {held:.3f}" if held is not None else ""
    return f"{'usable' if ok else 'not usable'} ({why}{accuracy})"


def install(target: Path) -> bool:
    """Copy the shipped recogniser into ``target`` (atomically); False when it cannot be used here."""
    ok, _ = usable()
    if not ok:
        return False
    with atomic_dir(target) as tmp:
        for path in SHIPPED.iterdir():
            shutil.copy2(path, tmp / path.name)
    return True
