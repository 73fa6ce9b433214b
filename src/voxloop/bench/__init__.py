"""`voxloop bench`: voxloop and the reference pipeline on the same recordings, in real time,
against the same LLM server; latency from the true end of speech (from the set's manifest)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voxloop.audio.decode import load_audio
from voxloop.audio.sink import NullSink
from voxloop.audio.sources import RealtimeSource
from voxloop.bench.reference import run_reference
from voxloop.errors import ConfigError
from voxloop.llm.openai_http import OpenAIChat
from voxloop.pipeline import Assistant
from voxloop.printer import CollectingPrinter
from voxloop.settings import BENCHMARKS, Settings
from voxloop.stt.interim import make_interim
from voxloop.stt.whisper import WhisperTranscriber
from voxloop.tts.hibari_tts import HibariSynthesizer

DEFAULT_SET = BENCHMARKS / "set"

VOXLOOP_STAGES = [
    ("endpoint wait", "endpoint_wait_ms"),
    ("head start (reply began before endpoint)", "head_start_ms"),
    ("STT", "stt_ms"),
    ("LLM first token", "llm_first_token_ms"),
    ("LLM first sentence", "first_sentence_ms"),
    ("TTS first sentence", "first_tts_ms"),
]
REFERENCE_STAGES = [
    ("endpoint wait", "endpoint_wait_ms"),
    ("STT", "stt_ms"),
    ("LLM whole reply (blocking)", "llm_ms"),
]


@dataclass
class BenchTurn:
    pipeline: str
    recording: str
    text: str  # what was said (manifest)
    heard: str | None = None
    reply: str | None = None
    latency_ms: float | None = None  # true end of speech -> first audio (voxloop) / reply text (reference)
    stages: dict[str, float] = field(default_factory=dict)
    tools: tuple[str, ...] = ()  # the tools its reply ran


def load_set(folder: Path) -> list[dict[str, Any]]:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise ConfigError(f"No bench set at {folder} (manifest.json missing). Pass --set DIR.")
    data = json.loads(manifest.read_text())
    return list(data["recordings"])


def _match(truth: list[dict[str, Any]], end_s: float) -> int | None:
    """The manifest turn a detected utterance ending at ``end_s`` belongs to."""
    for i, turn in enumerate(truth):
        if turn["start_s"] - 0.3 <= end_s <= turn["end_s"] + 0.6:
            return i
    return None


def rows_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table: each column is (heading, key, format spec such as '>8.0f')."""
    widths = [max(len(head), *(len(format(r[key], spec)) for r in rows)) for head, key, spec in columns]
    lines = ["  ".join(head.rjust(w) for (head, _, _), w in zip(columns, widths, strict=True))]
    for r in rows:
        lines.append(
            "  ".join(
                format(r[key], spec).rjust(w) for (_, key, spec), w in zip(columns, widths, strict=True)
            )
        )
    return "\n".join(lines)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class Bench:
    pipelines: tuple[str, ...] = ("voxloop", "reference")

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.transcriber = WhisperTranscriber(settings.stt)
        self.synthesizer = HibariSynthesizer(settings.tts)
        self.interim = make_interim(settings.stt)
        self.transcriber.warm_up()
        self.synthesizer.warm_up()
        if self.interim is not None:
            self.interim.warm_up()

    async def voxloop(self, name: str, samples: Any, truth: list[dict[str, Any]]) -> list[BenchTurn]:
        out = [BenchTurn("voxloop", name, t["text"]) for t in truth]
        chat = OpenAIChat(self.url, self.settings.llm)
        await chat.connect()
        try:
            assistant = Assistant(
                self.settings,
                self.transcriber,
                chat,
                self.synthesizer,
                NullSink(),
                CollectingPrinter(keep_audio=False),  # a long run must not hoard reply audio
                interim=self.interim,
            )
            for done in await assistant.run(RealtimeSource(samples)):
                i = _match(truth, done.speech_end_s)
                if i is None:
                    continue
                turn = out[i]
                turn.heard, turn.reply = done.user, done.assistant
                turn.stages = dict(done.timings)
                turn.tools = done.tools
                if done.first_audio_at_s is not None:
                    turn.latency_ms = (done.first_audio_at_s - truth[i]["end_s"]) * 1000
        finally:
            await chat.aclose()
        return out

    async def reference(
        self, name: str, samples: Any, truth: list[dict[str, Any]], model: str
    ) -> list[BenchTurn]:
        out = [BenchTurn("reference", name, t["text"]) for t in truth]
        for ref in await run_reference(RealtimeSource(samples), self.transcriber.model, self.url, model):
            i = _match(truth, ref.end_s)
            if i is None:
                continue
            turn = out[i]
            turn.heard, turn.reply = ref.user, ref.reply
            turn.latency_ms = (ref.reply_at_s - truth[i]["end_s"]) * 1000
            turn.stages = {
                "endpoint_wait_ms": (ref.endpoint_at_s - ref.end_s) * 1000,
                "stt_ms": ref.stt_ms,
                "llm_ms": ref.llm_ms,
            }
        return out

    async def run(self, folder: Path, limit: int | None, progress: Any) -> list[BenchTurn]:
        chat = OpenAIChat(self.url, self.settings.llm)
        await chat.connect()  # the served model name, and a clear error if the server is down
        model = chat.model
        # One throwaway request so neither pipeline pays the server's first-request cost.
        async for _ in chat.stream([{"role": "user", "content": "Hello"}]):
            pass
        await chat.aclose()
        turns: list[BenchTurn] = []
        for rec in load_set(folder)[:limit]:
            samples = load_audio(folder / rec["file"])
            for pipeline in self.pipelines:
                progress(f"{rec['file']}: {pipeline} ({len(samples) / 16000:.0f} s of audio in real time)…")
                if pipeline == "voxloop":
                    turns += await self.voxloop(rec["file"], samples, rec["turns"])
                else:
                    turns += await self.reference(rec["file"], samples, rec["turns"], model)
        return turns


def summarize(turns: list[BenchTurn]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for pipeline, stages in (("voxloop", VOXLOOP_STAGES), ("reference", REFERENCE_STAGES)):
        mine = [t for t in turns if t.pipeline == pipeline]
        answered = [t for t in mine if t.latency_ms is not None]
        rows = {}
        for label, key in stages:
            values = [t.stages[key] for t in answered if key in t.stages]
            rows[label] = (percentile(values, 0.5), percentile(values, 0.95))
        latencies = [t.latency_ms for t in answered if t.latency_ms is not None]
        summary[pipeline] = {
            "stages": rows,
            "latency_p50_ms": percentile(latencies, 0.5),
            "latency_p95_ms": percentile(latencies, 0.95),
            "answered": len(answered),
            "turns": len(mine),
            "dropped": [t.text for t in mine if t.latency_ms is None],
        }
    ours, ref = summary["voxloop"], summary["reference"]
    summary["ratio_p50"] = ours["latency_p50_ms"] / ref["latency_p50_ms"] if ref["answered"] else float("nan")
    kept_by_ref = {
        (t.recording, t.text) for t in turns if t.pipeline == "reference" and t.latency_ms is not None
    }
    lost = [
        t.text
        for t in turns
        if t.pipeline == "voxloop" and t.latency_ms is None and (t.recording, t.text) in kept_by_ref
    ]
    summary["lost_that_reference_kept"] = lost
    return summary


def table(summary: dict[str, Any]) -> str:
    def ms(pair: tuple[float, float]) -> str:
        p50, p95 = pair
        return "—" if p50 != p50 else f"{p50:6.0f} / {p95:6.0f}"

    lines = [f"{'stage (ms, p50 / p95)':44s} {'voxloop':>15s}   {'reference':>15s}"]
    labels = [label for label, _ in VOXLOOP_STAGES] + [
        label for label, _ in REFERENCE_STAGES if label not in dict(VOXLOOP_STAGES)
    ]
    for label in labels:
        ours = summary["voxloop"]["stages"].get(label, (float("nan"), 0))
        ref = summary["reference"]["stages"].get(label, (float("nan"), 0))
        lines.append(f"{label:44s} {ms(ours):>15s}   {ms(ref):>15s}")
    o, r = summary["voxloop"], summary["reference"]
    lines.append(
        f"{'speech end → first audio / reply text':44s} "
        f"{ms((o['latency_p50_ms'], o['latency_p95_ms'])):>15s}   {ms((r['latency_p50_ms'], r['latency_p95_ms'])):>15s}"
    )
    lines.append(
        f"{'turns answered':44s} {o['answered']:>8d} of {o['turns']:<4d}  {r['answered']:>8d} of {r['turns']:<4d}"
    )
    lines.append(f"{'ratio voxloop / reference (p50)':44s} {summary['ratio_p50']:>15.2f}")
    if r["dropped"]:
        lines.append("reference dropped: " + "; ".join(r["dropped"]))
    if o["dropped"]:
        lines.append("voxloop missed: " + "; ".join(o["dropped"]))
    return "\n".join(lines)


def run_bench(
    settings: Settings, url: str, folder: Path, limit: int | None, progress: Any, reference: bool = True
) -> tuple[list[BenchTurn], dict[str, Any]]:
    bench = Bench(settings, url)
    bench.pipelines = ("voxloop", "reference") if reference else ("voxloop",)
    try:
        turns = asyncio.run(bench.run(folder, limit, progress))
    finally:
        if bench.interim is not None:
            bench.interim.close()
    return turns, summarize(turns)


def to_json(turns: list[BenchTurn], summary: dict[str, Any]) -> str:
    return json.dumps({"summary": summary, "turns": [asdict(t) for t in turns]}, default=str)
