"""`voxloop bench --sessions 1,2,4,8`: N browser-like clients talking to one `voxloop serve` at
once, each streaming real-time speech over the WebSocket protocol; end of speech → first reply
audio frame, measured on the client, per N."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from voxloop.audio.decode import load_audio
from voxloop.bench import load_set, percentile, rows_table
from voxloop.errors import LLMUnavailableError

FRAME = 320  # 20 ms at 16 kHz


def _turns(folder: Path) -> list[tuple[np.ndarray, float]]:
    """Each turn of the bench set cut out as its own clip, with where its speech ends."""
    clips = []
    for rec in load_set(folder):
        audio = load_audio(folder / rec["file"])
        for turn in rec["turns"]:
            start = max(0, int((turn["start_s"] - 0.3) * 16000))
            end = int((turn["end_s"] + 0.05) * 16000)
            clips.append((audio[start:end], (end - start) / 16000 - 0.05))
    return clips


async def _client(url: str, clip: np.ndarray, speech_end_s: float) -> float | None:
    """One conversation turn; milliseconds from the end of speech to the first reply audio."""
    import websockets

    pcm = (np.clip(clip, -1, 1) * 32767).astype("<i2").tobytes()
    silence = b"\0" * (FRAME * 2)
    async with websockets.connect(url, max_size=None) as ws:
        await ws.recv()  # hello
        started = time.perf_counter()

        async def send() -> None:
            frames = [pcm[i : i + FRAME * 2] for i in range(0, len(pcm), FRAME * 2)]
            for i, frame in enumerate(frames + [silence] * 250):
                await asyncio.sleep(max(0.0, started + (i + 1) * 0.02 - time.perf_counter()))
                await ws.send(frame)

        sender = asyncio.create_task(send())
        try:
            while True:
                message = await asyncio.wait_for(ws.recv(), timeout=30)
                if isinstance(message, bytes):
                    return (time.perf_counter() - (started + speech_end_s)) * 1000
                if json.loads(message).get("type") == "turn_done":
                    return None  # a reply with no audio
        finally:
            sender.cancel()


async def _level(url: str, clips: list[tuple[np.ndarray, float]], n: int, rounds: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = silent = 0
    for r in range(rounds):
        picks = [clips[(r * n + i) % len(clips)] for i in range(n)]
        results = await asyncio.gather(*(_client(url, c, e) for c, e in picks), return_exceptions=True)
        for result in results:
            if isinstance(result, float):
                latencies.append(result)
            elif result is None:
                silent += 1  # answered, but the reply had nothing to speak
            else:
                errors += 1
    return {
        "sessions": n,
        "turns": len(latencies) + errors + silent,
        "no_audio": silent,
        "first_audio_p50_ms": percentile(latencies, 0.5),
        "first_audio_p95_ms": percentile(latencies, 0.95),
        "errors": errors,
    }


def run_sessions(
    llm_urls: list[str], folder: Path, levels: list[int], rounds: int = 3
) -> list[dict[str, Any]]:
    from voxloop.llm.server import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "voxloop", "serve", "--port", str(port)]
    for url in llm_urls:
        cmd += ["--llm-url", url]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                err = server.stderr.read().decode() if server.stderr else ""
                raise LLMUnavailableError(f"voxloop serve did not start: {err.strip()[-300:]}")
            time.sleep(0.3)
        clips = _turns(folder)
        url = f"ws://127.0.0.1:{port}/ws"
        return asyncio.run(_all(url, clips, levels, rounds))
    finally:
        server.terminate()
        server.wait(timeout=10)


async def _all(
    url: str, clips: list[tuple[np.ndarray, float]], levels: list[int], rounds: int
) -> list[dict[str, Any]]:
    await _level(url, clips, 1, 1)  # warm-up
    return [await _level(url, clips, n, rounds) for n in levels]


def sessions_table(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("sessions", "sessions", "d"),
        ("turns", "turns", "d"),
        ("first audio p50 ms", "first_audio_p50_ms", ".0f"),
        ("p95 ms", "first_audio_p95_ms", ".0f"),
        ("no audio", "no_audio", "d"),
        ("errors", "errors", "d"),
    ]
    return rows_table(rows, columns)
