"""One browser conversation over a WebSocket (protocol version 2, docs/protocol.md).

The browser sends 16 kHz mono PCM16 frames and JSON control messages; voxloop answers with JSON
events and PCM16 reply audio. Each session has its own VAD state, history and barge-in; the STT,
TTS and LLM are shared by all sessions. The browser cancels its own echo, so a session listens
full duplex and the user can talk over a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from starlette.websockets import WebSocketDisconnect

from voxloop.events import (
    ErrorEvent,
    Event,
    Interrupted,
    Notice,
    ReplyDelta,
    SpeechStarted,
    ToolUsed,
    Transcript,
    TurnDone,
)
from voxloop.pipeline import Assistant
from voxloop.settings import Settings

log = logging.getLogger(__name__)

PROTOCOL = 2  # 2: the events' names and fields are those of `voxloop chat --json`
INPUT_RATE = 16000
MAX_FRAME_BYTES = 64_000  # 2 s of PCM16 at 16 kHz: far more than the 20 ms frames clients send
MAX_CONTROL_BYTES = 8_000
MAX_SYSTEM_CHARS = 4_000
# The WebSocket's own limit on one message: a frame over the protocol's limits but under this one
# is answered with an ``error`` event and the session goes on; only a frame over this one closes
# the socket (1009, message too big), as the server cannot read it without holding it all.
WS_MAX_BYTES = 4 << 20
# Audio a session may send, in seconds of audio per second of wall time: twice real time on
# average, with a burst of a few seconds for a client catching up after a network stall. More
# is dropped, so that one client cannot fill the shared STT and VAD with work.
AUDIO_RATE_X = 2.0
AUDIO_BURST_S = 4.0
MIN_FRAME_S = 0.005  # a frame counts as at least 5 ms, so many tiny frames are not free
WARN_EVERY_S = 5.0
# A client that stops reading (a frozen tab, a stuck script) must not have the server hold its
# messages without bound, nor keep its conversation open for ever. While this many messages wait
# for it, its own frames are not read (they wait in its socket); once one send has waited this
# long for the socket, or the pipeline alone has queued four times as many, it is given up.
MAX_PENDING = 1000
SEND_TIMEOUT_S = 10.0
CLOSE_STUCK = 1008  # the close code then (policy violation), with the reason...
CLOSE_WAIT_S = 30.0  # ...which a client that reads again within this long still gets
SHOWN_CHARS = 40  # of a client's own words repeated in an error event

Send = Callable[[dict[str, Any]], Awaitable[None]]
SendBytes = Callable[[bytes], Awaitable[None]]


class SocketSource:
    """The browser's microphone: PCM16 frames pushed in by the receive loop."""

    sample_rate = INPUT_RATE
    live = False  # the browser cancels echo: full duplex
    started_at: float | None = None

    def __init__(self) -> None:
        self._queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue(maxsize=500)

    def push(self, pcm16: bytes) -> None:
        samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
        if self.started_at is None:
            self.started_at = time.perf_counter() - len(samples) / INPUT_RATE
        with contextlib.suppress(asyncio.QueueFull):  # a flooding client loses audio, not the server
            self._queue.put_nowait(samples)

    def end(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        while (block := await self._queue.get()) is not None:
            yield block

    def discard_pending(self) -> None:
        return None


class SocketSink:
    """Reply audio to the browser as PCM16 frames. The browser plays it at real time, so what has
    been heard is estimated from the clock; the browser holds playback on a ``pause``, goes on
    on a ``resume`` and stops playing on an ``interrupted`` (``notify`` sends those messages)."""

    def __init__(
        self, sample_rate: int, send_bytes: SendBytes, notify: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.rate = sample_rate
        self._send = send_bytes
        self._notify = notify or (lambda message: None)
        self.queued_total = 0
        self._ends_at = 0.0  # when what was sent will have finished playing
        self._held_s: float | None = None  # while paused: seconds of sent audio not yet heard

    def _left_s(self) -> float:
        if self._held_s is not None:
            return self._held_s
        return max(0.0, self._ends_at - time.monotonic())

    @property
    def played_total(self) -> int:
        return max(0, self.queued_total - round(self._left_s() * self.rate))

    async def play(self, samples: np.ndarray) -> None:
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        await self._send(pcm)
        if self._held_s is not None:
            self._held_s += len(samples) / self.rate
        else:
            self._ends_at = max(self._ends_at, time.monotonic()) + len(samples) / self.rate
        self.queued_total += len(samples)

    async def drain(self) -> None:
        return None

    def flush(self) -> None:
        self.queued_total = self.played_total
        self._ends_at = time.monotonic()
        self._held_s = None

    def pause(self) -> None:
        if self._held_s is None:
            self._held_s = self._left_s()
            self._notify({"type": "pause"})

    def resume(self) -> None:
        if self._held_s is not None:
            self._ends_at, self._held_s = time.monotonic() + self._held_s, None
            self._notify({"type": "resume"})

    def busy(self) -> bool:
        return self._left_s() > 0

    def far_end(self, n: int) -> np.ndarray:
        return np.zeros(n, np.float32)

    def close(self) -> None:
        return None


class AudioBudget:
    """A token bucket of audio seconds (a dozen lines; not worth a dependency): it fills at
    ``rate`` seconds of audio per wall second up to ``burst``, and a frame takes its length."""

    def __init__(self, rate: float = AUDIO_RATE_X, burst: float = AUDIO_BURST_S) -> None:
        self.rate, self.burst = rate, burst
        self._left = burst
        self._at = time.monotonic()

    def take(self, seconds: float) -> bool:
        now = time.monotonic()
        self._left = min(self.burst, self._left + (now - self._at) * self.rate)
        self._at = now
        if seconds > self._left:
            return False
        self._left -= seconds
        return True


# The events a session sends, each as its own ``to_dict()``; the reply audio goes as binary
# frames, and where the audio clock stands (ready, speech_ended) is the server's own business.
SENT = (SpeechStarted, Transcript, ReplyDelta, Interrupted, TurnDone, ToolUsed, Notice, ErrorEvent)


class SocketPrinter:
    """Pipeline events as protocol messages, sent in order from one task.

    Everything sent to the client goes through :meth:`deliver`, so this is where a client that
    stops reading shows: its messages pile up and a send waits for ever. Whoever reads the
    client's frames waits for :meth:`room` first (back-pressure, as a socket's own buffers do);
    once a send has waited SEND_TIMEOUT_S, or 4 x MAX_PENDING messages wait, the printer gives the
    client up: ``stuck`` says why, ``gone`` is set (as it is when a send finds the client gone),
    nothing more is sent, and whoever owns the session ends it."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()
        self.gone = asyncio.Event()
        self.stuck: str | None = None
        self.task = asyncio.create_task(self._pump())
        self.on_turn: Callable[[TurnDone], None] | None = None

    async def _pump(self) -> None:
        while True:
            message = await self._queue.get()
            if not await self.deliver(functools.partial(self._send, message)):
                return
            if self._queue.qsize() < MAX_PENDING // 2:
                self._room.set()

    async def room(self) -> None:
        """Return once fewer than MAX_PENDING messages wait for the client (or it is gone)."""
        if self._queue.qsize() >= MAX_PENDING and not self.gone.is_set():
            self._room.clear()
        await self._room.wait()

    async def deliver(self, sending: Callable[[], Awaitable[None]]) -> bool:
        """Send one message or audio frame; False once the client is given up or gone."""
        if self.gone.is_set():
            return False
        try:
            await asyncio.wait_for(sending(), SEND_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.give_up(f"a message waited {SEND_TIMEOUT_S:g} s to be sent")
            return False
        except WebSocketDisconnect:  # it left; the receiving side ends the session
            self._lost()
            return False
        return True

    def give_up(self, why: str) -> None:
        if self.gone.is_set():
            return
        log.warning("A client stopped reading (%s): its session ends.", why)
        self.stuck = f"The client stopped reading ({why}). Reconnect, and read what is sent."
        self._lost()

    def _lost(self) -> None:
        self.gone.set()
        self._room.set()  # nothing waits for room that will never come

    def message(self, message: dict[str, Any]) -> None:
        if self.gone.is_set():
            return
        if self._queue.qsize() >= 4 * MAX_PENDING:
            self.give_up(f"{4 * MAX_PENDING} messages waited")
            return
        self._queue.put_nowait(message)

    def emit(self, event: Event) -> None:
        if not isinstance(event, SENT):
            return
        message = event.to_dict()
        self.message(message)
        if isinstance(event, TurnDone):
            self.message({"type": "metrics", "turn": event.index, "timings": message["timings"]})
            if self.on_turn is not None:
                self.on_turn(event)

    def info(self, message: str) -> None:
        log.info("%s", message)


class Session:
    def __init__(
        self, app: Any, send: Send, send_bytes: SendBytes, printer: SocketPrinter | None = None
    ) -> None:
        """``printer``: another protocol's wire forms for the pipeline's events (OpenAI Realtime)."""
        self.app = app
        self.printer = printer if printer is not None else SocketPrinter(send)
        self.source = SocketSource()
        self._send_bytes = send_bytes
        self.sink = SocketSink(app.synthesizer.sample_rate, self._send_audio, self.printer.message)
        self.settings: Settings = app.settings
        self.assistant: Assistant | None = None
        self._assistant: asyncio.Task[Any] | None = None
        self._interrupting: asyncio.Task[None] | None = None
        self._budget = AudioBudget()
        self._warned_at = -WARN_EVERY_S

    def hello(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "protocol": PROTOCOL,
            "input_sample_rate": INPUT_RATE,
            "output_sample_rate": self.app.synthesizer.sample_rate,
            "frame_ms": 20,
            "model": self.app.chat.model,
        }

    def start(self) -> None:
        assistant = Assistant(
            self.settings,
            self.app.transcriber,
            self.app.chat,
            self.app.synthesizer,
            self.sink,
            self.printer,
            pools=(self.app.stt_pool, self.app.tts_pool),
        )
        self.assistant = assistant
        self.printer.on_turn = self.app.count_turn
        self._assistant = asyncio.create_task(assistant.run(self.source))

    async def _send_audio(self, pcm: bytes) -> None:
        await self.printer.deliver(functools.partial(self._send_bytes, pcm))

    def error(self, message: str) -> None:
        self.printer.message(ErrorEvent(message).to_dict())

    def audio(self, data: bytes) -> None:
        if len(data) > MAX_FRAME_BYTES or len(data) % 2:
            self.error(
                f"Audio frame of {len(data)} bytes refused: send 16 kHz mono PCM16 frames of 20 ms (640 bytes)."
            )
            return
        seconds = len(data) / 2 / INPUT_RATE
        if not self._budget.take(max(seconds, MIN_FRAME_S)):
            self.app.audio_dropped.inc(seconds)
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY_S:
                self._warned_at = now
                self.error(
                    f"Audio arrives faster than {AUDIO_RATE_X:g}x real time; frames are being "
                    "dropped. Send 20 ms frames as the microphone gives them."
                )
            return
        self.app.audio_in.inc(seconds)
        if self._assistant is None:
            self.start()
        self.source.push(data)

    def control(self, text: str) -> None:
        if len(text) > MAX_CONTROL_BYTES:
            self.error(
                f"Control message refused: over {MAX_CONTROL_BYTES:,} characters. "
                'Send JSON like {"type": "config", ...}, shorter.'
            )
            return
        try:
            message = json.loads(text)
            kind = message["type"]
        except (ValueError, KeyError, TypeError, RecursionError):  # Recursion: nested ~1,000 deep
            self.error('Malformed control message: send JSON like {"type": "config", ...}.')
            return
        if kind == "config":
            system = message.get("system")
            if not isinstance(system, str) or len(system) > MAX_SYSTEM_CHARS or not valid_unicode(system):
                self.error(
                    f"config.system must be a string of at most {MAX_SYSTEM_CHARS} characters "
                    "(valid Unicode: no lone surrogates)."
                )
                return
            if self._assistant is not None:
                self.error("config must come before the first audio frame.")
                return
            self.settings = dataclasses.replace(self.settings, system_prompt=system)
            self.printer.message({"type": "config_ok"})
        elif kind == "interrupt":
            if self._interrupting is None or self._interrupting.done():  # else one is under way
                self._interrupting = asyncio.create_task(self._interrupt())
        else:
            shown = repr(kind)
            shown = shown if len(shown) <= SHOWN_CHARS else shown[: SHOWN_CHARS - 1] + "…"
            self.error(f'Unknown control message type {shown}: send "config" or "interrupt".')

    async def _interrupt(self) -> None:
        if self.assistant is not None:
            await self.assistant.interrupt()

    async def close(self) -> None:
        """The client went away: stop listening, close any LLM stream, send nothing more."""
        self.source.end()
        if self._interrupting is not None:
            self._interrupting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._interrupting
        if self._assistant is not None:
            self._assistant.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._assistant
        self.printer.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.printer.task


def valid_unicode(value: Any) -> bool:
    """Whether ``value`` (a str, or parsed JSON) can go to the LLM server: JSON's ``"\\ud800"``
    is a str Python holds but no UTF-8 request body can carry."""
    try:
        (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def read_while_read(printer: SocketPrinter, read: Callable[[], Awaitable[bool]]) -> None:
    """Read a client's frames (``read`` returns False once it has left) for as long as it reads
    what it is sent: none while ``printer`` holds MAX_PENDING messages for it, and none once it
    is given up (then this returns, and the owner ends the session)."""

    async def receive() -> None:
        while True:
            await printer.room()
            if not await read():
                return

    receiving = asyncio.create_task(receive())
    gone = asyncio.create_task(printer.gone.wait())
    try:
        await asyncio.wait({receiving, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (receiving, gone):
            task.cancel()
        await asyncio.wait({receiving, gone})
    if not receiving.cancelled():
        receiving.result()  # a failure of the session's own code is not swallowed


async def close_if_stuck(websocket: Any, printer: SocketPrinter) -> None:
    """A client given up for not reading gets the close frame and why, should it read in time."""
    if printer.stuck is not None:
        with contextlib.suppress(asyncio.TimeoutError, WebSocketDisconnect):
            await asyncio.wait_for(websocket.close(CLOSE_STUCK, printer.stuck), CLOSE_WAIT_S)
