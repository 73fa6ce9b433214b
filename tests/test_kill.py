"""``kill -9`` of the embedded LLM server and of voxloop itself, through the real programs
(issue 16). The LLM is the embedded llama.cpp server on the tiny preset; STT, VAD and TTS are the
real ones. The matrix, case by case (what a user sees):

| case | expected behaviour | test |
|---|---|---|
| the LLM killed mid-reply in ``voxloop chat`` | the turn's error says so in one line (no traceback); the part already spoken stays in the history and in ``conversation.jsonl``, marked as cut; the server is restarted once (one line) and the next spoken turn of the recording is answered | ``test_the_llm_killed_mid_reply_in_chat`` |
| the LLM killed between turns in ``voxloop chat`` (as it reads the reply into its prompt cache) | one line says it is restarted; the next turn is answered with no error | ``test_the_llm_killed_between_turns_in_chat`` |
| a request that finds the server just killed, before any word | asked again of the restarted server: answered, no error | ``test_a_request_to_a_server_just_killed_is_asked_again`` |
| ``voxloop chat`` killed mid-reply | ``conversation.jsonl`` holds only whole lines, every earlier turn among them; no child (llama.cpp server, interim transcripts) outlives it; a new ``voxloop chat`` in the same folder answers, drops a line a killed write cut short, and leaves the earlier turns' reply audio alone | ``test_chat_killed_mid_reply`` |
| the LLM killed under ``voxloop serve`` | restarted on the same port (one line); the sessions' next turns are answered | ``test_serve_killed_mid_session`` |
| ``voxloop serve`` killed mid-session | no llama.cpp server left running (the restarted one included); a new ``serve`` on the same port starts | ``test_serve_killed_mid_session`` |
| ``voxloop wyoming`` killed mid-reply | no llama.cpp server left running; a new ``wyoming`` on the same port answers | ``test_wyoming_killed_mid_reply`` |
| the LLM killed again within 30 s of its restart | left down, said in one line; asking it says why | ``test_a_server_that_dies_again_at_once_is_left_down`` |
| (found on the way) a reply asked again after the stall guard's restart | llama-server streams what was said again first: not said twice | ``test_a_reply_asked_again_after_a_stall_is_not_said_twice`` |

(There is no ``--resume``: a new ``voxloop chat`` starts a new conversation, appended to the
same ``conversation.jsonl``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import soundfile as sf
import websockets
from wyoming.client import AsyncTcpClient
from wyoming.handle import HandledChunk, HandledStop
from wyoming.info import Describe, Info

from conftest import ROOT, TEST_PRESET

pytestmark = pytest.mark.integration

STORY = "Tell me a long story about a dragon and a knight."
QUESTION = "What is the capital of France?"
RESTARTING = "The embedded LLM server stopped (killed by SIGKILL); restarting it…"


# -- voxloop's children ---------------------------------------------------------------------------
def is_llm(p: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        line = " ".join(p.cmdline())
        return "llama-server" in line or "voxloop.llm.xllama" in line
    return False


def children(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return list(psutil.Process(pid).children(recursive=True))
    return []


def llm_of(pid: int, timeout: float = 60) -> psutil.Process:
    """The one embedded LLM server below ``pid``, once it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in children(pid) if is_llm(p)]
        if len(found) == 1:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no single LLM server below {pid}: {[p.cmdline() for p in children(pid)]}")


def left_running(procs: list[psutil.Process], timeout: float = 10) -> list[str]:
    """The command lines of those still running after ``timeout`` (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    names = []
    for p in alive:
        with contextlib.suppress(psutil.Error):
            names.append(" ".join(p.cmdline()) + f" (pid {p.pid}, {p.status()})")
    return names


@contextlib.contextmanager
def reaped(procs: list[psutil.Process]) -> Iterator[None]:
    """Whatever a test asserts, nothing it started outlives it."""
    try:
        yield
    finally:
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()


# -- a command running in the background, its JSON events read as they come -----------------------
@dataclass
class Running:
    proc: subprocess.Popen[str]
    err: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @classmethod
    def start(cls, args: list[str], env: dict[str, str], err: Path) -> Running:
        with err.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "voxloop", *args],
                env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=out, text=True,
            )  # fmt: skip
        running = cls(proc, err)
        threading.Thread(target=running._read, daemon=True).start()
        return running

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def until(self, wanted: Callable[[dict[str, Any]], bool], timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out; events so far: {self.events}; {self.stderr()}") from None
            if line is None:
                raise AssertionError(f"it ended first; events: {self.events}; {self.stderr()}")
            if line.startswith("{"):
                self.events.append(json.loads(line))
                if wanted(self.events[-1]):
                    return self.events[-1]

    def finish(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout)
        while (line := self._lines.get(timeout=10)) is not None:
            if line.startswith("{"):
                self.events.append(json.loads(line))
        return code

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def done(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "turn_done"]


def saved(out: Path) -> list[dict[str, Any]]:
    """conversation.jsonl, every line of it parsed (a torn line fails the test here)."""
    return [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]


def chat(voxloop_env: dict[str, str], wav: Path, out: Path, *extra: str) -> Running:
    args = ["chat", "--input", str(wav), "--realtime", "--no-speak", "--json", "-o", str(out), *extra]
    return Running.start(args, voxloop_env, out.parent / f"{out.name}.err")


# -- the LLM killed under voxloop chat ------------------------------------------------------------
def test_the_llm_killed_mid_reply_in_chat(speech, voxloop_env, tmp_path):
    wav = speech([STORY, QUESTION], turn_gap_s=6.0)
    out = tmp_path / "out"
    run = chat(voxloop_env, wav, out, "--max-tokens", "400")
    kids: list[psutil.Process] = []
    with reaped(kids):
        run.until(lambda e: e["type"] == "first_audio")  # the reply is being spoken
        # The server now: on a busy box the stall guard may have moved it to one thread already.
        kids.append(llm_of(run.proc.pid))
        kids[0].send_signal(signal.SIGKILL)
        run.until(lambda e: e["type"] == "turn_done" and e["error"] is None)
        kids += children(run.proc.pid)  # the server started again
        code = run.finish()
        assert left_running(kids) == []  # stopped with the conversation
    err = run.stderr()
    assert "Traceback" not in err, err
    assert code == 6, err  # a turn got no complete reply
    first, second = run.done()
    assert "stopped mid-reply (killed by SIGKILL)" in first["error"], first
    assert first["assistant"].endswith(" …") and len(first["assistant"]) > 2, first  # heard, then cut
    assert err.count(first["error"]) == 1, err  # said once, on one line
    assert err.count(RESTARTING) == 1, err
    assert second["error"] is None and second["assistant"], second
    assert [s["assistant"] for s in saved(out)] == [first["assistant"], second["assistant"]]


def test_the_llm_killed_between_turns_in_chat(speech, voxloop_env, tmp_path):
    """Right after a turn, as the server reads the reply into its prompt cache; the next request
    finds it dead or being started again."""
    wav = speech(["Hello there!", QUESTION], turn_gap_s=5.0)
    out = tmp_path / "out"
    run = chat(voxloop_env, wav, out)
    kids: list[psutil.Process] = []
    with reaped(kids):
        run.until(lambda e: e["type"] == "turn_done")
        kids.append(llm_of(run.proc.pid))
        kids[0].send_signal(signal.SIGKILL)
        code = run.finish()
    err = run.stderr()
    assert code == 0 and "Traceback" not in err, err
    assert err.count(RESTARTING) == 1, err
    assert [(d["error"], bool(d["assistant"])) for d in run.done()] == [(None, True), (None, True)]


# -- voxloop chat killed ----------------------------------------------------------------------------
def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_chat_killed_mid_reply(speech, voxloop, voxloop_env, tmp_path):
    wav = speech([QUESTION, STORY], turn_gap_s=5.0)
    out = tmp_path / "out"
    run = chat(voxloop_env, wav, out, "--max-tokens", "400")
    llm_of(run.proc.pid)
    kids: list[psutil.Process] = []
    with reaped(kids):
        first = run.until(lambda e: e["type"] == "turn_done")
        run.until(lambda e: e["type"] == "first_audio")  # the second reply is being spoken
        kids += children(run.proc.pid)
        llms = [p for p in kids if is_llm(p)]
        run.proc.send_signal(signal.SIGKILL)
        assert run.proc.wait(10) == -signal.SIGKILL
        assert len(llms) == 1 and left_running(llms) == []
        assert len(kids) >= 2 and left_running(kids) == []  # the interim transcripts' process too
        run.finish()
    before = saved(out)
    assert [(s["user"], s["assistant"]) for s in before] == [(first["user"], first["assistant"])]
    heard_before = _sha(before[0]["reply_audio"])

    # A write the kill cut short (as a full disk or a kill inside a long write would leave it).
    with (out / "conversation.jsonl").open("a") as f:
        f.write('{"time": "2026-12-01T01:00:00+0000", "type": "turn_d')
    again = voxloop("chat", "--input", str(speech(["Hello there!"])), "--no-speak", "--json", "-o", str(out))
    assert again.code == 0 and "Traceback" not in again.err, again.err
    assert "cut short" in again.err, again.err
    after = saved(out)
    assert after[0] == before[0] and len(after) == 2 and after[1]["assistant"], after
    assert after[1]["reply_audio"] != before[0]["reply_audio"], after  # its own file
    assert _sha(before[0]["reply_audio"]) == heard_before  # the earlier reply's audio is kept


# -- voxloop serve killed ---------------------------------------------------------------------------
@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _start(command: str, home: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    """``voxloop COMMAND --port PORT`` on the embedded tiny preset, its output in a log file."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"{command}-{time.monotonic_ns()}.log"
    env = {
        **os.environ,
        "VOXLOOP_HOME": str(home),
        "VOXLOOP_LLM_TEMPERATURE": "0",
        "VOXLOOP_LLM_PRESET": TEST_PRESET,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voxloop", command, "--port", str(port)],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    return proc, log


def serve(home: Path, port: int) -> Served:
    """`voxloop serve` on the embedded tiny preset, once /health answers."""
    proc, log = _start("serve", home, port)
    served = Served(proc, port, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return served
        if proc.poll() is not None:
            raise AssertionError(served.output())
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"voxloop serve did not answer: {served.output()[-2000:]}")


def pcm16(path: Path) -> bytes:
    samples, rate = sf.read(str(path), dtype="float32")
    assert rate == 16000
    return bytes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


async def speak(ws: Any, pcm: bytes, until: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Send ``pcm`` in real time, then silence, until an event of type ``until`` comes."""
    events: list[dict[str, Any]] = []

    async def send() -> None:
        for i in range(0, len(pcm), 640):
            await ws.send(pcm[i : i + 640])
            await asyncio.sleep(0.02)
        while True:
            await ws.send(b"\0" * 640)
            await asyncio.sleep(0.02)

    sender = asyncio.create_task(send())
    try:
        while True:
            message = await asyncio.wait_for(ws.recv(), timeout)
            if isinstance(message, str):
                events.append(json.loads(message))
                if events[-1]["type"] == until:
                    return events
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


def test_serve_killed_mid_session(speech, tmp_path):
    from voxloop.llm.server import free_port

    port = free_port()
    served = serve(tmp_path / "home", port)
    first_llm = llm_of(served.proc.pid)
    kids = [first_llm]
    with reaped(kids):
        # The LLM dies under a running server: restarted on the same port, and answering.
        first_llm.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 60
        while RESTARTING not in served.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        kids.append(llm_of(served.proc.pid))

        async def session() -> list[dict[str, Any]]:
            base = f"127.0.0.1:{port}"
            async with websockets.connect(f"ws://{base}/ws", origin=f"http://{base}", max_size=None) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
                answered = await speak(ws, pcm16(speech([QUESTION])), until="turn_done")
                # voxloop serve is killed while it speaks its second reply.
                await speak(ws, pcm16(speech([STORY])), until="reply_delta")
                kids.extend(children(served.proc.pid))
                served.proc.send_signal(signal.SIGKILL)
                return answered

        answered = asyncio.run(session())
        assert served.proc.wait(10) == -signal.SIGKILL
        assert left_running(kids) == []
    output = served.output()
    assert output.count(RESTARTING) == 1 and "Traceback" not in output, output
    turn = next(e for e in answered if e["type"] == "turn_done")
    assert turn["error"] is None and turn["assistant"], answered

    again = serve(tmp_path / "home", port)  # the same port is free again
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok"
    finally:
        again.proc.terminate()
        assert again.proc.wait(20) == 0


# -- voxloop wyoming killed -------------------------------------------------------------------------
def wyoming(home: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    proc, log = _start("wyoming", home, port)
    deadline = time.monotonic() + 120
    while "listens on" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.2)
    return proc, log


def test_wyoming_killed_mid_reply(tmp_path):
    from wyoming.asr import Transcript

    from voxloop.llm.server import free_port

    port = free_port()
    proc, log = wyoming(tmp_path / "home", port)
    kids = [llm_of(proc.pid)]
    with reaped(kids):

        async def ask() -> None:
            async with AsyncTcpClient("127.0.0.1", port, connect_timeout=5) as c:
                context = {"conversation_id": "kitchen"}
                await c.write_event(Transcript(text=STORY, context=context).event())
                while True:
                    event = await asyncio.wait_for(c.read_event(), 60)
                    assert event is not None and not HandledStop.is_type(event.type), "no reply streamed"
                    if HandledChunk.is_type(event.type):
                        break
                kids.extend(children(proc.pid))
                proc.send_signal(signal.SIGKILL)

        asyncio.run(ask())
        assert proc.wait(10) == -signal.SIGKILL
        assert left_running(kids) == []
    assert "Traceback" not in log.read_text(errors="replace")

    again, _ = wyoming(tmp_path / "home", port)  # the same port is free again

    async def describe() -> bool:
        async with AsyncTcpClient("127.0.0.1", port, connect_timeout=5) as c:
            await c.write_event(Describe().event())
            event = await asyncio.wait_for(c.read_event(), 5)
        return event is not None and Info.is_type(event.type)

    try:
        assert asyncio.run(describe())
    finally:
        again.terminate()
        assert again.wait(20) == 0


# -- the supervision itself, in process ------------------------------------------------------------
@pytest.fixture
def home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VOXLOOP_HOME", str(tmp_path / "home"))


async def test_a_request_to_a_server_just_killed_is_asked_again(home):
    """The request finds the server dead before it said anything: no error, the same question
    answered by the server started in its place."""
    from voxloop.llm.openai_http import OpenAIChat
    from voxloop.llm.server import embedded_server
    from voxloop.llm.stall import StallGuard
    from voxloop.settings import LlmSettings

    settings = LlmSettings(preset=TEST_PRESET, temperature=0.0, max_tokens=16)
    notices: list[str] = []
    with embedded_server(settings, notices.append) as server:
        # No stall watch (a busy box would stall two threads): only the death is tested here.
        guard = StallGuard(OpenAIChat(server.url, settings), server, notices.append, 60.0, 60.0)
        await guard.connect()
        assert server.proc is not None
        with reaped([psutil.Process(server.proc.pid)]):
            server.proc.kill()
            reply = [piece async for piece in guard.stream([{"role": "user", "content": QUESTION}])]
            await guard.aclose()
    assert "".join(reply).strip(), reply
    assert notices[1:] == [RESTARTING], notices


def test_a_server_that_dies_again_at_once_is_left_down(home):
    from voxloop.errors import LLMUnavailableError
    from voxloop.llm.server import answers, embedded_server
    from voxloop.settings import LlmSettings

    notices: list[str] = []
    with embedded_server(LlmSettings(preset=TEST_PRESET), notices.append) as server:
        url, first = server.url, server.proc
        assert first is not None
        with reaped([psutil.Process(first.pid)]):
            first.kill()
            assert server.after_loss(first)  # started again, where it was
            assert server.url == url and answers(url)
            second = server.proc
            assert second is not None and second is not first
            second.kill()
            with pytest.raises(LLMUnavailableError, match="does not restart it again"):
                server.after_loss(second)
    assert notices[1:] == [RESTARTING, server.down], notices
    assert "stopped again (killed by SIGKILL)" in server.down and server.log_path in server.down


# -- found on the way -----------------------------------------------------------------------------
async def test_a_reply_asked_again_after_a_stall_is_not_said_twice(home):
    """After the stall guard restarts the server it asks it to go on from what was said, and
    llama-server streams that text again first: it is not said (nor kept) twice."""
    from voxloop.llm.openai_http import OpenAIChat
    from voxloop.llm.server import embedded_server
    from voxloop.llm.stall import StallGuard
    from voxloop.settings import LlmSettings

    settings = LlmSettings(preset=TEST_PRESET, temperature=0.0, max_tokens=48)
    pieces: list[str] = []
    restarted_at: list[int] = []
    with embedded_server(settings, lambda _: None) as server:
        # A wait for the next piece no server meets: the first gap after the first piece is a stall.
        guard = StallGuard(
            OpenAIChat(server.url, settings), server, lambda _: restarted_at.append(len(pieces)), 30.0, 1e-4
        )
        await guard.connect()
        async for piece in guard.stream([{"role": "user", "content": STORY}]):
            pieces.append(piece)
        await guard.aclose()
    assert len(restarted_at) == 1 and 0 < restarted_at[0] < len(pieces), (restarted_at, pieces)
    said, rest = "".join(pieces[: restarted_at[0]]), "".join(pieces[restarted_at[0] :])
    assert rest.strip() and not rest.startswith(said), (said, rest)
