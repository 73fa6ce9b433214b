"""`voxloop bench --stt`: which Whisper hears best, and how fast, on the same recordings.

Each configuration (a model, a beam size, and voxloop's short encoder windows or Whisper's own
30 s one) transcribes every spoken turn of ``benchmarks/quality`` (cut at the manifest's times,
15 synthetic voices) and its human recordings, in one run, on the same threads. For each it
reports the mean WER and the turns heard (WER <= 0.25) on both, and the STT time p50/p95.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from voxloop.audio.decode import STT_RATE, load_audio
from voxloop.bench import percentile, rows_table
from voxloop.bench.quality import HEARD_WER, load_quality_set
from voxloop.bench.score import wer
from voxloop.errors import ConfigError
from voxloop.settings import SttSettings
from voxloop.stt.whisper import WhisperTranscriber

DECODERS = ("window", "30s")  # voxloop's short encoder windows, or faster-whisper's own path
LEAD_S, TAIL_S = 0.3, 0.5  # audio kept around a turn, as the VAD would hand it over


def clips(folder: Path, limit: int | None = None) -> list[tuple[str, str, np.ndarray]]:
    """(kind, text said, audio) for every turn of the set and every human recording."""
    data = load_quality_set(folder)
    out = []
    for rec in list(data["recordings"])[:limit]:
        audio = load_audio(folder / rec["file"])
        for turn in rec["turns"]:
            a = int(max(0.0, turn["start_s"] - LEAD_S) * STT_RATE)
            b = int((turn["end_s"] + TAIL_S) * STT_RATE)
            out.append(("voices", turn["text"], audio[a:b]))
    for item in data.get("human") or []:
        out.append(("human", item["text"], load_audio(folder / item["file"])))
    return out


def configs(base: SttSettings, models: list[str], beams: list[int], decoders: list[str]) -> list[SttSettings]:
    bad = [d for d in decoders if d not in DECODERS]
    if bad or not models or not beams or min(beams) < 1:
        raise ConfigError(
            "--stt takes model names (tiny.en, base, or folders), --beams numbers like 1,5, and "
            f"--decoders {' or '.join(DECODERS)}."
        )
    out = []
    for model, beam, decoder in itertools.product(models, beams, decoders):
        s = dataclasses.replace(base, model=model, beam_size=beam, interim_model=False)
        if decoder == "30s":
            s = dataclasses.replace(s, short_window_s=0.0, mid_window_s=0.0, window_s=0.0)
        out.append(s)
    return out


def _name(s: SttSettings) -> str:
    decoder = "30s" if s.window_s == 0 else "window"
    return f"{s.model or 'tiny.en'} beam {s.beam_size} {decoder}"


def measure(s: SttSettings, items: list[tuple[str, str, np.ndarray]]) -> dict[str, Any]:
    transcriber = WhisperTranscriber(s)
    transcriber.warm_up()
    rows: list[dict[str, Any]] = []
    for kind, said, audio in items:
        started = time.perf_counter()
        heard = transcriber.transcribe(audio)
        rows.append({"kind": kind, "text": said, "heard": heard, "wer": wer(said, heard),
                     "ms": (time.perf_counter() - started) * 1000})  # fmt: skip
    out: dict[str, Any] = {"config": _name(s), "rows": rows}
    for kind in ("voices", "human"):
        errs = [r["wer"] for r in rows if r["kind"] == kind]
        out[f"{kind}_wer"] = sum(errs) / len(errs) if errs else float("nan")
        out[f"{kind}_heard"] = f"{sum(e <= HEARD_WER for e in errs)}/{len(errs)}"
    ms = [r["ms"] for r in rows]
    out["ms_p50"], out["ms_p95"] = percentile(ms, 0.5), percentile(ms, 0.95)
    return out


def run_stt(
    settings: list[SttSettings], folder: Path, limit: int | None, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    items = clips(folder, limit)
    results = []
    for s in settings:
        say(f"STT {_name(s)}: {len(items)} clips")
        results.append(measure(s, items))
    return results


def stt_table(results: list[dict[str, Any]]) -> str:
    columns = [
        ("STT", "config", ""),
        ("WER voices", "voices_wer", ".1%"),
        ("heard", "voices_heard", ""),
        ("WER human", "human_wer", ".1%"),
        ("heard", "human_heard", ""),
        ("ms p50", "ms_p50", ".0f"),
        ("ms p95", "ms_p95", ".0f"),
    ]
    return rows_table(results, columns)
