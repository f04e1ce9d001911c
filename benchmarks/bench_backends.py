"""Load time and per-call cost of every backend, measured side by side in one run.

Prints a table and writes ``benchmarks/results/backends.json`` and ``.md``. Ratios compare
backends on the same input in the same process, so they mean something across machines; the
absolute seconds are this machine's.

    python benchmarks/bench_backends.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.llm import Sampling, load_llm  # noqa: E402
from emoslm.perception.asr import FasterWhisperASR  # noqa: E402
from emoslm.serve.llm_server import llama_cpp_server  # noqa: E402
from emoslm.speech.tts import EspeakTTS, PiperTTS  # noqa: E402

SENTENCE = ("I have had a really hard day at work, and honestly I feel completely exhausted. "
            "My manager changed the deadline again and nobody told me until this afternoon.")
ZH_SENTENCE = "我今天工作特别累，经理又改了截止日期，直到下午才有人告诉我。"
PROMPT = [{"role": "system", "content": "You are a kind assistant."},
          {"role": "user", "content": "I had a really rough day at work and I feel exhausted."}]


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def median_of(repeats: int, fn):
    values = [fn() for _ in range(repeats)]
    return statistics.median(values)


def bench_tts(repeats: int) -> list[dict]:
    rows = []
    for name, make, text in [("piper (en)", PiperTTS, SENTENCE),
                             ("espeak-ng (en)", lambda: EspeakTTS("en-us"), SENTENCE),
                             ("espeak-ng (zh, pinyin)", lambda: EspeakTTS("zh"), ZH_SENTENCE)]:
        tts, load = timed(make)
        tts.synthesize(text)  # warm-up
        rtf = median_of(repeats, lambda: tts.synthesize(text).rtf)
        rows.append({"kind": "tts", "backend": name, "load_s": load, "metric": "RTF", "value": rtf})
    return rows


def bench_asr(repeats: int, audio) -> list[dict]:
    rows = []
    for name in ("whisper-tiny.en", "whisper-base"):
        asr, load = timed(lambda: FasterWhisperASR(name))
        asr.transcribe(audio, language="en")
        rtf = median_of(repeats, lambda: asr.transcribe(audio, language="en").rtf)
        rows.append({"kind": "asr", "backend": name, "load_s": load, "metric": "RTF", "value": rtf})
    return rows


def _llm_row(name: str, llm, load: float, repeats: int) -> dict:
    sampling = Sampling(max_tokens=64, temperature=0.0)
    prompt = llm.render(PROMPT)
    llm.complete(prompt, Sampling(max_tokens=4, temperature=0.0))  # warm-up
    tps = median_of(repeats, lambda: llm.complete(prompt, sampling).tokens_per_second)
    return {"kind": "llm", "backend": name, "load_s": load, "metric": "tok/s", "value": tps}


def bench_llm(repeats: int) -> list[dict]:
    rows = []
    for spec in ("llama-cpp:smollm2-135m-instruct", "llama-cpp:qwen2.5-coder-0.5b-instruct",
                 "transformers:smollm2-135m-instruct"):
        llm, load = timed(lambda: load_llm(spec))
        rows.append(_llm_row(spec, llm, load, repeats))
        llm.close()
    rows.append(_bench_http(repeats))
    return rows


def _bench_http(repeats: int) -> dict:
    """The same SmolLM2 GGUF behind llama.cpp's OpenAI-compatible server, over loopback HTTP."""
    start = time.perf_counter()
    with llama_cpp_server("smollm2-135m-instruct") as base:
        load = time.perf_counter() - start
        llm = load_llm(f"{base}?template=smollm2-135m-instruct")
        return _llm_row("http (llama.cpp server, smollm2)", llm, load, repeats)


def write(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": __import__("os").cpu_count(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    by = {r["backend"]: r for r in rows}
    ratios = {
        "llama.cpp vs transformers (SmolLM2 tok/s)":
            by["llama-cpp:smollm2-135m-instruct"]["value"] / by["transformers:smollm2-135m-instruct"]["value"],
        "llama.cpp in-process vs over HTTP (tok/s)":
            by["llama-cpp:smollm2-135m-instruct"]["value"] / by["http (llama.cpp server, smollm2)"]["value"],
        "SmolLM2-135M vs Qwen2.5-0.5B (tok/s)":
            by["llama-cpp:smollm2-135m-instruct"]["value"] / by["llama-cpp:qwen2.5-coder-0.5b-instruct"]["value"],
        "whisper-base vs tiny.en (RTF)": by["whisper-base"]["value"] / by["whisper-tiny.en"]["value"],
        "piper vs espeak-ng (RTF)": by["piper (en)"]["value"] / by["espeak-ng (en)"]["value"],
    }
    (out / "backends.json").write_text(json.dumps({"meta": meta, "rows": rows, "ratios": ratios}, indent=2))
    lines = ["# Backend benchmark", "", f"{meta}", "",
             "| kind | backend | load s | metric | value |", "|---|---|---|---|---|"]
    lines += [f"| {r['kind']} | {r['backend']} | {r['load_s']:.2f} | {r['metric']} | {r['value']:.3f} |" for r in rows]
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    (out / "backends.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    piper = PiperTTS()
    audio = piper.synthesize(SENTENCE).at()
    rows = bench_tts(args.repeats) + bench_asr(args.repeats, audio) + bench_llm(args.repeats)
    write(rows, args.out)


if __name__ == "__main__":
    main()
