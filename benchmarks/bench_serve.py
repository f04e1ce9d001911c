"""The server under load: concurrent realtime voice sessions on loopback, against one session alone.

``emoslm serve`` (teacher agent, embedded default) runs in its own process. Each simulated user opens
``/v1/realtime``, streams a spoken English line as 24 kHz PCM16 in 20 ms appends at real-time pace,
then 1 s of silence (the server's VAD ends the turn), waits for ``response.done``, and does it again
with a second line. First audio is measured on the client, from ``speech_stopped`` to the first
``response.output_audio.delta``, and on the server (``emoslm.t`` of that delta: seconds since the end
of speech). A failure is an ``error`` event, a response that is not ``completed``, or no answer within
the timeout.

Runs against one server, side by side: one session alone, then each count of ``--sessions`` at once
(starts spread over ``--spread`` seconds), then (``--hog``) one and four sessions while another process
keeps one core busy (a bounded busy loop started before and stopped after). With ``--parallel N`` the
server answers N turns at once from one batched llama.cpp context; otherwise one at a time, and a turn
waits for those queued before it (its client is told its place: ``emoslm.queue``). A response cancelled
because the user went on talking (a pause ended the turn too soon) is not a failure: the turn goes on.

Writes ``benchmarks/results/serve.{json,md}`` (``serve-parallel-N.*`` with ``--parallel N``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
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

from bench_latency import hog  # noqa: E402  (the same busy process as the latency benchmark)

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
    row: dict = {"queued": 0}
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
            elif kind == "emoslm.queue":
                row["queued"] = max(row["queued"], event["ahead"])
            elif kind == "response.done" and (event["response"].get("status_details") or {}).get(
                    "reason") == "turn_detected" and not sender.done():
                first = None  # the user went on: the turn goes on, and so does the clock
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
    parser.add_argument("--sessions", default="4,20", help="session counts to run at once, after one alone")
    parser.add_argument("--hog", action="store_true", help="also 1 and 4 sessions with one core taken")
    parser.add_argument("--parallel", type=int, default=1, help="the server's --parallel (turns at once)")
    parser.add_argument("--spread", type=float, default=5.0, help="seconds over which the sessions start")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one turn may take")
    parser.add_argument("--agent", default="teacher")
    parser.add_argument("--lang", default="en", help="the server's --lang (auto: detected per turn)")
    parser.add_argument("--partial-every", type=float, default=0.0, help="the server's partial transcripts (0: off)")
    args = parser.parse_args()

    voice = voice_pool().voice("piper", "en")
    clips = [pcm_chunks(voice.speak(line)) for line in LINES]
    port = free_port()
    counts = [int(n) for n in args.sessions.split(",") if n.strip()]
    most = max(counts + [4])
    command = [sys.executable, "-m", "emoslm.cli", "serve", "--agent", args.agent, "--port", str(port),
               "--max-sessions", str(most + 4), "--max-sessions-per-client", str(most + 4),
               "--partial-every", str(args.partial_every), "--lang", args.lang, "--parallel", str(args.parallel)]
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
        plan = [("1 session", 1, False), *((f"{n} sessions", n, False) for n in counts)]
        if args.hog:
            plan += [("1 session, one core taken", 1, True), ("4 sessions, one core taken", 4, True)]
        runs = {}
        for name, sessions, busy in plan:
            with hog() if busy else contextlib.nullcontext():
                rows, wall = asyncio.run(load(url, sessions, args.spread if sessions > 1 else 0.0, clips,
                                              args.timeout))
            runs[name] = {**summarise(rows), "sessions": sessions, "wall_s": round(wall, 1),
                          "told_their_place": sum(1 for r in rows if r.get("queued"))}
            print(name, runs[name]["first_audio"], runs[name]["failures"], flush=True)
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, dict]) -> None:
    alone = runs["1 session"]["first_audio"]["p50"]
    for row in runs.values():
        row["first_audio_p50_vs_alone"] = round(row["first_audio"]["p50"] / alone, 2) if alone else None
    result = {"machine": f"{os.cpu_count()} CPU cores, no GPU", "agent": args.agent, "parallel": args.parallel,
              "partial_every": args.partial_every, "lang": args.lang, "turns_per_session": 2, "runs": runs}
    out, stem = ROOT / "results", "serve" if args.parallel == 1 else f"serve-parallel-{args.parallel}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Server under load ({result['machine']}, agent {args.agent}, --parallel {args.parallel})", "",
             f"`python benchmarks/bench_serve.py --sessions {args.sessions} --parallel {args.parallel}"
             f"{' --hog' if args.hog else ''} --lang {args.lang} --partial-every {args.partial_every}`: realtime "
             "sessions on loopback, two spoken turns each, 20 ms PCM16 appends at real-time pace; first audio = "
             "end of the user's speech → first audio delta; told = turns whose client got `emoslm.queue`.", "",
             "| run | turns | failures | first audio p50 / p90 (client) | ÷ alone | first audio p50 (server) | "
             "whole turn p50 / p90 | told | wall |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in runs.items():
        lines.append(f"| {name} | {row['turns']} | {row['failures']} | {row['first_audio']['p50']:.2f} / "
                     f"{row['first_audio']['p90']:.2f} s | {row['first_audio_p50_vs_alone']}× | "
                     f"{row['server_first_audio']['p50']:.2f} s | {row['total']['p50']:.2f} / "
                     f"{row['total']['p90']:.2f} s | {row['told_their_place']} | {row['wall_s']:.0f} s |")
    stages = runs["1 session"]["stage_means"]
    lines += ["", "Mean seconds per stage on the server (asr … tts: stage lengths; first_text, first_audio, total: "
              "since the end of speech):", "", "| run | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for name, row in runs.items():
        lines.append(f"| {name} | " + " | ".join(f"{row['stage_means'].get(k, float('nan')):.2f}" for k in stages)
                     + " |")
    reasons = sorted({r for row in runs.values() for r in row["failure_reasons"]})
    if reasons:
        lines += ["", f"Failure reasons: {', '.join(reasons)}"]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
