"""A subset of OpenAI's Realtime API at ``/v1/realtime`` on `voxloop serve` (docs/openai.md).

One connection is one voxloop ``Session``: the same ``Assistant`` (endpointing, speculative
replies, barge-in, history) on the server's shared models, with OpenAI's JSON events in place of
voxloop's own protocol. The client's 24 kHz PCM16 is resampled to the 16 kHz the VAD and Whisper
want, and the reply's audio to 24 kHz. With ``server_vad`` (the default) the audio goes to the
session's endpointer and every turn is answered; with ``turn_detection: null`` it waits in an input
buffer until the client commits it, and is answered on ``response.create``, as typed words are.

Each reply is one response, paired with the voxloop turn that makes it by its ``ReplyJob`` (the
Assistant's ``on_commit`` hook, or ``Assistant.answer`` for typed words), never by timing. A
response in text only (output modalities ``["text"]``, the session's or its ``response.create``'s)
streams its words as ``response.output_text.delta`` and is never voiced: the session's
``SessionVoice`` gives the Assistant no audio for it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hmac
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import soxr
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from voxloop.audio.decode import resample
from voxloop.events import (
    ErrorEvent,
    Event,
    Interrupted,
    Notice,
    ReplyDelta,
    SpeechEnded,
    SpeechStarted,
    Transcript,
    TurnDone,
)
from voxloop.reply import ReplyJob
from voxloop.server import realtime_events as wire
from voxloop.server.openai_audio import stt_model_id
from voxloop.server.realtime_events import Dialect, RealtimeConfig, RealtimeError, Reply
from voxloop.server.session import (
    INPUT_RATE,
    MAX_FRAME_BYTES,
    Send,
    Session,
    SocketPrinter,
    SocketSink,
    close_if_stuck,
    read_while_read,
    valid_unicode,
)
from voxloop.tts import Synthesizer

if TYPE_CHECKING:
    from voxloop.server.app import ServerState

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 4 << 20  # the server's WebSocket limit: ~65 s of 24 kHz audio in one append
MAX_BUFFER_S = 120.0  # the input buffer without server VAD
MIN_COMMIT_S = 0.1  # OpenAI's least: 100 ms of audio
KEY_PROTOCOL = "openai-insecure-api-key."  # the API key as a subprotocol, as browsers send it
BETA_PROTOCOL = "openai-beta.realtime-v1"
UNSUPPORTED = {
    "conversation.item.truncate", "conversation.item.delete", "conversation.item.retrieve",
    "output_audio_buffer.clear", "transcription_session.update",
}  # fmt: skip


@dataclass
class Turn:
    """A voxloop turn being answered: its job, and the response that carries its reply."""

    job: ReplyJob
    item_id: str | None  # the user's audio item it answers (None: typed words)
    reply: Reply | None = None
    heard: bool = False  # its transcription event is out


class SessionVoice:
    """The server's synthesizer as one session's Assistant sees it: silent (no samples, so the
    reply job skips the sentence) while the response being made is text only. ``voiced`` is
    asked in the TTS thread, so it reads state and never iterates it."""

    def __init__(self, synthesizer: Synthesizer, voiced: Callable[[], bool]) -> None:
        self.sample_rate = synthesizer.sample_rate
        self._synthesizer = synthesizer
        self._voiced = voiced

    def synthesize(self, text: str) -> np.ndarray:
        if not self._voiced():
            return np.zeros(0, np.float32)
        return self._synthesizer.synthesize(text)


class EventPrinter(SocketPrinter):
    """The pipeline's events as objects, to a handler, instead of voxloop's own messages."""

    def __init__(self, send: Send, handle: Callable[[Event], None]) -> None:
        super().__init__(send)
        self._handle = handle

    def emit(self, event: Event) -> None:
        if isinstance(event, TurnDone) and self.on_turn is not None:
            self.on_turn(event)
        self._handle(event)


class RealtimeSession(Session):
    """One Realtime connection: its config, input buffer, turns and responses (explicit state)."""

    def __init__(self, app: ServerState, send: Send, beta: bool) -> None:
        super().__init__(app, send, self._audio_out, EventPrinter(send, self._event))
        # The reply's audio goes out as events, so nothing goes through voxloop's pause/resume.
        self.sink = SocketSink(app.synthesizer.sample_rate, self._audio_out)
        self.dialect = Dialect(beta)
        self.id = wire.new_id("sess")
        vad = app.settings.vad
        self.config = RealtimeConfig(
            instructions=app.settings.system_prompt,
            voice="voxloop",
            model=app.chat.model,
            transcriber=stt_model_id(app.settings.stt.model),
            silence_ms=vad.end_silence_ms,
        )
        self._in = soxr.ResampleStream(wire.RATE, INPUT_RATE, 1, "float32")
        self._buffer: list[np.ndarray] = []  # without server VAD: audio waiting for a commit
        self._buffered = 0
        self._pending: list[asyncio.Future[str]] = []  # user words not yet answered
        self._turns: deque[Turn] = deque()  # in the order their replies come
        self._speech_item: str | None = None  # the item the speech being heard will become
        self._stopped_item: str | None = None  # ...and once it stopped, until the turn is committed
        self._partial = ""  # the partial transcript sent so far as deltas
        self._last_item: str | None = None
        self._responding: tuple[Reply, asyncio.Task[None]] | None = None  # a typed answer starting
        self._notice: Reply | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- out ---------------------------------------------------------------------------------------
    def _out(self, *events: dict[str, Any]) -> None:
        for event in events:
            for named in self.dialect.events(event):
                self.printer.message({"event_id": wire.new_id("event"), **named})

    def error(self, message: str, code: str | None = None, param: str | None = None) -> None:
        self._out(wire.error(message, code, param))

    def hello(self) -> dict[str, Any]:
        return wire.session_event("session.created", self.config, self.id, self.dialect.beta)

    def start(self) -> None:
        super().start()
        assert self.assistant is not None
        # Before its run() task starts and builds the reply jobs' models from it.
        self.assistant.synthesizer = SessionVoice(self.app.synthesizer, self._voiced)

    def _voiced(self) -> bool:
        """Whether the reply being made now is spoken: the response that response.create opened,
        else the first turn's (replies come in turn order), else the session's setting."""
        responding = self._responding
        if responding is not None:
            return responding[0].voiced
        turns = self._turns
        reply = turns[0].reply if turns else None
        return reply.voiced if reply is not None else self.config.voiced

    def begin(self) -> None:
        self.settings = dataclasses.replace(self.settings, system_prompt=self.config.instructions)
        self.start()
        assert self.assistant is not None
        self.assistant.on_commit = self._committed
        self.printer.message({"event_id": wire.new_id("event"), **self.hello()})

    # -- in ----------------------------------------------------------------------------------------
    def receive(self, text: str) -> None:
        """One client event; a bad one is answered with an ``error`` event, never a close."""
        event_id = None
        try:
            try:
                event = json.loads(text)
            except (ValueError, RecursionError):  # Recursion: nested ~1,000 deep
                raise RealtimeError("The event is not JSON.", code="invalid_json") from None
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise RealtimeError('An event is a JSON object with a "type".', code="invalid_event")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            if event["type"] != "input_audio_buffer.append" and not valid_unicode(event):
                raise RealtimeError(
                    "The event holds a lone surrogate (such as \\ud800), which no request to the "
                    "LLM can carry: send valid Unicode.",
                    code="invalid_event",
                )
            self._dispatch(event["type"], event)
        except RealtimeError as exc:
            self._out(wire.error(exc.message, exc.code, exc.param, event_id))

    def _dispatch(self, kind: str, event: dict[str, Any]) -> None:
        if kind == "session.update":
            self._update(event.get("session"))
        elif kind == "input_audio_buffer.append":
            self._append(event.get("audio"))
        elif kind == "input_audio_buffer.commit":
            self._commit()
        elif kind == "input_audio_buffer.clear":
            self._buffer, self._buffered = [], 0
            self._out(wire.cleared())
        elif kind == "conversation.item.create":
            self._create_item(event.get("item"))
        elif kind == "response.create":
            self._create_response(event.get("response"))
        elif kind == "response.cancel":
            self._cancel()
        elif kind in UNSUPPORTED:
            raise RealtimeError(f"{kind} is not supported by voxloop.", code="unsupported_event")
        else:
            raise RealtimeError(f"Unknown event type {kind!r}.", code="unknown_event", param="type")

    def _update(self, session: Any) -> None:
        config, beta = self.config.update(session)
        if beta is not None:
            self.dialect.beta = beta
        self.config = config
        if self.assistant is not None:  # new instructions hold from the next reply on
            self.assistant.conversation.system_prompt = config.instructions
        self._out(wire.session_event("session.updated", config, self.id, self.dialect.beta))

    def _append(self, audio: Any) -> None:
        try:
            pcm = base64.b64decode(audio, validate=True) if isinstance(audio, str) else b""
        except (binascii.Error, ValueError):
            pcm = b""
        if not pcm or len(pcm) % 2:
            raise RealtimeError(
                "`audio` must be base64 of PCM16 at 24 kHz, mono, little-endian.", param="audio"
            )
        samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
        samples = self._in.resample_chunk(samples)
        if not self.config.server_vad:
            if self._buffered + len(samples) > MAX_BUFFER_S * INPUT_RATE:
                raise RealtimeError(
                    f"The input buffer holds at most {MAX_BUFFER_S:g} s: commit or clear it.",
                    code="input_audio_buffer_full",
                )
            self._buffer.append(samples)
            self._buffered += len(samples)
            self.app.audio_in.inc(len(samples) / INPUT_RATE)
            return
        data = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        for i in range(0, len(data), MAX_FRAME_BYTES):  # Session.audio's frames: at most 2 s each
            self.audio(data[i : i + MAX_FRAME_BYTES])

    def _commit(self) -> None:
        tail = self._in.resample_chunk(np.zeros(0, np.float32), last=True)
        self._in = soxr.ResampleStream(wire.RATE, INPUT_RATE, 1, "float32")
        audio = np.concatenate([*self._buffer, tail]) if self._buffer else tail
        self._buffer, self._buffered = [], 0
        if len(audio) < MIN_COMMIT_S * INPUT_RATE:
            raise RealtimeError(
                f"The input buffer holds less than {MIN_COMMIT_S * 1000:.0f} ms of audio"
                + (": with server_vad the server commits speech itself." if self.config.server_vad else "."),
                code="input_audio_buffer_commit_empty",
            )
        item_id = wire.new_id("item")
        self._out(wire.committed(item_id, self._last_item))
        self._add_user_item(wire.user_item(item_id, audio=True))
        self._pending.append(self._spawn(self._transcribe(item_id, audio)))

    async def _transcribe(self, item_id: str, audio: np.ndarray) -> str:
        """A committed buffer's words, on the server's shared STT pool."""
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(self.app.stt_pool, self.app.transcriber.transcribe, audio)
        self._out(wire.transcription_completed(item_id, text, len(audio) / INPUT_RATE))
        return text

    def _create_item(self, item: Any) -> None:
        if (
            not isinstance(item, dict)
            or item.get("type", "message") != "message"
            or item.get("role") != "user"
        ):
            raise RealtimeError(
                "voxloop takes user messages only: "
                '{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "..."}]}.',
                param="item",
            )
        content = item.get("content")
        parts = [p for p in content or [] if isinstance(p, dict) and p.get("type") in ("input_text", "text")]
        texts = [p.get("text") for p in parts]
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise RealtimeError("The message needs `input_text` content with words.", param="item.content")
        text = " ".join(str(t).strip() for t in texts)
        given = item.get("id")
        item_id = given if isinstance(given, str) and given else wire.new_id("item")
        self._add_user_item(wire.user_item(item_id, audio=False, text=text))
        words: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        words.set_result(text)
        self._pending.append(words)

    def _add_user_item(self, item: dict[str, Any]) -> None:
        self._out(*wire.item_created(item, self._last_item))
        self._last_item = item["id"]

    def _active(self) -> Reply | None:
        if self._responding is not None:
            return self._responding[0]
        return next((t.reply for t in self._turns if t.reply is not None and t.reply.open), None)

    def _create_response(self, options: Any) -> None:
        """Answer what is pending; of the response's options only its output modalities are used."""
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise RealtimeError("`response` must be an object.", param="response")
        given = options.get("output_modalities", options.get("modalities"))
        voiced = None if given is None else wire.read_modalities(given, "response.output_modalities")
        if self._active() is not None:
            raise RealtimeError(
                "A response is in progress: wait for its response.done, or send response.cancel.",
                code="conversation_already_has_active_response",
            )
        if self._speech_item is not None:
            raise RealtimeError(
                "The user is speaking: with server_vad the server answers when they stop.",
                code="conversation_already_has_active_response",
            )
        if not self._pending:
            raise RealtimeError(
                "Nothing to answer: commit the input audio buffer or create a user message first.",
                code="no_user_input",
            )
        words, self._pending = self._pending, []
        reply = self._new_reply(voiced)
        task = asyncio.create_task(self._respond(reply, words))
        self._responding = (reply, task)

    async def _respond(self, reply: Reply, words: list[asyncio.Future[str]]) -> None:
        try:
            try:
                text = " ".join(w for w in await asyncio.shield(asyncio.gather(*words)) if w)
            except Exception as exc:  # the STT failed on a committed buffer
                log.warning("transcribing a committed buffer failed: %s", exc)
                text = ""
            if not text:
                reply.status, reply.error = "failed", "The user's audio held no words."
                self._out(*reply.finished(self.dialect.beta))
                return
            assert self.assistant is not None
            job = await self.assistant.answer(text)
            turn = Turn(job, None, reply)
            self._turns.append(turn)
            self._spawn(self._watch(turn))
        finally:
            self._responding = None

    def _cancel(self) -> None:
        if self._responding is not None:  # not started yet: nothing to stop but the start
            reply, task = self._responding
            task.cancel()
            self._close(reply, "cancelled", "client_cancelled")
            return
        active = self._active()
        if active is None:
            raise RealtimeError(
                "There is no response in progress to cancel.", code="response_cancel_not_active"
            )
        # Closed at once, so not one more delta follows; the Assistant stops the reply as on a
        # barge-in (the LLM stream closed, the TTS backlog dropped, the history what was heard).
        self._close(active, "cancelled", "client_cancelled")
        if self._interrupting is None or self._interrupting.done():
            self._interrupting = asyncio.create_task(self._interrupt())

    # -- the pipeline's events ----------------------------------------------------------------------
    def _event(self, event: Event) -> None:
        if isinstance(event, SpeechStarted):
            self._speech_item, self._partial = wire.new_id("item"), ""
            self._out(wire.speech_started(self._speech_item, event.at_s))
        elif isinstance(event, SpeechEnded):  # final: the pauses in a turn do not reach the printer
            self._stopped_item, self._speech_item = self._speech_item or wire.new_id("item"), None
            self._out(wire.speech_stopped(self._stopped_item, event.end_s))
        elif isinstance(event, Transcript) and event.partial and self._speech_item is not None:
            if event.text.startswith(self._partial) and len(event.text) > len(self._partial):
                self._out(wire.transcription_delta(self._speech_item, event.text[len(self._partial) :]))
                self._partial = event.text
        elif isinstance(event, ReplyDelta):
            reply = self._reply()
            if reply is not None and reply.open:
                self._out(reply.text_delta(event.text))
        elif isinstance(event, Interrupted):
            for turn in self._turns:
                if turn.job.interrupted and turn.reply is not None and turn.reply.open:
                    self._close(turn.reply, "cancelled", "turn_detected")
        elif isinstance(event, TurnDone):
            if self._turns:
                turn = self._turns.popleft()
                if turn.reply is not None and turn.reply.open:
                    status = "cancelled" if event.interrupted else "failed" if event.error else "completed"
                    turn.reply.error = event.error
                    self._close(turn.reply, status, "turn_detected")
        elif isinstance(event, Notice):
            self._notice = self._new_reply()
            self._out(self._notice.text_delta(event.text))
        elif isinstance(event, ErrorEvent):
            self._out(wire.error(event.message, "voxloop_error", kind="server_error"))

    def _committed(self, job: ReplyJob) -> None:
        """The endpointer ended a turn (Assistant.on_commit), before any of the turn's events."""
        # Not every speech that stopped is committed: a backchannel ("uh-huh") over a reply is not.
        item_id, self._stopped_item = self._stopped_item or wire.new_id("item"), None
        self._out(wire.committed(item_id, self._last_item))
        self._add_user_item(wire.user_item(item_id, audio=True))
        turn = Turn(job, item_id)
        self._turns.append(turn)
        if job.transcribed.is_set():
            # A reply made during the pause: its audio is released right after this, and the
            # client must have the words it answers first.
            self._heard(turn)
        self._spawn(self._watch(turn))

    async def _watch(self, turn: Turn) -> None:
        """A turn's words: the transcription event, its response opened, or the turn dropped (no
        words, no reply); and a job that failed, closed as failed."""
        job = turn.job
        heard = asyncio.ensure_future(job.transcribed.wait())
        await asyncio.wait({heard, job.task}, return_when=asyncio.FIRST_COMPLETED)
        heard.cancel()
        if job.transcribed.is_set():
            if not turn.heard:
                self._heard(turn)
            if not job.words:
                with contextlib.suppress(ValueError):
                    self._turns.remove(turn)
                return
            self._reply(turn)
        await asyncio.wait({job.task})
        if not job.task.cancelled() and job.task.exception() is not None:
            with contextlib.suppress(ValueError):
                self._turns.remove(turn)
            if turn.reply is not None and turn.reply.open:
                turn.reply.error = str(job.task.exception())
                self._close(turn.reply, "failed")

    def _heard(self, turn: Turn) -> None:
        """The transcription of the turn's audio item, once."""
        turn.heard = True
        if turn.item_id is not None:
            # The words of this audio item (a turn taken back before it adds its own words to
            # the request, not to this item's transcript).
            seconds = turn.job.speech.duration_s
            self._out(wire.transcription_completed(turn.item_id, turn.job.words, seconds))

    def _new_reply(self, voiced: bool | None = None) -> Reply:
        """A response opened, spoken or in text as ``voiced`` says (None: as the session says)."""
        voiced = self.config.voiced if voiced is None else voiced
        reply = Reply(wire.new_id("resp"), wire.new_id("item"), self.config.voice, voiced)
        self._out(*reply.started(self.dialect.beta))
        self._last_item = reply.item_id
        return reply

    def _reply(self, turn: Turn | None = None) -> Reply | None:
        """The response of ``turn`` (else the turn whose reply comes now), opened if need be."""
        turn = turn or (self._turns[0] if self._turns else None)
        if turn is None:
            return None
        if turn.reply is None:
            turn.reply = self._new_reply()
        return turn.reply

    def _close(self, reply: Reply, status: str, reason: str | None = None) -> None:
        if not reply.open:
            return
        reply.status = status
        reply.reason = reason if status == "cancelled" else None
        self._out(*reply.finished(self.dialect.beta))

    async def _audio_out(self, pcm: bytes) -> None:
        """The sink's reply audio, as 24 kHz deltas of the response it belongs to."""
        notice, self._notice = self._notice, None
        reply = notice or self._reply()
        if reply is None or not reply.open:
            return  # cancelled: not one more delta
        if not reply.voiced:  # a text-only reply has no audio (its voice is silent anyway)
            if notice is not None:
                self._close(notice, "completed")
            return
        rate = self.sink.rate
        if rate != wire.RATE:
            samples = resample(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0, rate, wire.RATE)
            pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        step = wire.RATE // 2 * 2  # half a second of audio per delta
        for i in range(0, len(pcm), step):
            self._out(reply.audio_delta(base64.b64encode(pcm[i : i + step]).decode("ascii")))
        if notice is not None:
            self._close(notice, "completed")  # a notice is one piece of audio

    def _spawn(self, work: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._responding is not None:
            self._responding[1].cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await super().close()


# -- the route ------------------------------------------------------------------------------------
def _key_ok(state: ServerState, websocket: WebSocket) -> bool:
    """The token as ``?token=``, ``Authorization: Bearer`` or the subprotocol browsers send."""
    if state.token_ok(websocket):
        return True
    assert state.token is not None
    token = state.token.encode("utf-8", "surrogatepass")
    return any(
        hmac.compare_digest(p[len(KEY_PROTOCOL) :].encode("utf-8", "surrogatepass"), token)
        for p in websocket.scope.get("subprotocols", [])
        if p.startswith(KEY_PROTOCOL)
    )


def realtime_route(state: ServerState) -> WebSocketRoute:
    async def endpoint(websocket: WebSocket) -> None:
        # Imported here: app.py imports this module to register the route.
        from voxloop.server.app import _origin_ok, _refuse

        if not _origin_ok(state, websocket):
            await _refuse(websocket, PlainTextResponse("Forbidden: origin not allowed.", 403))
            return
        if not _key_ok(state, websocket):
            await _refuse(websocket, PlainTextResponse("Forbidden: bad or missing API key (token).", 403))
            return
        offered = websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        beta = "realtime=v1" in websocket.headers.get("openai-beta", "") or BETA_PROTOCOL in offered

        async def send(message: dict[str, Any]) -> None:
            await websocket.send_json(message)

        async def read() -> bool:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return False
            if message.get("text") is not None:
                session.receive(message["text"])
            elif message.get("bytes") is not None:
                session.error(
                    "Send events as JSON text frames; audio goes base64 in input_audio_buffer.append."
                )
            return True

        session = RealtimeSession(state, send, beta)
        session.begin()
        async with state.open_session(session, "realtime"):
            await read_while_read(session.printer, read)
        await close_if_stuck(websocket, session.printer)

    return WebSocketRoute("/v1/realtime", endpoint)


__all__ = ["RealtimeSession", "realtime_route"]
