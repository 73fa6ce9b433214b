"""Fuzzing voxloop's own WebSocket (issue 16): a real `voxloop serve` with real models, sent frames
of odd sizes, control messages that are not what docs/protocol.md describes, floods, a client
that never reads, clients that leave mid-reply and many that come and go at once.

Each case asserts what a client is promised: an ``error`` event of one line saying what was
wrong and what to send instead, or a close code; and, after every case (``still_serving``),
that the server logged no traceback, that its open sessions went back to none, and that a new
session gets its hello and an answer. The guards test_serve_security.py covers (a foreign Host,
audio sent too fast, a frame over 4 MiB) are not repeated here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from conftest import wer
from test_serve import converse
from test_serve_security import Served, metric, next_event, start
from voxloop.audio.speech import spoken_turns

pytestmark = pytest.mark.integration
QUESTION = "What is the capital of France?"
WS_LIMIT = 4 * 1024 * 1024  # the WebSocket's own limit on a message (docs/protocol.md)
# What a log must never hold: a traceback, or a task whose failure nobody looked at.
BAD_LOG = ("Traceback", "Task exception was never retrieved", "Task was destroyed", "Exception in ASGI")


@pytest.fixture(scope="module")
def served(llm_server, tmp_path_factory) -> Iterator[Served]:
    server = start(tmp_path_factory.mktemp("fuzz"), "--llm-url", llm_server)
    yield server
    server.stop()
    # A task's failure nobody retrieved is logged when the task is collected, at the latest at exit.
    assert "never retrieved" not in server.output() and "was destroyed" not in server.output()


@pytest.fixture(scope="module")
def question(synthesizer) -> bytes:
    """The spoken question as a browser sends it: 16 kHz mono PCM16."""
    return (np.clip(spoken_turns(synthesizer, [QUESTION]), -1, 1) * 32767).astype("<i2").tobytes()


def clean(log: str) -> None:
    assert not [bad for bad in BAD_LOG if bad in log], log[-3000:]


async def sessions(served: Served) -> int:
    async with httpx.AsyncClient() as client:
        return int((await client.get(f"http://{served.base}/health")).json()["sessions"])


async def sessions_go_down(served: Served, to: int = 0, within_s: float = 5.0) -> int:
    """The sessions /health counts, once down to ``to`` or after ``within_s``."""
    deadline = time.monotonic() + within_s
    while (count := await sessions(served)) > to and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return count


def connect(served: Served, **kwargs: Any) -> Any:
    return websockets.connect(f"ws://{served.base}/ws", max_size=None, **kwargs)


async def probe(ws: Any) -> None:
    """The session still reads and answers: an unknown type gets its error event, in order."""
    await ws.send(json.dumps({"type": "probe"}))
    event = await next_event(ws)
    assert event["type"] == "error" and "'probe'" in event["message"], event


def one_line(event: dict[str, Any]) -> str:
    """An error event's message, checked to be what docs/protocol.md promises: one short line
    saying what was wrong and what to send instead."""
    assert event["type"] == "error", event
    message = str(event["message"])
    assert "\n" not in message and len(message) < 200, message
    assert "send" in message.lower() or "must be" in message, message
    return message


@pytest.fixture(autouse=True)
async def still_serving(served, request) -> AsyncIterator[None]:
    """After every case: no traceback in the server's log, every session it opened closed, and a
    new session still gets its hello and an answer."""
    since = len(served.output())
    yield
    assert await sessions_go_down(served) == 0, "a session stayed open after its client left"
    async with connect(served) as ws:
        hello = await next_event(ws)
        assert hello["type"] == "hello" and hello["protocol"] == 2, hello
        await probe(ws)
    clean(served.output()[since:])


# -- binary frames ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "refused"),
    [
        (0, False),  # an even length: no samples, nothing to say
        (1, True),
        (641, True),  # a 20 ms frame and one byte: odd, not PCM16
        (64_000, False),  # exactly the protocol's limit: 2 s of audio
        (64_001, True),
        (64_002, True),  # even, just over the limit
        (WS_LIMIT, True),  # exactly the socket's limit: read, refused, the session goes on
    ],
    ids=str,
)
async def test_a_binary_frame_of_an_odd_size(served, size, refused):
    async with connect(served) as ws:
        assert (await next_event(ws))["type"] == "hello"
        await ws.send(b"\0" * size)
        if refused:
            message = one_line(await next_event(ws))
            assert f"{size} bytes refused" in message and "640 bytes" in message, message
        await probe(ws)  # the first event after an accepted frame: nothing was said about it


# -- text frames ----------------------------------------------------------------------------------
MALFORMED = "Malformed control message"
UNKNOWN = "Unknown control message type"
SYSTEM = "config.system must be"
TOO_LONG = "over 8,000 characters"


def _exactly(chars: int) -> str:
    """An object of an unknown type, exactly ``chars`` characters long as JSON text."""
    text = json.dumps({"type": "pad", "pad": ""})
    return json.dumps({"type": "pad", "pad": "x" * (chars - len(text))})


CONTROL = {
    "truncated-json": ('{"type": "config", "system": "Be brief."', MALFORMED),
    "single-quotes": ("{'type': 'interrupt'}", MALFORMED),
    "empty": ("", MALFORMED),
    "an-array": ('[{"type": "interrupt"}]', MALFORMED),
    "a-string": ('"interrupt"', MALFORMED),
    "a-number": ("42", MALFORMED),
    "null": ("null", MALFORMED),
    "no-type": ('{"kind": "config", "system": "Be brief."}', MALFORMED),
    "type-a-number": ('{"type": 7}', f"{UNKNOWN} 7:"),
    "type-null": ('{"type": null}', f"{UNKNOWN} None:"),
    "type-an-object": ('{"type": {"type": "config"}}', UNKNOWN),
    "type-nan": ('{"type": NaN}', f"{UNKNOWN} nan:"),
    "type-with-newline-and-nul": ('{"type": "inter\\nrupt\\u0000"}', UNKNOWN),
    "type-a-huge-string": (json.dumps({"type": "x" * 7_980}), UNKNOWN),  # not echoed whole
    "type-a-5000-digit-number": ('{"type": ' + "9" * 5_000 + "}", MALFORMED),  # over int's digit cap
    "config-without-system": ('{"type": "config"}', SYSTEM),
    "config-system-a-number": ('{"type": "config", "system": 5}', SYSTEM),
    "config-system-a-list": ('{"type": "config", "system": ["Be brief."]}', SYSTEM),
    "config-system-too-long": (json.dumps({"type": "config", "system": "x" * 4_001}), SYSTEM),
    "config-system-a-lone-surrogate": ('{"type": "config", "system": "\\ud800 Be brief."}', SYSTEM),
    "exactly-8000-characters": (_exactly(8_000), f"{UNKNOWN} 'pad'"),  # read, not refused for size
    "8001-characters": (_exactly(8_001), TOO_LONG),
    "a-megabyte": ("x" * 1_000_000, TOO_LONG),
    "nested-3999-deep": ("[" * 3_999 + "]" * 3_999, MALFORMED),
    "objects-nested-1100-deep": ('{"a": ' * 1_100 + "1" + "}" * 1_100, MALFORMED),
    "type-nested-3000-deep": ('{"type": ' + "[" * 3_000 + "]" * 3_000 + "}", MALFORMED),
}


@pytest.mark.parametrize(("text", "says"), CONTROL.values(), ids=CONTROL.keys())
async def test_a_control_message_that_is_not_what_the_protocol_describes(served, text, says):
    async with connect(served) as ws:
        assert (await next_event(ws))["type"] == "hello"
        await ws.send(text)
        assert says in one_line(await next_event(ws))
        await probe(ws)


async def test_a_text_frame_that_is_not_utf8_closes_the_socket_with_1007(served):
    since = len(served.output())
    async with connect(served) as ws:
        assert (await next_event(ws))["type"] == "hello"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.send(b'{"type": "\xff\xfe"}', text=True)
            await next_event(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007  # invalid data
    log = served.output()[since:]
    clean(log)
    assert "not UTF-8; its socket was closed (1007)" in log  # one line that says what happened


async def test_a_session_sent_every_kind_of_garbage_still_answers_a_spoken_question(served, question):
    """Garbage before the first audio (a config with a lone surrogate among it) and between the
    frames: the same session then hears the question and answers it in full."""
    garbage: list[str | bytes] = [text for text, _ in CONTROL.values()]
    garbage += [b"", b"\x01", b"\0" * 641, b"\0" * 64_001, b"\0" * 64_000]
    events, samples = await converse(served.base, np.frombuffer(question, "<i2") / 32768, before=garbage)
    errors = [one_line(e) for e in events if e["type"] == "error"]
    assert len(errors) == len(CONTROL) + 3, errors  # one per refused message, no other
    heard = next(e for e in events if e["type"] == "transcript")["text"]
    assert wer(QUESTION, heard) <= 0.25, heard
    done = next(e for e in events if e["type"] == "turn_done")
    assert done["assistant"] and done["error"] is None, done
    assert samples > 24_000 * 0.5


# -- floods ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "answers"),
    [("x", 5_000), (json.dumps({"type": "interrupt"}), 0)],
    ids=["malformed", "interrupt"],
)
async def test_a_flood_of_small_text_messages_is_answered_in_order_while_others_are_served(
    served, text, answers
):
    async with connect(served) as flooding:
        assert (await next_event(flooding))["type"] == "hello"
        for _ in range(5_000):
            await flooding.send(text)
        started = time.monotonic()
        async with connect(served) as other:  # meanwhile, another session is let in at once
            assert (await next_event(other, timeout=3))["type"] == "hello"
            await probe(other)
        assert time.monotonic() - started < 3
        for _ in range(answers):
            assert MALFORMED in one_line(await next_event(flooding))
        await probe(flooding)  # nothing more was said: its answer comes next


class Unread:
    """A client that never reads until told to: websockets' sans-I/O protocol over a plain socket
    whose receive buffer is as small as the kernel allows. (The asyncio client would read ahead
    into its own queue.) Blocking calls: run them in a thread."""

    def __init__(self, served: Served) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect((served.host, served.port))
        self.conn = ClientProtocol(parse_uri(f"ws://{served.base}/ws"), max_size=None)
        self.conn.send_request(self.conn.connect())
        self.sock.sendall(b"".join(self.conn.data_to_send()))
        self.events: list[dict[str, Any]] = []  # the text frames it read, as JSON
        self.cut = False  # a send was cut short, maybe mid-frame: nothing more may go out
        while not self.events and self._read_some():  # up to the hello
            pass

    def _read_some(self) -> bool:
        """Read what has come; False at the end of the stream."""
        data = self.sock.recv(65536)
        if data:
            self.conn.receive_data(data)
        else:
            self.conn.receive_eof()
        for event in self.conn.events_received():
            if isinstance(event, Response):
                assert event.status_code == 101, event
            elif event.opcode is Opcode.TEXT:
                self.events.append(json.loads(event.data))
        pending = b"".join(self.conn.data_to_send())  # its pongs and close echo
        if pending and not self.cut:
            with contextlib.suppress(OSError):
                self.sock.sendall(pending)
        return bool(data)

    def send_texts(self, text: str, count: int) -> int:
        """Up to ``count`` text frames, one by one, until the socket has taken none for 3 s (the
        server stopped reading them); how many went."""
        self.sock.settimeout(3)
        sent = 0
        try:
            while sent < count:
                self.conn.send_text(text.encode())
                self.sock.sendall(b"".join(self.conn.data_to_send()))
                sent += 1
        except TimeoutError:
            self.cut = True
        finally:
            self.sock.settimeout(10)
        return sent

    def read_to_the_end(self) -> None:
        with contextlib.suppress(OSError):
            while self.conn.close_rcvd is None and self._read_some():
                pass

    def close(self) -> None:
        self.sock.close()


async def test_a_client_that_never_reads_is_given_up_while_others_are_served(served, question):
    """It floods frames that are each answered and reads none of the answers: the server stops
    reading it once its answers back up, gives it up after SEND_TIMEOUT_S (the reason in a 1008
    close frame, should it read again), and a spoken turn in another session meanwhile goes as
    usual."""
    stuck = await asyncio.to_thread(Unread, served)
    try:
        assert [e["type"] for e in stuck.events] == ["hello"]
        pcm = np.frombuffer(question, "<i2") / 32768
        # 80,000 answers of ~100 bytes: twice what the kernel's buffers of one socket hold
        (events, samples), sent = await asyncio.gather(
            converse(served.base, pcm), asyncio.to_thread(stuck.send_texts, "x", 80_000)
        )
        assert next(e for e in events if e["type"] == "turn_done")["assistant"] and samples > 0
        assert await sessions_go_down(served, within_s=15) == 0, "the stuck client's session stayed open"
        await asyncio.to_thread(stuck.read_to_the_end)
        assert stuck.conn.close_rcvd is not None, "no close frame after the backlog"
        assert stuck.conn.close_rcvd.code == 1008 and "stopped reading" in stuck.conn.close_rcvd.reason
        # What the socket's buffers held, in order; what waited beyond them was dropped, not kept.
        answered = [e for e in stuck.events if e["type"] == "error"]
        assert 1_000 < len(answered) < sent, f"{len(answered)} answers for {sent} messages"
    finally:
        stuck.close()


# -- leaving ------------------------------------------------------------------------------------
async def _speak(ws: Any, pcm: bytes, silence_s: float = 3.0) -> None:
    """``pcm`` then silence, in 20 ms frames in real time, as the voice page sends them."""
    for i in range(0, len(pcm), 640):
        await ws.send(pcm[i : i + 640])
        await asyncio.sleep(0.02)
    for _ in range(int(silence_s / 0.02)):
        await ws.send(b"\0" * 640)
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_a_client_that_leaves_mid_reply_and_a_new_one_is_answered(served, question, how):
    """It leaves as the reply's first audio arrives, with a close frame or by dropping the TCP
    connection: its turn is called off (never counted as answered), and the next session's
    question is heard and answered in full."""
    turns = metric(served, "voxloop_turns_total")
    ws = await connect(served)
    speaking = asyncio.create_task(_speak(ws, question))
    try:
        while not isinstance(await asyncio.wait_for(ws.recv(), 30), bytes):
            pass
    finally:
        speaking.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await speaking
    if how == "close":
        await ws.close()
    else:
        ws.transport.abort()
    assert await sessions_go_down(served) == 0
    events, samples = await converse(served.base, np.frombuffer(question, "<i2") / 32768)
    assert wer(QUESTION, next(e for e in events if e["type"] == "transcript")["text"]) <= 0.25
    assert next(e for e in events if e["type"] == "turn_done")["assistant"] and samples > 0
    assert metric(served, "voxloop_turns_total") == turns + 1  # the new one only


def _threads_and_files(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])
    return threads, len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def test_many_sessions_opened_and_dropped_at_once_are_all_freed(served):
    """48 sessions at once, left four ways: after the hello, before reading it, after their first
    audio frame (their pipeline started: a VAD thread each), or dropped mid-audio. /health counts
    none once they are gone, and the server holds no more threads or files than before."""
    threads, files = _threads_and_files(served.proc.pid)

    async def one(i: int) -> None:
        ws = await connect(served)
        if i % 4 == 0:
            await next_event(ws)
        elif i % 4 == 1:
            ws.transport.abort()
            return
        elif i % 4 == 2:
            await ws.send(b"\0" * 640)
            await asyncio.sleep(0.2)
        else:
            await ws.send(b"\0" * 6400)
            ws.transport.abort()
            return
        await ws.close()

    await asyncio.gather(*(one(i) for i in range(48)))
    assert await sessions_go_down(served) == 0
    await asyncio.sleep(0.5)  # the VAD threads of the last ones end as their pipelines do
    now_threads, now_files = _threads_and_files(served.proc.pid)
    assert now_threads <= threads + 6, f"{threads} threads before, {now_threads} after"  # + the pools'
    assert now_files <= files + 4, f"{files} files open before, {now_files} after"


# -- the session's own seams --------------------------------------------------------------------
async def test_a_reply_the_client_never_takes_ends_the_session_and_one_it_left_is_dropped(monkeypatch):
    """The two ends of a send that cannot go through, at the session's seam (a real socket would
    need 4 MB of reply audio to block): one that waits for ever makes the session give the client
    up after SEND_TIMEOUT_S; one whose client left is dropped. Neither reaches the pipeline as an
    exception, nor makes closing the session fail."""
    from types import SimpleNamespace

    from starlette.websockets import WebSocketDisconnect

    from voxloop.server import session as module
    from voxloop.settings import Settings

    monkeypatch.setattr(module, "SEND_TIMEOUT_S", 0.2)
    app = SimpleNamespace(settings=Settings(), synthesizer=SimpleNamespace(sample_rate=24000))

    async def never(payload: Any) -> None:
        await asyncio.Event().wait()

    async def left(payload: Any) -> None:
        raise WebSocketDisconnect(1006)

    stuck = module.Session(app, never, never)
    started = time.monotonic()
    await asyncio.wait_for(stuck.sink.play(np.zeros(2400, np.float32)), 5)  # the audio is dropped
    assert 0.15 < time.monotonic() - started < 2 and stuck.printer.gone.is_set()
    assert stuck.printer.stuck and "stopped reading" in stuck.printer.stuck
    await stuck.close()

    gone = module.Session(app, left, left)
    gone.error("one for the pump")
    await asyncio.wait_for(gone.sink.play(np.zeros(2400, np.float32)), 5)
    await asyncio.wait_for(gone.printer.gone.wait(), 1)
    assert gone.printer.stuck is None  # it left: nothing to tell it
    await gone.close()
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_a_backlog_no_client_takes_is_bounded(monkeypatch):
    """The printer's own bound, for owners that do not wait for room (OpenAI Realtime's route):
    past 4 x MAX_PENDING messages the client is given up and nothing more is held."""
    from voxloop.server.session import MAX_PENDING, SocketPrinter

    async def never(payload: Any) -> None:
        await asyncio.Event().wait()

    printer = SocketPrinter(never)
    for i in range(5 * MAX_PENDING):
        printer.message({"type": "error", "message": f"{i}"})
    await asyncio.wait_for(printer.room(), 1)  # no waiting for room that will never come
    assert printer.gone.is_set() and printer.stuck and f"{4 * MAX_PENDING} messages" in printer.stuck
    printer.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await printer.task
