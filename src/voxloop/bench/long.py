"""`voxloop bench --turns N` (and `--soak N`, 500 by default): one long conversation, a question
every few seconds, to see whether first audio stays as fast at turn 100 as at turn 1 (the history
grows, is trimmed to the model's context, and must stay in the server's prompt cache), and
whether memory stays flat: the resident memory of voxloop and of the LLM server it started,
sampled every second, per window of turns.

The questions are the quality set's one-question recordings, taken in turn and joined into one
recording with a fixed pause after each, played through the real pipeline in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from voxloop.audio.decode import STT_RATE, load_audio
from voxloop.bench import Bench
from voxloop.bench.quality import load_quality_set
from voxloop.settings import Settings

GAP_S = 6.0  # silence after each question: the reply is spoken in it
WINDOW = 10  # turns per reported window


def long_recording(folder: Path, turns: int, gap_s: float = GAP_S) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``turns`` questions from the quality set in one 16 kHz recording, with their true
    voiced start and end (from each recording's manifest entry)."""
    questions = [r for r in load_quality_set(folder)["recordings"] if r.get("kind") == "question"]
    parts: list[np.ndarray] = []
    truth: list[dict[str, Any]] = []
    position = 0
    for i in range(turns):
        rec = questions[i % len(questions)]
        turn = rec["turns"][0]
        audio = load_audio(folder / rec["file"])
        voiced = audio[int(turn["start_s"] * STT_RATE) : int(turn["end_s"] * STT_RATE)]
        lead = np.zeros(int(0.5 * STT_RATE), np.float32) if i == 0 else np.zeros(0, np.float32)
        parts += [lead, voiced, np.zeros(int(gap_s * STT_RATE), np.float32)]
        start = position + len(lead)
        truth.append(
            {"text": turn["text"], "start_s": start / STT_RATE, "end_s": (start + len(voiced)) / STT_RATE}
        )
        position = start + len(voiced) + int(gap_s * STT_RATE)
    return np.concatenate(parts), truth


class MemorySampler:
    """Resident memory (MB) of this process and of its children (the LLM server it started),
    once a second, in a thread of its own, as (seconds since start, voxloop, children)."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory", daemon=True)
        self._t0 = time.monotonic()

    def __enter__(self) -> MemorySampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            children = 0.0
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # gone meanwhile
                    children += child.memory_info().rss
            self.samples.append((time.monotonic() - self._t0, me.memory_info().rss / 2**20, children / 2**20))
            self._stop.wait(self.every_s)

    def peak(self, start_s: float, end_s: float) -> tuple[float, float]:
        """The highest voxloop and server memory between two instants (NaN if none sampled)."""
        inside = [(a, b) for t, a, b in self.samples if start_s <= t < end_s]
        if not inside:
            return float("nan"), float("nan")
        return max(a for a, _ in inside), max(b for _, b in inside)


def run_long(
    settings: Settings, url: str, folder: Path, turns: int, say: Callable[[str], None]
) -> dict[str, Any]:
    samples, truth = long_recording(folder, turns)
    say(f"One conversation of {turns} questions ({len(samples) / STT_RATE / 60:.1f} min in real time)…")
    bench = Bench(settings, url)
    try:
        with MemorySampler() as memory:
            done = asyncio.run(bench.voxloop("long", samples, truth))
    finally:
        if bench.interim is not None:
            bench.interim.close()
    latencies = [t.latency_ms for t in done]
    errors = sum(1 for t in done if t.heard is not None and t.reply is None)
    windows: list[dict[str, Any]] = []
    for start in range(0, turns, WINDOW):
        chunk = [x for x in latencies[start : start + WINDOW] if x is not None]
        stop = min(start + WINDOW, turns)
        # The audio clock runs with the wall clock (real time), both from the first sample.
        until = truth[stop]["start_s"] if stop < turns else float("inf")
        voxloop_mb, server_mb = memory.peak(truth[start]["start_s"], until)
        windows.append(
            {
                "turns": f"{start + 1}-{stop}",
                "first_audio_median_ms": statistics.median(chunk) if chunk else float("nan"),
                "worst_ms": max(chunk) if chunk else float("nan"),
                "answered": len(chunk),
                "voxloop_rss_mb": voxloop_mb,
                "server_rss_mb": server_mb,
            }
        )
    first = float(windows[0]["first_audio_median_ms"])
    last = float(windows[-1]["first_audio_median_ms"])
    return {
        "turns": turns,
        "answered": sum(x is not None for x in latencies),
        "unanswered_heard": errors,
        "windows": windows,
        "last_over_first": last / first if first else float("nan"),
        "voxloop_rss_growth_mb": windows[-1]["voxloop_rss_mb"] - windows[0]["voxloop_rss_mb"],
        "server_rss_growth_mb": windows[-1]["server_rss_mb"] - windows[0]["server_rss_mb"],
        "latencies_ms": latencies,
    }


def long_table(result: dict[str, Any]) -> str:
    lines = [f"{'turns':>9s}  {'first audio median':>18s}  {'worst':>7s}  answered  voxloop MB  server MB"]
    for w in result["windows"]:
        lines.append(
            f"{w['turns']:>9s}  {w['first_audio_median_ms']:>15.0f} ms  {w['worst_ms']:>4.0f} ms  "
            f"{w['answered']:>8d}  {w['voxloop_rss_mb']:>10.0f}  {w['server_rss_mb']:>9.0f}"
        )
    lines.append(f"last window / first window: {result['last_over_first']:.2f}")
    lines.append(
        f"memory from the first window to the last: voxloop {result['voxloop_rss_growth_mb']:+.0f} MB, "
        f"server {result['server_rss_growth_mb']:+.0f} MB; heard but unanswered: {result['unanswered_heard']}"
    )
    return "\n".join(lines)
