"""The unit decoder's speed, side by side: where its time goes (unit→mel network vs HiFi-GAN); the vocoder
in TorchScript as packaged, frozen + optimised for inference, and exported to onnxruntime (the default);
streaming vs offline decoding (first-chunk latency and the total cost of chunking). Speed depends on
the architecture, not the weights, so a run folder is used when given (``--decoder RUN/decoder/final``)
and a freshly initialised decoder of the recipe's shape otherwise. Writes ``benchmarks/results/units.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.speech.units.decoder import DecoderConfig, UnitDecoder  # noqa: E402
from emoslm.speech.vocoder import HifiGanVocoder  # noqa: E402

SECONDS = 5.0


def timed(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def first_chunk(decoder: UnitDecoder, codes: np.ndarray, chunk: int) -> float:
    def run() -> None:
        next(iter(decoder.decode_stream([codes[: chunk + decoder.config.context]], chunk_units=chunk)))
    return timed(run)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decoder", type=Path, default=None)
    args = parser.parse_args()
    decoder = UnitDecoder.from_pretrained(args.decoder) if args.decoder else UnitDecoder(DecoderConfig())
    if not decoder.speakers:
        decoder.speakers = {"random": np.zeros(80, np.float32)}
    codes = np.random.default_rng(0).integers(0, decoder.config.codes, int(SECONDS * decoder.config.unit_rate))
    spk, sty = decoder.speaker_vector(None), decoder.style_vector(None)
    results: dict[str, float] = {"threads": torch.get_num_threads(), "seconds_of_speech": SECONDS}
    mel = decoder.mel(codes, spk, sty)
    results["unit_to_mel_rtf"] = timed(lambda: decoder.mel(codes, spk, sty)) / SECONDS
    script = HifiGanVocoder(decoder.config.vocoder, runtime="torch")
    results["hifigan_torchscript_rtf"] = timed(lambda: script.mel_to_audio(mel)) / SECONDS
    frozen = HifiGanVocoder(decoder.config.vocoder, runtime="torch")
    frozen.model = torch.jit.optimize_for_inference(torch.jit.freeze(frozen.model.eval()))
    results["hifigan_torchscript_frozen_rtf"] = timed(lambda: frozen.mel_to_audio(mel)) / SECONDS
    onnx = HifiGanVocoder(decoder.config.vocoder, runtime="onnx")
    results["hifigan_onnxruntime_rtf"] = timed(lambda: onnx.mel_to_audio(mel)) / SECONDS
    results["onnxruntime_speedup"] = results["hifigan_torchscript_rtf"] / results["hifigan_onnxruntime_rtf"]
    results["onnxruntime_max_abs_diff"] = float(np.max(np.abs(script.mel_to_audio(mel) - onnx.mel_to_audio(mel))))
    results["decoder_rtf"] = timed(lambda: decoder.decode(codes, spk, sty)) / SECONDS
    pieces = [codes[k:k + 7] for k in range(0, len(codes), 7)]
    results["streaming_rtf"] = timed(lambda: list(decoder.decode_stream(pieces, spk, sty))) / SECONDS
    results["streaming_cost_ratio"] = results["streaming_rtf"] / results["decoder_rtf"]
    for chunk in (5, 10, 25):
        results[f"first_chunk_ms_{chunk}_units"] = 1000 * first_chunk(decoder, codes, chunk)
    out = ROOT / "results"
    (out / "units.json").write_text(json.dumps(results, indent=1))
    lines = ["# Unit decoder speed", "", f"{SECONDS:.0f} s of units, median of 5, {results['threads']} threads; "
             f"decoder: {args.decoder or 'freshly initialised (speed does not depend on the weights)'}.", "",
             "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results.items()]
    (out / "units.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
