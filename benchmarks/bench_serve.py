"""The server under load: concurrent realtime voice sessions on loopback, against one session alone.

``emoslm serve`` (teacher agent, embedded default) runs in its own process. Each simulated user opens
``/v1/realtime``, streams a spoken English line as 24 kHz PCM16 in 20 ms appends at real-time pace,
then 1 s of silence (the server's VAD ends the turn), waits for ``response.done``, and does it again
with a second line. First audio is measured on the client, from ``speech_stopped`` to the first
``response.output_audio.delta``, and on the server (``emoslm.t`` of that delta: seconds since the end
of speech). A failure is an ``error`` event, a response that is not ``completed``, or no answer within
the timeout.

Two runs in one process, side by side: one session alone, then ``--sessions`` sessions at once
(starts spread over ``--spread`` seconds). The agent answers one turn at a time (one LLM context), so
under load a turn waits for the turns queued before it: the ratio says how much.

Writes ``benchmarks/results/serve.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.audio import SAMPLE_RATE, resample  # noqa: E402
from emoslm.serve.llm_server import free_port  # noqa: E402
from emoslm.speech.voice import voice_pool  # noqa: E402

LINES = [
    "My cat has been sick all week and I am so worried about her.",
    "I finally got the job I wanted, I can hardly believe it!",
    "The train was late again and I missed my meeting.",
    "I am a bit nervous about the exam tomorrow.",
    "Nothing much happened today, I just stayed at home.",
    "Someone scratched my car in the parking lot and drove away.",
]


def pcm_chunks(clip16: np.ndarray) -> list[str]:
    audio = np.concatenate([clip16, np.zeros(SAMPLE_RATE, np.float32)])  # then 1 s of silence
    pcm = (np.clip(resample(audio, SAMPLE_RATE, 24_000), -1, 1) * 32767).astype("<i2")
    step = 480  # 20 ms at 24 kHz
    return [base64.b64encode(pcm[i:i + step].tobytes()).decode() for i in range(0, len(pcm), step)]


async def user(url: str, turns: list[list[str]], delay: float, timeout: float) -> list[dict]:
    import websockets

    await asyncio.sleep(delay)
    rows = []
    try:
        async with websockets.connect(url, max_size=None, open_timeout=60) as ws:
            await ws.recv()
            for chunks in turns:
                rows.append(await turn(ws, chunks, timeout))
    except Exception as exc:  # noqa: BLE001 - counted as a failure of every turn left
        rows += [{"failed": f"{type(exc).__name__}: {exc}"}] * (len(turns) - len(rows))
    return rows


async def turn(ws, chunks: list[str], timeout: float) -> dict:  # noqa: ANN001
    async def send() -> None:
        for chunk in chunks:
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            await asyncio.sleep(0.02)

    sender = asyncio.create_task(send())
    stopped = first = None
    row: dict = {}
    deadline = time.monotonic() + timeout
    try:
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
            kind = event["type"]
            if kind == "input_audio_buffer.speech_stopped":
                stopped = time.perf_counter()
            elif kind == "response.output_audio.delta" and first is None and stopped is not None:
                first = time.perf_counter() - stopped
                row["server_first_audio"] = event["emoslm"]["t"]
            elif kind == "error":
                row["failed"] = event["error"]["message"]
            elif kind == "response.done":
                status = event["response"]["status"]
                row["stages"] = event["response"].get("emoslm", {}).get("timings", {})
                if status != "completed":
                    row["failed"] = f"response {status}"
                if stopped is not None:
                    row["total"] = time.perf_counter() - stopped
                row["first_audio"] = first
                return row
    except asyncio.TimeoutError:
        return {"failed": "timeout"}
    finally:
        await sender


STAGES = ("vad", "asr", "emotion", "think", "write", "tts", "first_text", "first_audio", "total")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarise(rows: list[dict]) -> dict:
    ok = [r for r in rows if "failed" not in r and r.get("first_audio") is not None]
    out = {"turns": len(rows), "failures": len(rows) - len(ok),
           "failure_reasons": sorted({r["failed"] for r in rows if "failed" in r})}
    for key in ("first_audio", "server_first_audio", "total"):
        values = [r[key] for r in ok]
        out[key] = {"p50": round(pct(values, 50), 3), "p90": round(pct(values, 90), 3),
                    "mean": round(statistics.fmean(values), 3) if values else None}
    out["stage_means"] = {stage: round(statistics.fmean([r["stages"][stage] for r in ok if stage in r["stages"]]), 3)
                          for stage in STAGES if any(stage in r["stages"] for r in ok)}
    return out


async def load(url: str, sessions: int, spread: float, clips: list[list[str]], timeout: float) -> tuple[list, float]:
    rng = random.Random(0)
    start = time.perf_counter()
    tasks = [user(url, [clips[(i + k) % len(clips)] for k in range(2)], rng.uniform(0, spread), timeout)
             for i in range(sessions)]
    results = await asyncio.gather(*tasks)
    return [r for rows in results for r in rows], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--spread", type=float, default=5.0, help="seconds over which the sessions start")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one turn may take")
    parser.add_argument("--agent", default="teacher")
    parser.add_argument("--lang", default="en", help="the server's --lang (auto: detected per turn)")
    parser.add_argument("--partial-every", type=float, default=0.0, help="the server's partial transcripts (0: off)")
    args = parser.parse_args()

    voice = voice_pool().voice("piper", "en")
    clips = [pcm_chunks(voice.speak(line)) for line in LINES]
    port = free_port()
    command = [sys.executable, "-m", "emoslm.cli", "serve", "--agent", args.agent, "--port", str(port),
               "--max-sessions", str(args.sessions + 4), "--max-sessions-per-client", str(args.sessions + 4),
               "--partial-every", str(args.partial_every), "--lang", args.lang]
    log = open(ROOT / "results" / "serve-server.log.tmp", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {log.name}")
            time.sleep(0.5)
        url = f"ws://127.0.0.1:{port}/v1/realtime"
        alone, alone_wall = asyncio.run(load(url, 1, 0.0, clips, args.timeout))
        crowd, crowd_wall = asyncio.run(load(url, args.sessions, args.spread, clips, args.timeout))
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    report(args, summarise(alone), summarise(crowd), alone_wall, crowd_wall)


def report(args: argparse.Namespace, alone: dict, crowd: dict, alone_wall: float, crowd_wall: float) -> None:
    ratio = crowd["first_audio"]["p50"] / alone["first_audio"]["p50"] if alone["first_audio"]["p50"] else None
    result = {"machine": f"{os.cpu_count()} CPU cores, no GPU", "agent": args.agent, "sessions": args.sessions,
              "partial_every": args.partial_every, "lang": args.lang,
              "turns_per_session": 2, "alone": alone, "under_load": crowd,
              "wall_seconds": {"alone": round(alone_wall, 1), "under_load": round(crowd_wall, 1)},
              "first_audio_p50_ratio_load_vs_alone": round(ratio, 2) if ratio else None}
    out = ROOT / "results"
    (out / "serve.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Server under load ({result['machine']}, agent {args.agent})", "",
             f"`python benchmarks/bench_serve.py --sessions {args.sessions} --lang {args.lang} --partial-every "
             f"{args.partial_every}`: realtime sessions on loopback, two "
             "spoken turns each, 20 ms PCM16 appends at real-time pace; first audio = end of the user's speech → "
             "first audio delta.", "",
             "| run | turns | failures | first audio p50 / p90 (client) | first audio p50 (server) | "
             "whole turn p50 / p90 | wall |", "|---|---|---|---|---|---|---|"]
    for name, row, wall in (("1 session", alone, alone_wall), (f"{args.sessions} sessions", crowd, crowd_wall)):
        lines.append(f"| {name} | {row['turns']} | {row['failures']} | {row['first_audio']['p50']:.2f} / "
                     f"{row['first_audio']['p90']:.2f} s | {row['server_first_audio']['p50']:.2f} s | "
                     f"{row['total']['p50']:.2f} / {row['total']['p90']:.2f} s | {wall:.0f} s |")
    lines += ["", "Mean seconds per stage on the server (asr … tts: stage lengths; first_text, first_audio, total: "
              "since the end of speech):", "", "| run | " + " | ".join(alone["stage_means"]) + " |",
              "|---|" + "---|" * len(alone["stage_means"])]
    for name, row in (("1 session", alone), (f"{args.sessions} sessions", crowd)):
        lines.append(f"| {name} | " + " | ".join(f"{row['stage_means'].get(k, float('nan')):.2f}"
                                                for k in alone["stage_means"]) + " |")
    lines += ["", f"First audio p50 under load / alone: **{result['first_audio_p50_ratio_load_vs_alone']}×**. "
              "The agent answers one turn at a time (one LLM context), so a turn waits for those queued before it.",
              ""]
    if crowd["failure_reasons"]:
        lines.append(f"Failure reasons: {', '.join(crowd['failure_reasons'])}")
    (out / "serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
