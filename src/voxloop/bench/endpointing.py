"""`voxloop bench --endpointing`: how soon a finished turn ends, and whether a pause inside a
phrase ends it too soon, with the turn model on and off, next to first-audio latency.

Every recording is played through the whole pipeline in real time (as `voxloop chat
--realtime`), once with the turn model and once without (silence and the words alone), one
after the other, so both see the same machine:

- finished turns (``benchmarks/set``: questions and statements in several voices, their true
  start and end in the manifest): the endpoint wait (from the VAD's end of speech to the end of
  the turn, as `voxloop chat` reports it), first audio from the true end of speech, and turns
  split in two (ended in the short gap between their sentences);
- mid-phrase pauses (``benchmarks/pauses``, made by ``benchmarks/make_pause_set.py``: pauses
  of 0.5-1.5 s inside a phrase, several voices): the share of pauses that ended the turn
  (false cut-offs), how many utterances still reached the LLM whole (a turn cut at a pause and
  gone on from before its reply was heard is taken back and joined to the rest), and the
  endpoint wait once those utterances do end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxloop.audio.decode import load_audio
from voxloop.audio.sink import NullSink
from voxloop.audio.sources import RealtimeSource
from voxloop.bench import Bench, load_set, percentile
from voxloop.bench.score import wer
from voxloop.errors import ConfigError
from voxloop.events import SpeechEnded, TurnDone
from voxloop.llm.openai_http import OpenAIChat
from voxloop.pipeline import Assistant
from voxloop.printer import CollectingPrinter
from voxloop.settings import BENCHMARKS, Settings
from voxloop.vad.turn import shared_turn_model

DEFAULT_PAUSE_SET = BENCHMARKS / "pauses"
CONFIGS = (("turn model", True), ("silence + words", False))
WHOLE_WER = 0.25  # the last turn's words against the whole phrase: "heard", as bench --quality says
EARLY_S = 0.3  # a VAD end this long before a turn's true end still belongs to it
LATE_S = 0.6  # ...and this long after it


@dataclass
class Played:
    """One recording played by one configuration."""

    config: str
    recording: str
    kind: str  # finished | pauses
    ends: list[tuple[float, float]]  # (end_s, endpoint_at_s) of every end of turn
    done: list[dict[str, Any]]  # each answered turn: user, end_s, endpoint wait, first audio
    turns: list[dict[str, Any]] = field(default_factory=list)  # the manifest's turns
    pauses: list[dict[str, Any]] = field(default_factory=list)  # ...and pauses


async def _play(
    bench: Bench, settings: Settings, samples: np.ndarray
) -> tuple[list[TurnDone], list[SpeechEnded]]:
    chat = OpenAIChat(bench.url, settings.llm)
    await chat.connect()
    printer = CollectingPrinter()
    try:
        assistant = Assistant(
            settings, bench.transcriber, chat, bench.synthesizer, NullSink(), printer, interim=bench.interim
        )
        done = await assistant.run(RealtimeSource(samples))
    finally:
        await chat.aclose()
    ends = [e for e in printer.events if isinstance(e, SpeechEnded) and e.final]
    return done, ends


async def _run(
    bench: Bench, sets: list[tuple[str, Path, list[dict[str, Any]]]], say: Callable[[str], None]
) -> tuple[list[Played], dict[str, list[float]]]:
    played: list[Played] = []
    check_ms: dict[str, list[float]] = {}
    total = sum(len(recs) for _, _, recs in sets)
    n = 0
    for kind, folder, recordings in sets:
        for rec in recordings:
            n += 1
            samples = load_audio(folder / rec["file"])
            for name, on in CONFIGS:
                say(f"{n}/{total} {kind} {rec['file']} ({rec.get('voice', '')}): {name}…")
                settings = dataclasses.replace(
                    bench.settings, vad=dataclasses.replace(bench.settings.vad, turn_model=on)
                )
                model = shared_turn_model() if on else None
                if model is not None:
                    model.check_ms.clear()
                done, ends = await _play(bench, settings, samples)
                if model is not None:
                    check_ms.setdefault(name, []).extend(model.check_ms)
                played.append(
                    Played(
                        config=name,
                        recording=rec["file"],
                        kind=kind,
                        ends=[(e.end_s, e.endpoint_at_s) for e in ends],
                        done=[
                            {
                                "user": d.user,
                                "end_s": d.speech_end_s,
                                "endpoint_wait_ms": d.timings.get("endpoint_wait_ms"),
                                "first_audio_at_s": d.first_audio_at_s,
                            }
                            for d in done
                        ],
                        turns=rec["turns"],
                        pauses=rec.get("pauses", []),
                    )
                )
    return played, check_ms


def _finished(runs: list[Played]) -> dict[str, Any]:
    """Endpoint wait, first audio and splits over the finished turns."""
    waits: list[float] = []
    latencies: list[float] = []
    turns = split = answered = 0
    for run in runs:
        for truth in run.turns:
            turns += 1
            inside = [e for e in run.ends if truth["start_s"] - EARLY_S <= e[0] <= truth["end_s"] + LATE_S]
            split += len(inside) > 1
            mine = [
                d for d in run.done if truth["start_s"] - EARLY_S <= d["end_s"] <= truth["end_s"] + LATE_S
            ]
            if not mine:
                continue
            last = mine[-1]  # the part that ends at the true end, if the turn was split
            answered += 1
            if last["endpoint_wait_ms"] is not None:
                waits.append(last["endpoint_wait_ms"])
            if last["first_audio_at_s"] is not None:
                latencies.append((last["first_audio_at_s"] - truth["end_s"]) * 1000)
    return {
        "turns": turns,
        "answered": answered,
        "split": split,
        "endpoint_wait_p50_ms": percentile(waits, 0.5),
        "endpoint_wait_p95_ms": percentile(waits, 0.95),
        "first_audio_p50_ms": percentile(latencies, 0.5),
        "first_audio_p95_ms": percentile(latencies, 0.95),
    }


def _pauses(runs: list[Played]) -> dict[str, Any]:
    """False cut-offs: pauses inside a phrase at which the turn ended; and the utterances whose
    last turn still held the whole phrase (a cut the user went on from unheard is taken back)."""
    pauses = cut = whole = 0
    cut_at: list[str] = []
    waits: list[float] = []
    for run in runs:
        for pause in run.pauses:
            pauses += 1
            if any(pause["start_s"] - EARLY_S <= end <= pause["end_s"] for end, _ in run.ends):
                cut += 1
                cut_at.append(
                    f"{run.recording}: {pause['after']}… ({pause['end_s'] - pause['start_s']:.2f} s)"
                )
        truth = run.turns[-1]
        last = [e for e in run.ends if truth["end_s"] - EARLY_S <= e[0] <= truth["end_s"] + LATE_S]
        if last:
            waits.append((last[-1][1] - last[-1][0]) * 1000)
        answered = [d for d in run.done if truth["end_s"] - EARLY_S <= d["end_s"] <= truth["end_s"] + LATE_S]
        whole += bool(answered) and wer(truth["text"], answered[-1]["user"]) <= WHOLE_WER
    return {
        "recordings": len(runs),
        "pauses": pauses,
        "cut": cut,
        "cut_rate": cut / pauses if pauses else float("nan"),
        "cut_at": cut_at,
        "answered_whole": whole,
        "end_wait_p50_ms": percentile(waits, 0.5),
        "end_wait_p95_ms": percentile(waits, 0.95),
    }


def summarize(played: list[Played], check_ms: dict[str, list[float]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, _ in CONFIGS:
        mine = [p for p in played if p.config == name]
        times = check_ms.get(name, [])
        summary[name] = {
            "finished": _finished([p for p in mine if p.kind == "finished"]),
            "pauses": _pauses([p for p in mine if p.kind == "pauses"]),
            "check_p50_ms": percentile(times, 0.5),
            "check_p95_ms": percentile(times, 0.95),
        }
    return summary


def run_endpointing(
    settings: Settings,
    url: str,
    finished: Path,
    pauses: Path,
    limit: int | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Both sets, both configurations: the summary and every recording's ends and turns."""
    if not (pauses / "manifest.json").is_file():
        raise ConfigError(
            f"No mid-phrase pause set at {pauses} (manifest.json missing). "
            "Make it with: python benchmarks/make_pause_set.py"
        )
    sets = [
        ("finished", finished, load_set(finished)[:limit]),
        ("pauses", pauses, json.loads((pauses / "manifest.json").read_text())["recordings"][:limit]),
    ]
    if shared_turn_model() is None:
        raise ConfigError("The turn model is not installed: pip install --no-deps pipecat-ai==1.14.0")
    bench = Bench(settings, url)
    try:
        played, check_ms = asyncio.run(_run(bench, sets, say))
    finally:
        if bench.interim is not None:
            bench.interim.close()
    return {"summary": summarize(played, check_ms), "recordings": [dataclasses.asdict(p) for p in played]}


def endpointing_table(result: dict[str, Any]) -> str:
    summary = result["summary"]
    names = [name for name, _ in CONFIGS]

    def pair(a: float, b: float) -> str:
        return "—" if a != a else f"{a:5.0f} / {b:5.0f}"

    rows: list[tuple[str, list[str]]] = []
    fin = [summary[n]["finished"] for n in names]
    pau = [summary[n]["pauses"] for n in names]
    rows.append(("finished turns: endpoint wait (ms, p50 / p95)",
                 [pair(f["endpoint_wait_p50_ms"], f["endpoint_wait_p95_ms"]) for f in fin]))  # fmt: skip
    rows.append(("finished turns: first audio (ms, p50 / p95)",
                 [pair(f["first_audio_p50_ms"], f["first_audio_p95_ms"]) for f in fin]))  # fmt: skip
    rows.append(("finished turns answered", [f"{f['answered']} of {f['turns']}" for f in fin]))
    rows.append(("finished turns split in two", [f"{f['split']} of {f['turns']}" for f in fin]))
    rows.append(("mid-phrase pauses cut (false cut-offs)",
                 [f"{p['cut']} of {p['pauses']} ({100 * p['cut_rate']:.1f}%)" for p in pau]))  # fmt: skip
    rows.append(("mid-phrase utterances answered whole",
                 [f"{p.get('answered_whole', 0)} of {p['recordings']}" for p in pau]))  # fmt: skip
    rows.append(("mid-phrase utterances: endpoint wait (ms)",
                 [pair(p["end_wait_p50_ms"], p["end_wait_p95_ms"]) for p in pau]))  # fmt: skip
    rows.append(("turn model check (ms, p50 / p95)",
                 [pair(summary[n]["check_p50_ms"], summary[n]["check_p95_ms"]) for n in names]))  # fmt: skip
    width = max(len(label) for label, _ in rows)
    cols = [max(len(n), *(len(r[1][i]) for r in rows)) for i, n in enumerate(names)]
    lines = [" " * width + "  " + "  ".join(n.rjust(w) for n, w in zip(names, cols, strict=True))]
    for label, cells in rows:
        lines.append(
            label.ljust(width) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, cols, strict=True))
        )
    for name, p in zip(names, pau, strict=True):
        if p["cut_at"]:
            lines.append(f"cut ({name}): " + "; ".join(p["cut_at"]))
    return "\n".join(lines)
