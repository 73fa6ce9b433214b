"""`voxloop bench --quality`: does voxloop hear right and answer right, and how fast, per model.

Each configuration (an embedded preset, or a server given with --llm-url) answers the spoken
questions of ``benchmarks/quality`` through the real pipeline in real time, as `voxloop chat
--realtime` would (VAD, STT, LLM, TTS). For each it reports, in one run:

- heard: turns whose transcript is within WER 0.25 of what was said;
- answered: replies that hold the known answer (keyword groups in the manifest);
- memory: conversations whose last reply uses a fact from an earlier turn;
- end of speech to first audio p50/p95 over the same turns, and the LLM's tokens/s.

Human recordings in the manifest (``human``) are transcribed once, for the STT's WER.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from voxloop.audio.decode import load_audio
from voxloop.bench import VOXLOOP_STAGES, Bench, percentile, rows_table
from voxloop.bench.score import holds_answer, wer
from voxloop.errors import ConfigError
from voxloop.llm.openai_http import ENGINE_SAMPLING, OpenAIChat
from voxloop.llm.server import embedded_server
from voxloop.settings import BENCHMARKS, Settings, apply_changes

DEFAULT_QUALITY_SET = BENCHMARKS / "quality"
HEARD_WER = 0.25
STAGE_NAMES = {key: label for label, key in VOXLOOP_STAGES}  # the latency bench's stages


@dataclass
class QualityTurn:
    config: str
    recording: str
    kind: str  # question | memory
    topic: str
    voice: str
    text: str
    heard: str | None
    reply: str | None
    wer: float | None
    scored: bool  # has a known answer
    right: bool
    memory: bool  # the turn that asks for an earlier fact
    latency_ms: float | None
    tool: bool = False  # answered by running a tool
    stages: dict[str, float] = dataclasses.field(default_factory=dict)  # the turn's timings, ms


@dataclass(frozen=True, slots=True)
class Config:
    """One thing to measure: a preset on the embedded server, or a given server."""

    name: str
    settings: Settings
    url: str = ""  # "" = start the embedded server for the preset


def load_quality_set(folder: Path) -> dict[str, Any]:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise ConfigError(f"No quality set at {folder} (manifest.json missing). Pass --set DIR.")
    data: dict[str, Any] = json.loads(manifest.read_text())
    return data


@contextlib.contextmanager
def _server(config: Config, say: Callable[[str], None]) -> Iterator[str]:
    if config.url:
        yield config.url
        return
    with embedded_server(config.settings.llm, say) as server:
        yield server.url


async def server_speed(url: str, settings: Settings) -> dict[str, Any]:
    """The model the server serves, and its generation and prompt speed from one fixed request:
    the server's own timings where it gives them (llama.cpp), else completion tokens over wall
    time."""
    chat = OpenAIChat(url, settings.llm)
    await chat.connect()
    await chat.aclose()
    body = {
        **ENGINE_SAMPLING.get(chat.engine, {}),
        "model": chat.model,
        "messages": [
            {"role": "system", "content": settings.system_prompt},
            {"role": "user", "content": "Tell me about the history of the bicycle."},
        ],
        "max_tokens": 64,
        "temperature": 0.0,
        "ignore_eos": True,
    }
    async with httpx.AsyncClient(timeout=120) as client:
        started = time.perf_counter()
        response = await client.post(chat.url + "/chat/completions", json=body)
        wall = time.perf_counter() - started
    data = response.json()
    timings = data.get("timings") or {}
    if "predicted_per_second" in timings:
        return {
            "model": chat.model,
            "gen_tok_s": float(timings["predicted_per_second"]),
            "prompt_tok_s": float(timings.get("prompt_per_second", float("nan"))),
        }
    tokens = (data.get("usage") or {}).get("completion_tokens", 0)
    return {
        "model": chat.model,
        "gen_tok_s": tokens / wall if wall else float("nan"),
        "prompt_tok_s": float("nan"),
    }


def _turns(config: str, rec: dict[str, Any], done: list[Any]) -> list[QualityTurn]:
    out = []
    for truth, got in zip(rec["turns"], done, strict=True):
        answer = truth.get("answer")
        out.append(
            QualityTurn(
                config=config,
                recording=rec["file"],
                kind=rec.get("kind", "question"),
                topic=rec.get("topic", ""),
                voice=rec.get("voice", ""),
                text=truth["text"],
                heard=got.heard,
                reply=got.reply,
                wer=None if got.heard is None else wer(truth["text"], got.heard),
                scored=bool(answer),
                right=bool(answer) and holds_answer(got.reply, answer),
                memory=bool(truth.get("memory")),
                latency_ms=got.latency_ms,
                tool=bool(got.tools),
                stages=dict(got.stages),
            )
        )
    return out


async def _run_config(
    bench: Bench, config: Config, recordings: list[dict[str, Any]], folder: Path, say: Callable[[str], None]
) -> tuple[list[QualityTurn], dict[str, Any]]:
    server = await server_speed(bench.url, config.settings)
    turns: list[QualityTurn] = []
    for n, rec in enumerate(recordings, 1):
        samples = load_audio(folder / rec["file"])
        say(f"{config.name}: {n}/{len(recordings)} {rec['file']} ({rec.get('voice', '')})")
        done = await bench.voxloop(rec["file"], samples, rec["turns"])
        turns += _turns(config.name, rec, done)
    return turns, server


def summarize(turns: list[QualityTurn], server: dict[str, Any]) -> dict[str, Any]:
    """One configuration's figures; ``server`` is :func:`server_speed`'s (the model, tokens/s)."""
    heard = [t for t in turns if t.wer is not None and t.wer <= HEARD_WER]
    scored = [t for t in turns if t.scored]
    heard_scored = [t for t in scored if t.wer is not None and t.wer <= HEARD_WER]
    memory = [t for t in turns if t.memory]
    latencies = [t.latency_ms for t in turns if t.latency_ms is not None]
    with_tool = [t.latency_ms for t in turns if t.latency_ms is not None and t.tool]
    without = [t.latency_ms for t in turns if t.latency_ms is not None and not t.tool]
    return {
        **server,
        "turns": len(turns),
        "heard": len(heard),
        "scored": len(scored),
        "answered": sum(t.right for t in scored),
        "heard_scored": len(heard_scored),
        "answered_of_heard": sum(t.right for t in heard_scored),
        "memory": sum(t.right for t in memory),
        "memory_turns": len(memory),
        "latency_p50_ms": percentile(latencies, 0.5),
        "latency_p95_ms": percentile(latencies, 0.95),
        "replied": len(latencies),
        # First audio of the turns a tool answered, and of the others.
        "tool_turns": len(with_tool),
        "tool_latency_p50_ms": percentile(with_tool, 0.5) if with_tool else float("nan"),
        "plain_latency_p50_ms": percentile(without, 0.5) if without else float("nan"),
        # Where the time goes, p50 over the turns that have the stage.
        "stages_p50_ms": {
            stage: percentile(values, 0.5)
            for stage in STAGE_NAMES
            if (values := [t.stages[stage] for t in turns if stage in t.stages])
        },
    }


def human_wer(bench: Bench, folder: Path, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The STT alone on real human recordings: mean WER, and each clip's transcript."""
    rows = []
    for item in items:
        samples = load_audio(folder / item["file"])
        started = time.perf_counter()
        text = bench.transcriber.transcribe(samples)
        rows.append(
            {
                "file": item["file"],
                "text": item["text"],
                "heard": text,
                "wer": wer(item["text"], text),
                "stt_ms": (time.perf_counter() - started) * 1000,
            }
        )
    mean = sum(r["wer"] for r in rows) / len(rows) if rows else float("nan")
    return {"clips": len(rows), "mean_wer": mean, "rows": rows}


def run_quality(
    configs: list[Config], folder: Path, limit: int | None, say: Callable[[str], None]
) -> dict[str, Any]:
    data = load_quality_set(folder)
    recordings = list(data["recordings"])[:limit]
    if not configs:
        raise ConfigError("Nothing to measure: give --llm-preset, --presets or --llm-url.")
    bench = Bench(configs[0].settings, "")
    results: dict[str, Any] = {"configs": {}, "turns": []}
    try:
        results["stt"] = human_wer(bench, folder, list(data.get("human") or []))
        for config in configs:
            with _server(config, say) as url:
                bench.url = url
                bench.settings = config.settings
                turns, server = asyncio.run(_run_config(bench, config, recordings, folder, say))
            results["configs"][config.name] = summarize(turns, server)
            results["turns"] += [asdict(t) for t in turns]
    finally:
        if bench.interim is not None:
            bench.interim.close()
    return results


def preset_configs(settings: Settings, names: list[str]) -> list[Config]:
    """One configuration per embedded preset, otherwise the same settings."""
    out = []
    for name in names:
        llm = apply_changes(settings.llm, {"preset": name, "gguf": ""}, "llm.")  # checks the name
        out.append(Config(name, dataclasses.replace(settings, llm=llm)))
    return out


def quality_table(results: dict[str, Any]) -> str:
    rows = []
    for name, s in results["configs"].items():
        rows.append(
            {
                "config": name,
                "model": s["model"],
                "heard": f"{s['heard']}/{s['turns']}",
                "answered": f"{s['answered']}/{s['scored']}",
                "of heard": f"{s['answered_of_heard']}/{s['heard_scored']}",
                "memory": f"{s['memory']}/{s['memory_turns']}",
                "p50": s["latency_p50_ms"],
                "p95": s["latency_p95_ms"],
                "tok/s": s["gen_tok_s"],
                "tool": f"{s['tool_turns']}: {s['tool_latency_p50_ms']:.0f}",
                "plain": s["plain_latency_p50_ms"],
            }
        )
    columns = [
        ("config", "config", ""),
        ("model", "model", ".32s"),
        ("heard", "heard", ""),
        ("answered", "answered", ""),
        ("answered of heard", "of heard", ""),
        ("memory", "memory", ""),
        ("first audio p50 ms", "p50", ".0f"),
        ("p95 ms", "p95", ".0f"),
        ("gen tok/s", "tok/s", ".1f"),
        ("tool turns: p50 ms", "tool", ""),
        ("others p50 ms", "plain", ".0f"),
    ]
    text = rows_table(rows, columns) if rows else "(no configuration ran)"
    for name, s in results["configs"].items():
        stages = s.get("stages_p50_ms") or {}
        if stages:
            parts = ", ".join(f"{STAGE_NAMES[k]} {v:.0f}" for k, v in stages.items())
            text += f"\n{name}, p50 ms: {parts}"
    stt = results.get("stt") or {}
    if stt.get("clips"):
        text += f"\nSTT on {stt['clips']} human recordings: mean WER {stt['mean_wer']:.1%}"
    return text


def plot_quality(results: dict[str, Any], path: Path) -> Path:
    """Answered right (%) against first-audio latency, one point per configuration (p50, with a
    line to p95)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in results["configs"].items():
        right = 100 * s["answered"] / max(s["scored"], 1)
        ax.plot([s["latency_p50_ms"], s["latency_p95_ms"]], [right, right], color="#bbbbbb", zorder=1)
        ax.scatter([s["latency_p50_ms"]], [right], s=60, zorder=2)
        ax.annotate(f"{name} ({s['model']})", (s["latency_p50_ms"], right), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)  # fmt: skip
    ax.axvline(600, color="#e15759", linestyle=":", linewidth=1)
    ax.set_xlabel("end of speech → first audio, ms (dot p50, line to p95)")
    ax.set_ylabel("questions answered right, %")
    ax.set_ylim(0, 105)
    ax.set_title("Answer quality against latency, per configuration")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
