"""`voxloop serve`: the WebSocket protocol (version 2) with real models and a real LLM server,
several conversations at once, and its guards (Origin, token, malformed frames)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from conftest import ROOT, wer
from voxloop.audio.speech import spoken_turns

pytestmark = pytest.mark.integration
TOKEN = "test-token-123"


def start_serve(
    llm_url: str, home: str, *extra: str, scheme: str = "http"
) -> tuple[subprocess.Popen[str], str]:
    """``extra``: more `voxloop serve` flags; ``scheme="https"`` for a server started with --https."""
    from voxloop.llm.server import free_port

    port = free_port()
    env = {**os.environ, "VOXLOOP_HOME": home, "VOXLOOP_LLM_TEMPERATURE": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxloop", "serve", "--port", str(port), "--llm-url", llm_url, "--token", TOKEN, *extra],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            # verify=False: only whether it answers yet; the tests of HTTPS check the certificate
            if httpx.get(f"{scheme}://{base}/health", timeout=1, verify=False).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.3)
    return proc, base


@pytest.fixture(scope="module")
def server(llm_server, tmp_path_factory) -> Iterator[str]:
    proc, base = start_serve(llm_server, str(tmp_path_factory.mktemp("serve-home")))
    yield base
    proc.terminate()
    proc.wait(timeout=10)


async def converse(
    base: str,
    audio: np.ndarray,
    before: list[Any] | None = None,
    origin: str | None = None,
    until: str = "metrics",
    silence_s: float = 3.0,
) -> tuple[list[dict[str, Any]], int]:
    """Stream ``audio`` as a browser would (20 ms PCM16 frames in real time), then ``silence_s``
    of silence; return the events up to the first ``until`` one and the number of reply audio
    samples received."""
    events: list[dict[str, Any]] = []
    samples = 0
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    async with websockets.connect(
        f"ws://{base}/ws?token={TOKEN}", origin=origin or f"http://{base}", max_size=None
    ) as ws:
        events.append(json.loads(await ws.recv()))
        for item in before or []:
            await ws.send(item)

        async def sender() -> None:
            for i in range(0, len(pcm), 640):
                await ws.send(pcm[i : i + 640])
                await asyncio.sleep(0.02)
            for _ in range(int(silence_s / 0.02)):  # silence while the reply comes
                await ws.send(b"\0" * 640)
                await asyncio.sleep(0.02)

        task = asyncio.create_task(sender())
        try:
            while True:
                message = await asyncio.wait_for(ws.recv(), timeout=60)
                if isinstance(message, bytes):
                    samples += len(message) // 2
                    continue
                events.append(json.loads(message))
                if events[-1]["type"] == until:
                    break
        finally:
            task.cancel()
    return events, samples


def test_health_metrics_and_page_need_the_token(server):
    assert httpx.get(f"http://{server}/health").json()["status"] == "ok"
    assert "voxloop_sessions_open" in httpx.get(f"http://{server}/metrics").text
    assert httpx.get(f"http://{server}/").status_code == 403
    page = httpx.get(f"http://{server}/?token={TOKEN}")
    assert page.status_code == 200 and "getUserMedia" in page.text and "AudioWorklet" in page.text


async def test_a_spoken_turn_over_the_websocket(server, synthesizer):
    question = "What is the capital of France?"
    events, samples = await converse(server, spoken_turns(synthesizer, [question]))
    hello = events[0]
    assert hello["type"] == "hello" and hello["protocol"] == 2
    assert (hello["input_sample_rate"], hello["output_sample_rate"]) == (16000, 24000)
    kinds = [e["type"] for e in events]
    assert kinds.index("speech_started") < kinds.index("transcript") < kinds.index("turn_done")
    user = next(e for e in events if e["type"] == "transcript")["text"]
    assert wer(question, user) <= 0.25
    done = next(e for e in events if e["type"] == "turn_done")
    deltas = "".join(e["text"] for e in events if e["type"] == "reply_delta")
    assert done["assistant"] and deltas.strip()
    # The turn as `voxloop chat --json` prints it: who said what, whether it was cut, its tools.
    assert done["user"] == user and done["interrupted"] is False and done["error"] is None
    assert done["tools"] == [] and events[-1] == {"type": "metrics", "turn": 1, "timings": done["timings"]}
    assert samples > 24000 * 0.5  # reply audio arrived as PCM16 at 24 kHz
    metrics = httpx.get(f"http://{server}/metrics").text
    assert "voxloop_turns_total" in metrics and 'voxloop_stage_seconds_count{stage="stt"}' in metrics


async def test_a_timer_set_in_a_session_rings_in_that_session(server, synthesizer):
    asked = spoken_turns(synthesizer, ["Set a timer for three seconds."])
    events, _ = await converse(server, asked, until="notice", silence_s=8.0)
    (tool,) = [e for e in events if e["type"] == "tool"]
    assert tool["name"] == "set_timer" and tool["error"] is None
    done = next(e for e in events if e["type"] == "turn_done")
    assert done["assistant"] == "Okay, 3 second timer started." and done["tools"] == ["set_timer"]
    assert events[-1] == {"type": "notice", "text": "Your 3 second timer is done."}


async def test_concurrent_sessions_each_get_their_own_conversation(server, synthesizer):
    questions = ["What is the capital of France?", "Tell me a joke about cats.", "Hello there, my friend!"]
    results = await asyncio.gather(*(converse(server, spoken_turns(synthesizer, [q])) for q in questions))
    for question, (events, samples) in zip(questions, results, strict=True):
        user = next(e for e in events if e["type"] == "transcript")["text"]
        assert wer(question, user) <= 0.25, (question, user)
        assert next(e for e in events if e["type"] == "turn_done")["assistant"]
        assert samples > 0


async def test_foreign_origin_and_bad_token_are_refused(server):
    with pytest.raises(websockets.exceptions.InvalidStatus):
        async with websockets.connect(f"ws://{server}/ws?token={TOKEN}", origin="http://evil.example"):
            pass
    with pytest.raises(websockets.exceptions.InvalidStatus):
        async with websockets.connect(f"ws://{server}/ws?token=wrong", origin=f"http://{server}"):
            pass


async def test_malformed_frames_get_an_error_and_the_session_goes_on(server, synthesizer):
    question = "What is the capital of France?"
    garbage = ["not json at all", json.dumps({"type": "launch-missiles"}), b"\x01\x02\x03"]
    events, _ = await converse(server, spoken_turns(synthesizer, [question]), before=garbage)
    errors = [e["message"] for e in events if e["type"] == "error"]
    assert len(errors) == 3, errors
    assert any("Malformed" in e for e in errors) and any("launch-missiles" in e for e in errors)
    user = next(e for e in events if e["type"] == "transcript")["text"]
    assert wer(question, user) <= 0.25


async def test_config_sets_the_system_prompt(server, synthesizer):
    config = json.dumps({"type": "config", "system": "You are Pip, a pirate."})
    events, _ = await converse(server, spoken_turns(synthesizer, ["Hello there!"]), before=[config])
    assert any(e["type"] == "config_ok" for e in events)
    assert next(e for e in events if e["type"] == "turn_done")["assistant"]


def sessions(base: str) -> dict[tuple[str, str], float]:
    """/metrics' sessions by protocol: {(sample name, protocol): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://{base}/metrics").text
    assert "voxloop_sessions_open" in text  # the older, unlabelled gauge stays
    return {
        (sample.name, sample.labels["protocol"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in ("voxloop_sessions_total", "voxloop_sessions_active")
    }


async def test_metrics_count_sessions_by_protocol(server):
    protocols = ("voxloop", "realtime", "transcriptions", "speech")
    before = sessions(server)
    assert {p for _, p in before} == set(protocols)  # listed before their first session
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with websockets.connect(f"ws://{server}/ws?token={TOKEN}") as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        assert sessions(server)["voxloop_sessions_active", "voxloop"] >= 1
    async with websockets.connect(f"ws://{server}/v1/realtime", additional_headers=bearer) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        assert sessions(server)["voxloop_sessions_active", "realtime"] >= 1
    asked = {"model": "tts-1", "input": "Good morning.", "voice": "alloy", "response_format": "wav"}
    speech = httpx.post(f"http://{server}/v1/audio/speech", headers=bearer, json=asked, timeout=30)
    assert speech.status_code == 200
    heard = httpx.post(
        f"http://{server}/v1/audio/transcriptions",
        headers=bearer,
        files={"file": ("morning.wav", speech.content, "audio/wav")},
        data={"model": "whisper-1", "response_format": "text"},
        timeout=30,
    )
    assert heard.status_code == 200 and "morning" in heard.text.lower(), heard.text
    wrong = {"Authorization": "Bearer wrong"}  # refused: not a session
    assert httpx.post(f"http://{server}/v1/audio/speech", headers=wrong, json=asked).status_code == 401
    with pytest.raises(websockets.exceptions.InvalidStatus):
        async with websockets.connect(f"ws://{server}/v1/realtime", additional_headers=wrong):
            pass
    deadline = time.monotonic() + 10
    while any(sessions(server)["voxloop_sessions_active", p] for p in protocols):
        assert time.monotonic() < deadline, sessions(server)  # every session ended is counted out
        await asyncio.sleep(0.2)
    after = sessions(server)
    for protocol in protocols:  # one session of each, and only those
        key = ("voxloop_sessions_total", protocol)
        assert after[key] == before[key] + 1, (protocol, before, after)


def _chromium(playwright: Any, *args: str) -> Any:
    """Debian's Chromium, headless, offline, allowed to play sound without a click."""
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("Debian's chromium is installed by .ci/run (apt-get install chromium)")
    return playwright.chromium.launch(
        executable_path=chromium,
        args=[
            "--no-sandbox",
            "--disable-background-networking",
            "--disable-component-update",
            "--autoplay-policy=no-user-gesture-required",
            *args,
        ],
    )


def talk(page: Any) -> tuple[str, str]:
    """Press the page's talk button; once a turn is heard, answered and played (0.5 s of it),
    what the page shows the user said and what voxloop answered."""
    page.click("#talk")
    page.wait_for_selector(".user", timeout=60_000)
    page.wait_for_selector(".ai[data-done='1']", timeout=60_000)
    page.wait_for_function("Number(document.body.dataset.played || 0) > 12000", timeout=30_000)
    return page.inner_text(".user").removeprefix("You: "), page.inner_text(".ai").removeprefix("voxloop: ")


def test_a_conversation_in_a_real_browser(server, synthesizer, tmp_path):
    """Debian's Chromium, driven by Playwright, with a WAV as its microphone."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    from voxloop.audio import save_wav

    question = "What is the capital of France?"
    mic = tmp_path / "mic.wav"
    save_wav(
        mic, np.concatenate([spoken_turns(synthesizer, [question]), np.zeros(16000 * 8, np.float32)]), 16000
    )
    with sync_api.sync_playwright() as p:
        browser = _chromium(
            p,
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic}",
        )
        try:
            page = browser.new_page()
            page.goto(f"http://{server}/?token={TOKEN}")
            user, reply = talk(page)
            page.screenshot(path=str(tmp_path / "page.png"))
            if os.environ.get("VOXLOOP_SCREENSHOT"):
                page.screenshot(path=os.environ["VOXLOOP_SCREENSHOT"])
        finally:
            browser.close()
    assert wer(question, user) <= 0.25, user
    assert reply.strip()
    assert (tmp_path / "page.png").stat().st_size > 5000


def test_the_page_holds_the_reply_on_pause_and_goes_on_where_it_was(server):
    """The page's side of a pause: playback stops where it is, audio that comes meanwhile waits,
    and a resume plays the rest from there; an interruption drops what was held."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    script = """async () => {
      const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
      ctx = new AudioContext(); outRate = 24000;
      playPcm(new Int16Array(24000).fill(1000).buffer);  // 1 s of reply
      await sleep(400);
      onEvent({type: "pause"});
      const onPause = {playing: playing.length, offsets: held.map((h) => h.offset)};
      playPcm(new Int16Array(12000).fill(1000).buffer);  // 0.5 s more arrives while held
      await sleep(300);
      const stillHeld = held.length;
      onEvent({type: "resume"});
      const resumed = playing.length;
      await sleep(1600);
      const end = playing.length;
      playPcm(new Int16Array(24000).fill(1000).buffer);
      onEvent({type: "pause"});
      onEvent({type: "interrupted", spoken: ""});
      return {onPause, stillHeld, resumed, end, afterInterrupt: [held.length, playing.length, paused]};
    }"""
    with sync_api.sync_playwright() as p:
        browser = _chromium(p)
        try:
            page = browser.new_page()
            page.goto(f"http://{server}/?token={TOKEN}")
            state = page.evaluate(script)
        finally:
            browser.close()
    assert state["onPause"]["playing"] == 0, state
    assert len(state["onPause"]["offsets"]) == 1 and 0.2 < state["onPause"]["offsets"][0] < 0.6, state
    assert state["stillHeld"] == 2 and state["resumed"] == 2, state  # the rest, then what came
    assert state["end"] == 0, state  # 0.6 + 0.5 s played out within 1.6 s of the resume
    assert state["afterInterrupt"] == [0, 0, False], state


async def test_closing_the_page_closes_the_reply_stream(proxy, synthesizer, tmp_path):
    """The LLM server sees its client hang up as soon as the browser tab goes away."""
    proxy.slow_s = 0.1  # a reply that takes many seconds to stream
    proc, base = start_serve(proxy.url, str(tmp_path / "home"))
    try:
        pcm = (
            (spoken_turns(synthesizer, ["Tell me a long story about the sea."]) * 32767)
            .astype("<i2")
            .tobytes()
        )
        async with websockets.connect(f"ws://{base}/ws?token={TOKEN}", origin=f"http://{base}") as ws:
            await ws.recv()
            for i in range(0, len(pcm), 640):
                await ws.send(pcm[i : i + 640])
                await asyncio.sleep(0.02)
            for _ in range(100):
                await ws.send(b"\0" * 640)
                await asyncio.sleep(0.02)
                if proxy.chats:
                    break
            while True:  # wait for the reply to start streaming, then leave
                message = await asyncio.wait_for(ws.recv(), timeout=30)
                if isinstance(message, str) and json.loads(message)["type"] == "reply_delta":
                    break
        closed = time.monotonic()
        deadline = closed + 5
        while not proxy.client_gone and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert proxy.client_gone, "the LLM stream stayed open after the page went away"
        assert proxy.client_gone[0] - closed < 2.0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_socket_sink_counts_held_audio_as_not_heard_and_tells_the_page(monkeypatch):
    from voxloop.server import session

    clock = [100.0]
    monkeypatch.setattr(session.time, "monotonic", lambda: clock[0])
    sent: list[bytes] = []
    messages: list[dict[str, Any]] = []

    async def send_bytes(data: bytes) -> None:
        sent.append(data)

    sink = session.SocketSink(1000, send_bytes, messages.append)
    asyncio.run(sink.play(np.zeros(1000, np.float32)))  # 1 s at 1 kHz
    clock[0] += 0.4
    assert sink.played_total == 400
    sink.pause()
    clock[0] += 5.0  # held: nothing more is heard, however long
    asyncio.run(sink.play(np.zeros(500, np.float32)))  # sent while held: waits too
    assert sink.played_total == 400 and sink.busy()
    sink.resume()
    clock[0] += 0.6
    assert sink.played_total == 1000
    clock[0] += 1.0
    assert sink.played_total == 1500 and not sink.busy()
    assert messages == [{"type": "pause"}, {"type": "resume"}] and len(sent) == 2
    asyncio.run(sink.play(np.zeros(1000, np.float32)))
    clock[0] += 0.25
    sink.pause()
    sink.flush()  # an interruption: the held rest is dropped, nothing is owed
    assert sink.played_total == sink.queued_total == 1750 and not sink.busy()
