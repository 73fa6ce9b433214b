"""`voxloop serve`'s guards (issue 16): the Host it answers to (DNS rebinding), tokens that are
not ASCII, /health and /metrics off loopback, a client flooding audio, frames over the
protocol's limits, SIGTERM with an embedded LLM server, and a session's own tasks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import ROOT, TEST_PRESET

pytestmark = pytest.mark.integration
TOKEN = "test-token-456"
WS_LIMIT = 4 * 1024 * 1024  # the WebSocket frame limit docs/protocol.md gives


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"{self.host}:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start(home: Path, *args: str, host: str = "127.0.0.1", env: dict[str, str] | None = None) -> Served:
    """`voxloop serve` in a subprocess, its output in a file the tests can read at any time."""
    from voxloop.llm.server import free_port

    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    log = home / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voxloop", "serve", "--host", host, "--port", str(port), *args],
            env={**os.environ, "VOXLOOP_HOME": str(home), "VOXLOOP_LLM_TEMPERATURE": "0", **(env or {})},
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    served = Served(proc, host, port, log)
    deadline = time.monotonic() + 300  # the embedded LLM may have its model to prepare first
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"http://{served.base}/health", timeout=1)
            return served  # answering (200, or 401 off loopback)
        assert proc.poll() is None, served.output()
        time.sleep(0.3)
    served.stop()
    raise AssertionError(f"voxloop serve did not answer: {served.output()[-2000:]}")


@pytest.fixture(scope="module")
def plain(llm_server, tmp_path_factory) -> Iterator[Served]:
    """The default: loopback, no token; one extra name allowed."""
    served = start(tmp_path_factory.mktemp("plain"), "--llm-url", llm_server, "--allow-host", "voice.lan")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def remote(llm_server, tmp_path_factory) -> Iterator[Served]:
    """Off loopback (127.0.0.2 is not one of voxloop's loopback names), so with a token."""
    served = start(
        tmp_path_factory.mktemp("remote"), "--llm-url", llm_server, "--token", TOKEN, host="127.0.0.2"
    )
    yield served
    served.stop()


def metric(served: Served, name: str) -> float:
    text = httpx.get(f"http://{served.base}/metrics").text
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    assert values, f"{name} is not in /metrics"
    return float(values[0])


async def next_event(ws: Any, timeout: float = 10) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout=timeout)
        if isinstance(message, str):
            return dict(json.loads(message))


# -- 1. DNS rebinding ---------------------------------------------------------------------------
async def test_a_foreign_host_is_refused_on_every_route(plain):
    """A page on evil.example that rebinds its name to 127.0.0.1 sends Host: evil.example:PORT
    and, for the WebSocket, its own Origin: both must be refused."""
    foreign = f"evil.example:{plain.port}"
    for path in ("/", "/health", "/metrics", "/ws", "/nowhere"):
        r = httpx.get(f"http://{plain.base}{path}", headers={"Host": foreign})
        assert r.status_code == 403, (path, r.status_code, r.text[:200])
        assert "evil.example" in r.text and "--allow-host" in r.text and "\n" not in r.text.strip()
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(
            f"ws://{foreign}/ws", host="127.0.0.1", port=plain.port, origin=f"http://{foreign}"
        ):
            pass
    assert refused.value.response.status_code == 403
    assert "Traceback" not in plain.output()


async def test_the_names_the_server_answers_to_are_allowed(plain):
    for name in ("localhost", "127.0.0.1", "[::1]", "voice.lan", "Voice.LAN"):
        r = httpx.get(f"http://{plain.base}/", headers={"Host": f"{name}:{plain.port}"})
        assert r.status_code == 200 and "getUserMedia" in r.text, name
    named = f"voice.lan:{plain.port}"  # --allow-host voice.lan, its page's own Origin
    async with websockets.connect(
        f"ws://{named}/ws", host="127.0.0.1", port=plain.port, origin=f"http://{named}"
    ) as ws:
        assert (await next_event(ws))["type"] == "hello"


# -- 2. a token that is not ASCII -----------------------------------------------------------------
async def test_a_non_ascii_token_is_refused_without_a_traceback(remote):
    assert httpx.get(f"http://{remote.base}/?token=%C3%A9").status_code == 403
    assert httpx.get(f"http://{remote.base}/health?token=%C3%A9").status_code == 401
    bearer = {"Authorization": "Bearer é".encode("latin-1")}
    assert httpx.get(f"http://{remote.base}/metrics", headers=bearer).status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(f"ws://{remote.base}/ws?token=%C3%A9"):
            pass
    assert refused.value.response.status_code == 403
    assert "Traceback" not in remote.output() and "Exception" not in remote.output()


# -- 3. /health and /metrics off loopback ---------------------------------------------------------
def test_health_and_metrics_need_the_token_off_loopback(remote, plain):
    for path in ("/health", "/metrics"):
        url = f"http://{remote.base}{path}"
        refused = httpx.get(url)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", path
        assert "token" in refused.text
        assert httpx.get(url, params={"token": "wrong"}).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url, params={"token": TOKEN}).status_code == 200
        assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert httpx.get(f"http://{plain.base}{path}").status_code == 200  # loopback: open
    assert httpx.get(f"http://{remote.base}/health", params={"token": TOKEN}).json()["status"] == "ok"


# -- 4. a client flooding audio -------------------------------------------------------------------
async def test_audio_sent_faster_than_real_time_is_limited(plain):
    """2 s frames as fast as the socket takes them (the report: ~1,772 s of audio in 5 s)."""
    accepted_before = metric(plain, "voxloop_audio_in_seconds_total")
    errors: list[str] = []
    sent_s = 0.0
    started = time.monotonic()
    async with websockets.connect(f"ws://{plain.base}/ws", origin=f"http://{plain.base}") as ws:
        assert (await next_event(ws))["type"] == "hello"

        async def listen() -> None:
            while True:
                event = await next_event(ws, timeout=60)
                if event["type"] == "error":
                    errors.append(event["message"])

        listener = asyncio.create_task(listen())
        while time.monotonic() - started < 3.0:
            await ws.send(b"\0" * 64_000)
            sent_s += 2.0
        await asyncio.sleep(0.5)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    # The close handshake comes after every frame: the server has counted them all by now.
    elapsed = time.monotonic() - started
    accepted = metric(plain, "voxloop_audio_in_seconds_total") - accepted_before
    assert sent_s > 30, f"the flood sent only {sent_s} s of audio"
    assert accepted <= 4.0 + 2.0 * elapsed + 2.0, f"{accepted:.0f} s accepted of {sent_s:.0f} s sent"
    assert metric(plain, "voxloop_audio_dropped_seconds_total") > 0
    assert len(errors) == 1 and "faster than" in errors[0], errors  # one, not one per frame


# -- 5. frames over the protocol's limits --------------------------------------------------------
async def test_an_oversized_frame_gets_an_error_and_the_session_goes_on(plain):
    async with websockets.connect(f"ws://{plain.base}/ws", origin=f"http://{plain.base}") as ws:
        assert (await next_event(ws))["type"] == "hello"
        await ws.send(b"\0" * (3 << 19))  # 1.5 MiB: over 64,000 bytes, under the socket's limit
        event = await next_event(ws)
        assert event["type"] == "error" and "1572864 bytes refused" in event["message"], event
        await ws.send(json.dumps({"type": "nope"}))  # still open and answering
        assert "'nope'" in (await next_event(ws))["message"]
        with pytest.raises(ConnectionClosed) as closed:
            await ws.send(b"\0" * (WS_LIMIT + 2))  # over the socket's own limit: closed, as documented
            await next_event(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


# -- the session owns its interrupt ---------------------------------------------------------------
async def test_closing_a_session_cancels_an_interrupt_under_way():
    """Every task has an owner: an interrupt still running when the client leaves is cancelled
    and awaited by the session's close, not left behind."""
    from voxloop.server.session import Session
    from voxloop.settings import Settings

    cancelled = asyncio.Event()

    class StuckAssistant:
        async def interrupt(self) -> bool:
            try:
                await asyncio.Event().wait()  # never ends on its own
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return True

    async def send(message: Any) -> None:
        pass

    app = SimpleNamespace(settings=Settings(), synthesizer=SimpleNamespace(sample_rate=24000))
    session = Session(app, send, send)
    session.assistant = StuckAssistant()
    session.control(json.dumps({"type": "interrupt"}))
    await asyncio.sleep(0.05)
    await session.close()
    assert cancelled.is_set()
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


# -- 6. SIGTERM -----------------------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (psutil is not one of voxloop's dependencies)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        todo += children
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("runtime", ["auto", "xllamacpp"])
def test_sigterm_stops_serve_and_its_embedded_llm_server(tmp_path, runtime):
    """llama-server itself, or the child Python that runs the xllamacpp wheel's server."""
    from voxloop.llm.server import pid_alive

    if runtime == "xllamacpp":
        pytest.importorskip("xllamacpp", reason="pip install 'voxloop[xllamacpp]'")
    env = {"VOXLOOP_LLM_PRESET": TEST_PRESET, "VOXLOOP_LLM_RUNTIME": runtime}
    served = start(tmp_path / "home", env=env)
    children: list[int] = []
    try:
        children = _descendants(served.proc.pid)
        names = {pid: _cmdline(pid) for pid in children}
        assert any("llama-server" in c or "voxloop.llm.xllama" in c for c in names.values()), names
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=15) == 0  # a graceful stop, not death by signal
        deadline = time.monotonic() + 15
        while any(pid_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {pid: names[pid] for pid in children if pid_alive(pid)}
        assert not left, f"left running after SIGTERM: {left}"
        assert "Traceback" not in served.output(), served.output()[-2000:]
    finally:
        for pid in children:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
