"""`voxloop bench --sessions 1,2,4,8 [--protocols voxloop,realtime,wyoming]`: N clients talking
to one `voxloop serve --wyoming` at once, each a turn of real-time speech, measured on the
client, per N and per protocol. The clients take the protocols in turn (client k speaks
``protocols[k % P]``), and the P clients in a row speak the same recording, so every protocol
hears the same questions at the same load. What each protocol's figures measure is in
:data:`MEASURES` (printed under the table, and in each ``--json`` row):

- ``voxloop``: voxloop's own WebSocket protocol (``/ws``, 16 kHz PCM16 in 20 ms frames);
- ``realtime``: OpenAI's Realtime API (``/v1/realtime``, 24 kHz PCM16 in 20 ms appends, server VAD);
- ``wyoming``: Home Assistant's chain of Wyoming programs, each on its own connection as Home
  Assistant opens them: ``asr`` (16 kHz PCM16 in 20 ms chunks, ``audio-stop`` once Home
  Assistant's VAD would send it), ``handle`` with the transcript, ``tts`` fed the reply.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np

from voxloop.audio.decode import load_audio, resample
from voxloop.bench import load_set, percentile, rows_table
from voxloop.errors import ConfigError, LLMUnavailableError

log = logging.getLogger(__name__)

FRAME_S = 0.02  # every client sends its audio in 20 ms pieces, in real time
TIMEOUT_S = 30.0  # the longest wait for any one answer
TAIL_S = 5.0  # silence sent after the speech while the reply comes (the server VADs need it)
REALTIME_RATE = 24000
# Home Assistant's voice pipeline, as a Wyoming client: its VAD sends audio-stop after 0.7 s of
# silence (the default sensitivity), and it streams the agent's reply to the voice only once the
# reply is over 60 characters (STREAM_RESPONSE_CHARS); a shorter one is synthesized whole.
HA_SILENCE_S = 0.7
HA_STREAM_CHARS = 60

PROTOCOLS = ("voxloop", "realtime", "wyoming")
DEFAULT_PROTOCOLS = ("voxloop",)
DEFAULT_ROUNDS = 3
MEASURES = {
    "voxloop": "/ws: end of speech -> `transcript` event, -> first reply audio frame",
    "realtime": "/v1/realtime: end of speech -> input_audio_transcription.completed, "
    "-> first response.output_audio.delta",
    "wyoming": f"end of speech -> asr `transcript` (audio-stop sent {HA_SILENCE_S} s after it, as "
    "Home Assistant's VAD does), -> first tts audio-chunk (the handle reply fed to tts as Home "
    f"Assistant does: streamed once over {HA_STREAM_CHARS} characters, else whole)",
}


@dataclass(frozen=True, slots=True)
class Heard:
    """One client's turn, in milliseconds from the end of its speech."""

    transcript_ms: float | None
    first_audio_ms: float | None  # None: answered, with nothing to speak


@dataclass(frozen=True, slots=True)
class Target:
    """Where the clients find the server."""

    http: str  # host:port of the HTTP and WebSocket protocols
    wyoming: tuple[str, int] | None


def parse_protocols(text: str | None) -> tuple[str, ...]:
    """``voxloop,realtime,wyoming`` -> the protocols, in that order, each once."""
    if text is None:
        return DEFAULT_PROTOCOLS
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        raise ConfigError(f"--protocols takes a list of {', '.join(PROTOCOLS)} (got {text!r}).")
    return tuple(dict.fromkeys(names))


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


def _pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def _frames(samples: np.ndarray, rate: int, speech_end_s: float, tail_s: float) -> list[bytes]:
    """The clip and ``tail_s`` of silence after its speech, as 20 ms PCM16 frames."""
    size = int(rate * FRAME_S)
    total = max(len(samples), int((speech_end_s + tail_s) * rate))
    padded = np.zeros(math.ceil(total / size) * size, np.float32)
    padded[: len(samples)] = samples
    pcm = _pcm16(padded)
    return [pcm[i : i + size * 2] for i in range(0, len(pcm), size * 2)]


async def _paced(frames: list[bytes], started: float, send: Callable[[bytes], Awaitable[None]]) -> None:
    """Send each frame when a microphone would have it: in real time from ``started``."""
    for i, frame in enumerate(frames):
        await asyncio.sleep(max(0.0, started + (i + 1) * FRAME_S - time.perf_counter()))
        await send(frame)


def _since(t: float | None, speech_end: float) -> float | None:
    return None if t is None else (t - speech_end) * 1000


# -- one client per protocol ------------------------------------------------------------------
async def _voxloop(target: Target, clip: np.ndarray, speech_end_s: float) -> Heard:
    """A browser tab's turn on voxloop's own protocol (docs/protocol.md)."""
    import websockets

    frames = _frames(clip, 16000, speech_end_s, TAIL_S)
    heard_at: float | None = None
    async with websockets.connect(f"ws://{target.http}/ws", max_size=None) as ws:
        await ws.recv()  # hello
        started = time.perf_counter()
        end = started + speech_end_s
        sender = asyncio.create_task(_paced(frames, started, ws.send))
        try:
            while True:
                message = await asyncio.wait_for(ws.recv(), TIMEOUT_S)
                if isinstance(message, bytes):
                    return Heard(_since(heard_at, end), _since(time.perf_counter(), end))
                event = json.loads(message)
                if event.get("type") == "transcript" and heard_at is None:
                    heard_at = time.perf_counter()
                elif event.get("type") == "error":
                    raise RuntimeError(f"voxloop protocol error: {event.get('message')}")
                elif event.get("type") == "turn_done":
                    return Heard(_since(heard_at, end), None)  # a reply with no audio
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)


async def _realtime(target: Target, clip: np.ndarray, speech_end_s: float) -> Heard:
    """An OpenAI Realtime client's turn: GA event names, server VAD (the session's default)."""
    import websockets

    frames = _frames(resample(clip, 16000, REALTIME_RATE), REALTIME_RATE, speech_end_s, TAIL_S)
    heard_at: float | None = None
    url = f"ws://{target.http}/v1/realtime?model=gpt-realtime"
    async with websockets.connect(url, max_size=None) as ws:

        async def append(frame: bytes) -> None:
            audio = base64.b64encode(frame).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))

        created = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        if created.get("type") != "session.created":
            raise RuntimeError(f"Realtime: expected session.created, got {created.get('type')!r}")
        started = time.perf_counter()
        end = started + speech_end_s
        sender = asyncio.create_task(_paced(frames, started, append))
        audio_at: float | None = None
        try:
            # Until both have come: a reply made speculatively can send its first audio a moment
            # before the transcription event of the words it answers.
            while heard_at is None or audio_at is None:
                event = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
                kind = event.get("type")
                if kind == "conversation.item.input_audio_transcription.completed" and heard_at is None:
                    heard_at = time.perf_counter()
                elif kind == "response.output_audio.delta" and audio_at is None:
                    audio_at = time.perf_counter()
                elif kind == "response.done":
                    break
                elif kind == "error":
                    raise RuntimeError(f"Realtime error: {event.get('error', {}).get('message')}")
            return Heard(_since(heard_at, end), _since(audio_at, end))
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)


async def _wyoming(target: Target, clip: np.ndarray, speech_end_s: float) -> Heard:
    """Home Assistant's turn through Wyoming: speech to text, the conversation agent, then the
    voice, each program on a connection of its own."""
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.error import Error
    from wyoming.event import Event
    from wyoming.handle import Handled, HandledChunk, NotHandled
    from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

    assert target.wyoming is not None
    host, port = target.wyoming

    async def until(client: AsyncTcpClient, *kinds: str) -> Event:
        while True:
            event = await asyncio.wait_for(client.read_event(), TIMEOUT_S)
            if event is None:
                raise RuntimeError(f"Wyoming: the server closed the connection before {kinds[0]}")
            if Error.is_type(event.type) or NotHandled.is_type(event.type):
                raise RuntimeError(f"Wyoming {event.type}: {event.data.get('text')}")
            if event.type in kinds:
                return event

    frames = _frames(clip, 16000, speech_end_s, HA_SILENCE_S)
    async with AsyncTcpClient(host, port) as asr:
        await asr.write_event(Transcribe(language="en").event())
        await asr.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        started = time.perf_counter()
        end = started + speech_end_s

        async def chunk(frame: bytes) -> None:
            await asr.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=frame).event())

        await _paced(frames, started, chunk)
        await asr.write_event(AudioStop().event())
        text = Transcript.from_event(await until(asr, "transcript")).text
        heard_at = time.perf_counter()
    if not text.strip():
        return Heard(_since(heard_at, end), None)
    async with AsyncTcpClient(host, port) as agent, AsyncTcpClient(host, port) as voice:
        await agent.write_event(Transcript(text=text, language="en").event())
        first_audio = asyncio.create_task(until(voice, "audio-chunk"))
        try:
            reply, streaming = "", False
            while True:
                event = await until(agent, "handled-chunk", "handled")
                if HandledChunk.is_type(event.type):
                    piece = HandledChunk.from_event(event).text or ""
                    reply += piece
                    if streaming:
                        await voice.write_event(SynthesizeChunk(text=piece).event())
                    elif len(reply) > HA_STREAM_CHARS:
                        await voice.write_event(SynthesizeStart().event())
                        await voice.write_event(SynthesizeChunk(text=reply).event())
                        streaming = True
                    continue
                reply = Handled.from_event(event).text or reply
                break
            if streaming:
                await voice.write_event(SynthesizeStop().event())
            elif reply.strip():
                await voice.write_event(Synthesize(text=reply).event())
            else:
                return Heard(_since(heard_at, end), None)
            await first_audio
            return Heard(_since(heard_at, end), _since(time.perf_counter(), end))
        finally:
            first_audio.cancel()
            await asyncio.gather(first_audio, return_exceptions=True)


CLIENTS: dict[str, Callable[[Target, np.ndarray, float], Awaitable[Heard]]] = {
    "voxloop": _voxloop,
    "realtime": _realtime,
    "wyoming": _wyoming,
}


# -- the load ---------------------------------------------------------------------------------
async def _level(
    target: Target,
    clips: list[tuple[np.ndarray, float]],
    n: int,
    rounds: int,
    protocols: tuple[str, ...],
) -> list[dict[str, Any]]:
    """``rounds`` rounds of ``n`` clients at once (more rounds when there are fewer clients than
    protocols, so that each protocol has ``rounds`` turns at least); a row per protocol."""
    count = len(protocols)
    results: dict[str, list[Heard | BaseException]] = {p: [] for p in protocols}
    for r in range(rounds * math.ceil(count / n)):
        picks = []
        for i in range(n):
            k = r * n + i
            clip, speech_end_s = clips[(k // count) % len(clips)]
            picks.append((protocols[k % count], clip, speech_end_s))
        done = await asyncio.gather(*(CLIENTS[p](target, c, e) for p, c, e in picks), return_exceptions=True)
        for (protocol, _, _), result in zip(picks, done, strict=True):
            if isinstance(result, BaseException):
                log.warning("a %s client failed: %s", protocol, str(result) or type(result).__name__)
            results[protocol].append(result)
    return [_row(n, p, results[p]) for p in protocols]


def _row(n: int, protocol: str, results: list[Heard | BaseException]) -> dict[str, Any]:
    heard = [r for r in results if isinstance(r, Heard)]
    audio = [r.first_audio_ms for r in heard if r.first_audio_ms is not None]
    texts = [r.transcript_ms for r in heard if r.transcript_ms is not None]
    return {
        "sessions": n,
        "protocol": protocol,
        "turns": len(results),
        "no_audio": sum(r.first_audio_ms is None for r in heard),
        "transcript_p50_ms": percentile(texts, 0.5),
        "first_audio_p50_ms": percentile(audio, 0.5),
        "first_audio_p95_ms": percentile(audio, 0.95),
        "errors": len(results) - len(heard),
        "measured": MEASURES[protocol],
    }


async def _all(
    target: Target,
    clips: list[tuple[np.ndarray, float]],
    levels: list[int],
    rounds: int,
    protocols: tuple[str, ...],
) -> list[dict[str, Any]]:
    for protocol in protocols:  # warm-up: a turn of each, alone
        await _level(target, clips, 1, 1, (protocol,))
    return [row for n in levels for row in await _level(target, clips, n, rounds, protocols)]


def _wait_until_serving(server: subprocess.Popen[bytes], port: int, errors: IO[bytes]) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            errors.seek(0)
            err = errors.read().decode(errors="replace").strip()
            raise LLMUnavailableError(f"voxloop serve did not start: {err[-300:]}")
        time.sleep(0.3)


def run_sessions(
    llm_urls: list[str],
    folder: Path,
    levels: list[int],
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS,
    rounds: int = DEFAULT_ROUNDS,
) -> list[dict[str, Any]]:
    """Start one `voxloop serve` (with ``--wyoming`` when a client speaks it), drive it, stop it."""
    from voxloop.llm.server import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "voxloop", "serve", "--port", str(port)]
    wyoming = None
    if "wyoming" in protocols:
        wyoming = ("127.0.0.1", free_port())
        cmd += ["--wyoming", str(wyoming[1])]
    for url in llm_urls:
        cmd += ["--llm-url", url]
    clips = _turns(folder)
    if not clips:
        raise ConfigError(f"No turns to speak in {folder}: its manifest.json lists none.")
    # Its errors go to a file: a pipe nobody reads while the clients run could fill and stall it.
    with tempfile.TemporaryFile() as errors:
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errors, env=dict(os.environ))
        try:
            _wait_until_serving(server, port, errors)
            target = Target(f"127.0.0.1:{port}", wyoming)
            return asyncio.run(_all(target, clips, levels, rounds, protocols))
        finally:
            server.terminate()
            server.wait(timeout=30)


def sessions_table(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("sessions", "sessions", "d"),
        ("protocol", "protocol", "s"),
        ("turns", "turns", "d"),
        ("transcript p50 ms", "transcript_p50_ms", ".0f"),
        ("first audio p50 ms", "first_audio_p50_ms", ".0f"),
        ("p95 ms", "first_audio_p95_ms", ".0f"),
        ("no audio", "no_audio", "d"),
        ("errors", "errors", "d"),
    ]
    shown = dict.fromkeys(r["protocol"] for r in rows)
    legend = [f"{p}: {MEASURES[p]}" for p in shown]
    return "\n".join([rows_table(rows, columns), "", *legend])
