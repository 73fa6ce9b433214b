"""`voxloop bench --turns N`: one long conversation, a question every few seconds, to see whether
first audio stays as fast at turn 100 as at turn 1 (the history grows, is trimmed to the model's
context, and must stay in the server's prompt cache).

The questions are the quality set's one-question recordings, taken in turn and joined into one
recording with a fixed pause after each, played through the real pipeline in real time.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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


def run_long(
    settings: Settings, url: str, folder: Path, turns: int, say: Callable[[str], None]
) -> dict[str, Any]:
    samples, truth = long_recording(folder, turns)
    say(f"One conversation of {turns} questions ({len(samples) / STT_RATE / 60:.1f} min in real time)…")
    bench = Bench(settings, url)
    try:
        done = asyncio.run(bench.voxloop("long", samples, truth))
    finally:
        if bench.interim is not None:
            bench.interim.close()
    latencies = [t.latency_ms for t in done]
    windows: list[dict[str, Any]] = []
    for start in range(0, turns, WINDOW):
        chunk = [x for x in latencies[start : start + WINDOW] if x is not None]
        windows.append(
            {
                "turns": f"{start + 1}-{min(start + WINDOW, turns)}",
                "first_audio_median_ms": statistics.median(chunk) if chunk else float("nan"),
                "worst_ms": max(chunk) if chunk else float("nan"),
                "answered": len(chunk),
            }
        )
    first = float(windows[0]["first_audio_median_ms"])
    last = float(windows[-1]["first_audio_median_ms"])
    return {
        "turns": turns,
        "answered": sum(x is not None for x in latencies),
        "windows": windows,
        "last_over_first": last / first if first else float("nan"),
        "latencies_ms": latencies,
    }


def long_table(result: dict[str, Any]) -> str:
    lines = [f"{'turns':>9s}  {'first audio median':>18s}  {'worst':>7s}  answered"]
    for w in result["windows"]:
        lines.append(
            f"{w['turns']:>9s}  {w['first_audio_median_ms']:>15.0f} ms  {w['worst_ms']:>4.0f} ms  "
            f"{w['answered']}"
        )
    lines.append(f"last window / first window: {result['last_over_first']:.2f}")
    return "\n".join(lines)
