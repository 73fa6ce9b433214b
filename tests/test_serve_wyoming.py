"""`voxloop serve --wyoming`: Home Assistant's Wyoming protocol inside the `voxloop serve`
process, on its models, driven by the real `wyoming` client (describe, a spoken question
transcribed, a conversation-agent turn) and counted on /metrics; stopped with the server by
SIGTERM or Ctrl-C; a port it cannot have said in one line. And `voxloop bench --sessions
--protocols` comparing voxloop's protocol, the Realtime API and Wyoming in one run."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.handle import Handled
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize

from conftest import ROOT, wer
from kit import STALL, ScriptedChat, Voice, Words
from test_serve import TOKEN, start_serve
from voxloop.llm.server import free_port
from voxloop.server.wyoming import WyomingOptions
from voxloop.settings import Settings

QUESTION = "What is the capital of France?"


# -- the glue, on fakes: which models, which pools, what is counted, who closes what ------------
async def test_wyoming_beside_the_app_uses_its_models_counts_sessions_and_closes_first():
    from voxloop.server.app import ServerState, build_app
    from voxloop.server.wyoming_serve import beside

    chat = ScriptedChat(["Paris is the capital of France."], ["Once upon a time, ", STALL])
    state = ServerState(Settings(), Words(QUESTION), chat, Voice())
    app = build_app(state)
    said: list[str] = []
    port = free_port()

    def counted() -> tuple[float | None, float | None]:
        labels = {"protocol": "wyoming"}
        get = state.registry.get_sample_value
        return get("voxloop_sessions_total", labels), get("voxloop_sessions_active", labels)

    try:
        async with beside(app, state, WyomingOptions(port=port), said.append) as server:
            assert (server.stt_thread, server.tts_thread) == (state.stt_pool, state.tts_pool)
            assert counted() == (0, 0)
            async with app.router.lifespan_context(app):
                async with AsyncTcpClient("127.0.0.1", port) as c:
                    await c.write_event(Describe().event())
                    await read_until(c, "info", timeout=1)
                    assert counted() == (0, 0)  # describe alone is no session
                    await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
                    await c.write_event(
                        AudioChunk(rate=16000, width=2, channels=1, audio=bytes(16000)).event()
                    )
                    await c.write_event(AudioStop().event())
                    assert Transcript.from_event((await read_until(c, "transcript"))[-1]).text == QUESTION
                    await c.write_event(Synthesize(text="Hello there.").event())
                    await read_until(c, "audio-stop")
                    await c.write_event(Transcript(text=QUESTION).event())
                    handled = Handled.from_event((await read_until(c, "handled"))[-1])
                    assert handled.text == "Paris is the capital of France."
                    assert counted() == (1, 1)
                # the state's own models did the work
                assert state.transcriber.heard == 1 and state.synthesizer.said == ["Hello there."]
                late = AsyncTcpClient("127.0.0.1", port)
                await late.connect()
                await late.write_event(Transcript(text="Tell me a story.").event())
                await read_until(late, "handled-chunk")  # the reply is under way when the app stops
            # the app's shutdown closed Wyoming: the open connection ended, its LLM stream closed
            assert await asyncio.wait_for(late.read_event(), 5) is None
            await late.disconnect()
            assert chat.closed_early == 1 and counted() == (2, 0)
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert any(f"tcp://127.0.0.1:{port}" in line for line in said)
    finally:
        state.stt_pool.shutdown()
        state.tts_pool.shutdown()


# -- the real thing --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(llm_server, tmp_path_factory) -> Iterator[tuple[str, int]]:
    """One `voxloop serve --wyoming PORT`: the HTTP base and the Wyoming port."""
    port = free_port()
    proc, base = start_serve(
        llm_server, str(tmp_path_factory.mktemp("serve-wyoming")), "--wyoming", str(port)
    )
    yield base, port
    proc.terminate()
    proc.wait(timeout=30)


def sessions(base: str, protocol: str) -> tuple[float, float]:
    """voxloop_sessions_total and voxloop_sessions_active of ``protocol`` on /metrics."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"http://{base}/metrics").text):
        for sample in family.samples:
            if sample.labels.get("protocol") == protocol:
                found[sample.name] = sample.value
    return found["voxloop_sessions_total"], found["voxloop_sessions_active"]


async def read_until(c: AsyncTcpClient, kind: str, timeout: float = 60) -> list[Event]:
    events: list[Event] = []
    while True:
        event = await asyncio.wait_for(c.read_event(), timeout)
        assert event is not None, f"the server closed the connection after {[e.type for e in events]}"
        events.append(event)
        assert event.type != "error", event.data
        if event.type == kind:
            return events


def spoken(speech: Callable[..., Any], text: str) -> bytes:
    samples, rate = sf.read(str(speech([text])), dtype="float32")
    assert rate == 16000
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.mark.integration
async def test_describe_transcribe_and_handle_on_serve_counted_as_one_wyoming_session(served, speech):
    base, port = served
    assert sessions(base, "wyoming") == (0, 0)
    # describe alone, as Home Assistant checks a server is there: not a session
    async with AsyncTcpClient("127.0.0.1", port) as c:
        await c.write_event(Describe().event())
        t0 = time.perf_counter()
        info = Info.from_event((await read_until(c, "info", timeout=1))[-1])
        took = time.perf_counter() - t0
    assert took < 1.0
    assert (
        [p.name for p in info.asr]
        == [p.name for p in info.tts]
        == [p.name for p in info.handle]
        == ["voxloop"]
    )

    async with AsyncTcpClient("127.0.0.1", port) as c:
        await c.write_event(Describe().event())
        await read_until(c, "info", timeout=1)
        await c.write_event(Transcribe(language="en").event())
        await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        pcm = spoken(speech, QUESTION)
        for i in range(0, len(pcm), 2048):
            await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i : i + 2048]).event())
        await c.write_event(AudioStop().event())
        heard = Transcript.from_event((await read_until(c, "transcript"))[-1]).text
        assert wer(QUESTION, heard) <= 0.25, heard
        await read_until(c, "transcript-stop")

        await c.write_event(Transcript(text=heard, context={"conversation_id": "kitchen"}).event())
        handled = Handled.from_event((await read_until(c, "handled"))[-1])
        assert handled.text.strip() and handled.context == {"conversation_id": "kitchen"}
        assert sessions(base, "wyoming") == (1, 1)  # counted while the connection is open
    deadline = time.monotonic() + 10
    while sessions(base, "wyoming")[1] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert sessions(base, "wyoming") == (1, 0)
    assert sessions(base, "voxloop") == (0, 0)  # the other protocols' counts are their own


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
async def test_a_signal_stops_serve_and_its_wyoming_server_mid_reply(llm_server, tmp_path, sig):
    port = free_port()
    proc, _ = start_serve(llm_server, str(tmp_path), "--wyoming", str(port))
    try:
        async with AsyncTcpClient("127.0.0.1", port) as c:
            await c.write_event(Transcript(text="Tell me a long story about a dragon and a knight.").event())
            await read_until(c, "handled-start")  # a reply is being written
            proc.send_signal(sig)
            t0 = time.perf_counter()
            code = await asyncio.to_thread(proc.wait, 30)
            stopped_s = time.perf_counter() - t0
        output = proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"\n{sig.name}: serve --wyoming stopped in {stopped_s * 1000:.0f} ms")
    assert code == 0, output
    assert "Traceback" not in output, output
    assert "Wyoming (Home Assistant): tcp://127.0.0.1:" in output
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.integration
def test_a_wyoming_port_in_use_is_one_line(llm_server, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "voxloop", "serve", "--port", str(free_port()), "--wyoming", str(port),
             "--llm-url", llm_server, "--token", TOKEN],
            env={**os.environ, "VOXLOOP_HOME": str(tmp_path)}, cwd=ROOT,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    (line,) = [x for x in run.stderr.splitlines() if x.startswith("error:")]
    assert f"127.0.0.1:{port} for Wyoming" in line and "--wyoming" in line


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["serve", "--wyoming", "70000"], "--wyoming takes a port from 1 to 65535"),
        (["serve", "--port", "9001", "--wyoming", "9001"], "is the page's --port too"),
        (["bench", "--sessions", "1", "--protocols", "voxloop,sip"], "--protocols takes a list of"),
    ],
)
def test_bad_wyoming_and_protocol_flags_are_one_line(voxloop, args, said):
    run = voxloop(*args, "--llm-url", "http://127.0.0.1:9/v1", timeout=60)
    assert run.code == 2 and said in run.err and "Traceback" not in run.err, run.err


def test_wyoming_without_a_port_takes_10300():
    from voxloop.cli import _parser

    assert _parser().parse_args(["serve", "--wyoming"]).wyoming == 10300
    assert _parser().parse_args(["serve"]).wyoming is None


@pytest.mark.integration
def test_bench_compares_the_three_protocols_at_the_same_load(voxloop, llm_server):
    from voxloop.bench.sessions import sessions_table

    run = voxloop(
        "bench", "--sessions", "1", "--protocols", "voxloop,realtime,wyoming", "--limit", "1",
        "--llm-url", llm_server, "--json", timeout=600,
    )  # fmt: skip
    assert run.code == 0, run.err
    rows = json.loads(run.out)
    assert [(r["sessions"], r["protocol"]) for r in rows] == [(1, "voxloop"), (1, "realtime"), (1, "wyoming")]
    for row in rows:
        assert row["turns"] == 1 and row["errors"] == 0 and row["no_audio"] == 0, row
        # (a Realtime reply made speculatively may send audio a moment before its transcript)
        assert 0 < row["transcript_p50_ms"] < 10_000 and 0 < row["first_audio_p50_ms"] < 10_000, row
        assert math.isfinite(row["first_audio_p95_ms"]) and row["measured"], row
    wyoming = rows[2]  # the voice is fed the agent's reply, which needs the transcript first
    assert wyoming["transcript_p50_ms"] < wyoming["first_audio_p50_ms"], wyoming
    table = sessions_table(rows)
    print("\n" + table)
    lines = table.splitlines()
    for protocol in ("voxloop", "realtime", "wyoming"):
        (row,) = [line for line in lines[1:4] if f" {protocol} " in f" {line} "]
        assert sum(c.isdigit() for c in row) > 6, row  # its numbers, not nan
        assert any(line.startswith(f"{protocol}: ") for line in lines[4:])  # what they measure
