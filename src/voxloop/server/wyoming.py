"""`voxloop wyoming`: voxloop's speech to text, voice and conversation agent over the Wyoming
protocol, the way Home Assistant's Wyoming integration talks to its voice services
(docs/wyoming.md).

One process holds the models, loaded once: Whisper and the voice each run in a single worker
thread of their own, shared by every connection, and the LLM is reached through the same
OpenAI-compatible client as ``voxloop chat`` (the embedded llama.cpp server by default). Its
``info`` lists three programs:

- ``asr``: ``transcribe`` + ``audio-start/chunk/stop`` (any PCM rate, width and channels) ->
  ``transcript``, in the streaming form (``transcript-start``, a ``transcript-chunk`` for each
  run of words the partial transcripts agree on while the client talks, ``transcript``,
  ``transcript-stop``);
- ``tts``: ``synthesize`` -> ``audio-start/chunk/stop`` (16-bit PCM at the voice's rate), and the
  streaming form (``synthesize-start/chunk/stop`` -> audio per sentence -> ``synthesize-stopped``);
- ``handle``: ``transcript {text, context.conversation_id}`` -> ``handled {text}`` (streamed as
  ``handled-start/chunk`` first), with the history of each conversation id kept.

The streaming forms are the protocol's own, sent whenever ``info`` announces them: a client that
knows only the one-shot forms reads up to ``transcript`` or ``handled`` and ignores the rest.
``--no-streaming`` turns them off. Anything a client gets wrong is answered with an ``error``
event and the connection goes on. Wyoming has no authentication: the server binds 127.0.0.1
unless told otherwise.

The same server runs inside ``voxloop serve --wyoming`` on the models the HTTP and WebSocket
protocols use (``wyoming_serve.py``): there it is given the server's worker pools and a hook that
counts its sessions on ``/metrics``, and it is started and closed by ``voxloop serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.handle import Handled, HandledChunk, HandledStart, HandledStop, NotHandled
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncTcpServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStopped

from voxloop.errors import ConfigError, LLMError, VoxloopError
from voxloop.llm import ChatModel
from voxloop.printer import Printer
from voxloop.server.wyoming_agent import MAX_CONVERSATIONS, Conversations, answer
from voxloop.server.wyoming_asr import ClientError, StablePrefix, Utterance, check_format, encode_pcm16
from voxloop.server.wyoming_info import build_info
from voxloop.server.wyoming_wire import WireError, read_event
from voxloop.settings import Settings
from voxloop.stt import Transcriber
from voxloop.stt.whisper import encoder_window
from voxloop.tts import Synthesizer
from voxloop.tts.pacing import paced
from voxloop.tts.sentences import SentenceSplitter

log = logging.getLogger(__name__)

DEFAULT_PORT = 10300  # Wyoming's usual port for speech to text (wyoming-faster-whisper's)
SAMPLES_PER_CHUNK = 1024  # reply audio per audio-chunk event
PARTIAL_EVERY_S = 1.0  # a partial transcript for each second of audio that arrives
MAX_SYNTHESIZE_CHARS = 10_000  # one synthesize request, or one synthesize-start … stop stream
MAX_HANDLE_CHARS = 4_000  # one request to the conversation agent
MAX_ID_CHARS = 200  # a conversation id
MAX_PENDING = 16  # requests of one connection waiting for their turn
MAX_CONNECTIONS = 32
SHUTDOWN_GRACE_S = 5.0  # open connections get this long to end before they are cancelled


@dataclass(frozen=True, slots=True)
class WyomingOptions:
    """How the Wyoming server listens and answers (the ``voxloop wyoming`` flags)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    streaming: bool = True  # transcript-, synthesize- and handled- streaming forms
    zeroconf: str | None = None  # announce over mDNS under this name ("": voxloop-<host>); None: no
    conversations: int = MAX_CONVERSATIONS  # conversation ids whose history is kept
    max_connections: int = MAX_CONNECTIONS


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WyomingServer:
    """The shared models and the listening socket; owns every connection's task.

    ``run`` once (``voxloop wyoming``): it serves until ``stop`` is set, then closes the
    connections (cancelling what they were doing), the worker threads and the LLM client. A
    process that owns the models, the chat client and the worker threads itself (``voxloop
    serve``) calls ``start`` and ``close`` instead, passing its ``pools`` (speech to text, voice)
    and a ``session`` context entered for each connection that asks for anything (``describe``
    and ``ping`` alone are not a session).
    """

    def __init__(
        self,
        settings: Settings,
        transcriber: Transcriber,
        synthesizer: Synthesizer,
        chat: ChatModel,
        options: WyomingOptions | None = None,
        pools: tuple[Executor, Executor] | None = None,
        session: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        self.settings = settings
        self.transcriber = transcriber
        self.synthesizer = synthesizer
        self.chat = chat
        self.options = options or WyomingOptions()
        self._own_pools = pools is None
        self.stt_thread, self.tts_thread = pools or (
            ThreadPoolExecutor(1, thread_name_prefix="wyoming-stt"),
            ThreadPoolExecutor(1, thread_name_prefix="wyoming-tts"),
        )
        self.session = session
        self.conversations = Conversations(settings.system_prompt, self.options.conversations)
        self.connections: set[asyncio.Task[Any]] = set()
        self.info_event: Event | None = None
        self._listener: AsyncTcpServer | None = None
        self._stt_jobs = 0  # transcriptions submitted and not returned
        self._finals = 0  # final transcripts asked for: a partial in the STT thread gives way

    @property
    def language(self) -> str:
        return self.settings.stt.language or str(getattr(self.transcriber, "language", "") or "en")

    def languages(self) -> list[str]:
        if self.settings.stt.language:
            return [self.settings.stt.language]
        model = getattr(self.transcriber, "model", None)
        return list(getattr(model, "supported_languages", None) or ["en"])

    @property
    def stt_idle(self) -> bool:
        return self._stt_jobs == 0

    # -- the shared models, each in its own thread -----------------------------------------
    async def transcribe(self, audio: np.ndarray, partial: bool = False) -> str:
        """16 kHz mono audio -> text. A partial is dropped (after the encoder at most) when its
        caller stops waiting or a final transcript is asked for anywhere: finals never wait
        behind a partial's decoder."""
        loop = asyncio.get_running_loop()
        dropped = threading.Event()
        stop = (lambda: dropped.is_set() or self._finals > 0) if partial else None
        work = functools.partial(self.transcriber.transcribe, audio, stop=stop)
        self._stt_jobs += 1
        self._finals += 0 if partial else 1
        try:
            return await loop.run_in_executor(self.stt_thread, work)
        except asyncio.CancelledError:
            dropped.set()
            raise
        finally:
            self._stt_jobs -= 1
            self._finals -= 0 if partial else 1

    async def voice(self, sentence: str) -> np.ndarray:
        """One sentence as played: its voice, then the pause that fits its end."""
        synth = self.synthesizer

        def work() -> np.ndarray:
            return paced(synth.synthesize(sentence), synth.sample_rate, sentence)

        return await asyncio.get_running_loop().run_in_executor(self.tts_thread, work)

    # -- serving ---------------------------------------------------------------------------
    async def start(self, port_flag: str = "--port") -> None:
        """Listen, the chat model connected (its name is in ``info``). A port that cannot be
        had is a ConfigError naming ``port_flag``, the flag that chooses another."""
        o = self.options
        self.info_event = build_info(self.settings, self.languages(), self.chat.model, o.streaming).event()
        listener = AsyncTcpServer(o.host, o.port)
        try:
            await listener.start(lambda reader, writer: Connection(self, reader, writer))
        except OSError as exc:
            raise ConfigError(
                f"Cannot listen on {o.host}:{o.port} for Wyoming ({exc}). Pass another {port_flag}."
            ) from None
        self._listener = listener

    async def close(self) -> None:
        """Stop listening and end every connection (what each was doing is cancelled, an LLM
        stream closed). Safe to call again."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()  # stops listening; every connection reads the end of its stream
        await self._close_connections()

    async def run(self, stop: asyncio.Event, ready: Callable[[WyomingServer], None] | None = None) -> None:
        o = self.options
        try:
            await self.chat.connect()
            await self.start()
            try:
                async with contextlib.AsyncExitStack() as stack:
                    if o.zeroconf is not None:
                        from voxloop.server.wyoming_zeroconf import advertised, default_name

                        name = o.zeroconf or default_name()
                        await stack.enter_async_context(advertised(name, o.host, o.port))
                    if ready is not None:
                        ready(self)
                    await stop.wait()
            finally:
                await self.close()
        finally:
            await self.chat.aclose()
            if self._own_pools:
                for pool in (self.stt_thread, self.tts_thread):
                    pool.shutdown(wait=False, cancel_futures=True)

    async def _close_connections(self) -> None:
        tasks = list(self.connections)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


@contextlib.contextmanager
def _parsing(event: Event) -> Iterator[None]:
    """A field missing or of the wrong type in ``event``: a ClientError that names the event."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ClientError(f"Malformed {event.type!r} event ({exc!r} in its data).", "bad-event") from None


def _text(value: object, limit: int, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ClientError(f"{what} needs a non-empty text.", "bad-event")
    if len(value) > limit:
        raise ClientError(f"{what} text of {len(value)} characters is over the limit of {limit}.", "too-long")
    return value


class TextStream:
    """A ``synthesize-start`` … ``synthesize-stop`` stream: the text cut into sentences as it
    comes, for the worker to voice one by one."""

    def __init__(self) -> None:
        self.splitter = SentenceSplitter()
        self.sentences: asyncio.Queue[str | None] = asyncio.Queue()
        self.chars = 0

    def feed(self, text: str) -> None:
        self.chars += len(text)
        if self.chars > MAX_SYNTHESIZE_CHARS:
            raise ClientError(
                f"The synthesize stream is over {MAX_SYNTHESIZE_CHARS} characters; the rest is dropped.",
                "too-long",
            )
        for sentence in self.splitter.feed(text):
            self.sentences.put_nowait(sentence)

    def end(self) -> None:
        for sentence in self.splitter.flush():
            self.sentences.put_nowait(sentence)
        self.sentences.put_nowait(None)


Job = Callable[[], Awaitable[None]]


class Connection(AsyncEventHandler):
    """One client. ``describe`` (and ``ping``) is answered at once; every other request is done
    by one worker task, in the order the requests came, so a client reads its answers in that
    order. The connection owns its tasks (the worker, the partial transcripts) and cancels and
    awaits them when it ends: a client that goes away mid-reply closes the LLM stream."""

    def __init__(
        self, server: WyomingServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super().__init__(reader, writer)
        self.server = server
        self._jobs: asyncio.Queue[Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._utterance: Utterance | None = None
        self._stable: StablePrefix | None = None
        self._partials: asyncio.Task[None] | None = None
        self._text_stream: TextStream | None = None
        self._session = contextlib.ExitStack()  # the server's session count, from the first request
        self._counting = False
        self._handlers: dict[str, Callable[[Event], Awaitable[None]]] = {
            "transcribe": self._on_transcribe,
            "audio-start": self._on_audio_start,
            "audio-chunk": self._on_audio_chunk,
            "audio-stop": self._on_audio_stop,
            "synthesize": self._on_synthesize,
            "synthesize-start": self._on_synthesize_start,
            "synthesize-chunk": self._on_synthesize_chunk,
            "synthesize-stop": self._on_synthesize_stop,
            "transcript": self._on_transcript,
            "select-program": self._on_select_program,
        }

    async def run(self) -> None:
        """Read events until the client closes (or the server stops); the wire is read by
        :func:`~voxloop.server.wyoming_wire.read_event`, which reports a malformed event
        instead of ending the connection."""
        task = asyncio.current_task()
        server = self.server
        try:
            if len(server.connections) >= server.options.max_connections:
                await self._error(
                    f"voxloop serves {server.options.max_connections} connections at most; try again later.",
                    "busy",
                )
                return
            if task is not None:
                server.connections.add(task)
            self._worker = asyncio.create_task(self._work(), name="wyoming request worker")
            self._is_running = True
            while self._is_running:
                try:
                    event = await read_event(self.reader)
                except WireError as exc:
                    await self._error(str(exc), "bad-event")
                    continue
                if event is None:
                    break
                await self.handle_event(event)
        except ConnectionError as exc:
            log.debug("client gone: %s", exc)
        finally:
            if task is not None:
                server.connections.discard(task)
            try:
                await self.disconnect()
            finally:  # cancelled in there too (a server closing), the socket and the count end
                self.writer.close()
                self._session.close()

    async def disconnect(self) -> None:
        tasks = [t for t in (self._partials, self._worker) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def handle_event(self, event: Event) -> bool:
        try:
            if Describe.is_type(event.type):
                assert self.server.info_event is not None
                await self.write_event(self.server.info_event)
            elif Ping.is_type(event.type):
                await self.write_event(Pong(text=Ping.from_event(event).text).event())
            elif (handler := self._handlers.get(event.type)) is not None:
                self._count_session()
                await handler(event)
            else:
                raise ClientError(
                    f"Unknown event type {event.type!r}: voxloop answers describe, transcribe, "
                    "audio-start/chunk/stop, synthesize(-start/-chunk/-stop) and transcript.",
                    "unknown-event",
                )
        except ClientError as exc:
            await self._error(str(exc), exc.code)
        except ConnectionError:
            raise  # the client is gone: the connection ends
        except Exception as exc:  # a bug of voxloop's: say so, and serve the next event
            log.exception("a Wyoming event failed")
            await self._error(f"voxloop failed on {event.type!r} ({type(exc).__name__}: {exc}).", "internal")
        return True

    def _count_session(self) -> None:
        """A request for a program makes this connection a session (describe and ping do not:
        Home Assistant opens a connection for each, just to see the server is there)."""
        if self.server.session is not None and not self._counting:
            self._session.enter_context(self.server.session())
            self._counting = True

    async def _error(self, text: str, code: str) -> None:
        log.info("error event to %s: %s", self.writer.get_extra_info("peername"), text)
        with contextlib.suppress(ConnectionError):
            await self.write_event(Error(text=text, code=code).event())

    def _submit(self, job: Job) -> None:
        if self._jobs.qsize() >= MAX_PENDING:
            raise ClientError(f"{MAX_PENDING} requests are already waiting; this one was dropped.", "busy")
        self._jobs.put_nowait(job)

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                await job()
            except ClientError as exc:
                await self._error(str(exc), exc.code)
            except ConnectionError:
                return  # the client went away: nothing more can reach it
            except VoxloopError as exc:
                await self._error(str(exc), type(exc).__name__)
            except Exception as exc:
                log.exception("a Wyoming request failed")
                await self._error(
                    f"voxloop failed on this request ({type(exc).__name__}: {exc}).", "internal"
                )

    # -- asr -------------------------------------------------------------------------------
    async def _on_transcribe(self, event: Event) -> None:
        with _parsing(event):
            request = Transcribe.from_event(event)
        if request.language and request.language.split("-")[0].split("_")[0] not in self.server.languages():
            log.info(
                "transcribe asked for %r; Whisper listens for %s", request.language, self.server.language
            )

    async def _on_audio_start(self, event: Event) -> None:
        with _parsing(event):
            start = AudioStart.from_event(event)
        rate, width, channels = check_format(start.rate, start.width, start.channels)
        await self._stop_partials()  # an utterance never stopped is replaced
        self._utterance = utterance = Utterance(rate, width, channels)
        if self.server.options.streaming:
            self._stable = stable = StablePrefix()
            await self.write_event(TranscriptStart(language=self.server.language).event())
            self._partials = asyncio.create_task(self._stream_partials(utterance, stable))

    async def _on_audio_chunk(self, event: Event) -> None:
        if self._utterance is None:
            raise ClientError(
                "audio-chunk before audio-start: send audio-start {rate, width, channels} first; "
                "the chunk was dropped.",
                "no-audio-start",
            )
        with _parsing(event):
            chunk = AudioChunk.from_event(event)
        self._utterance.add(chunk.audio, chunk.rate, chunk.width, chunk.channels)

    async def _on_audio_stop(self, event: Event) -> None:
        utterance, stable = self._utterance, self._stable
        if utterance is None:
            raise ClientError("audio-stop without audio-start: nothing to transcribe.", "no-audio-start")
        self._utterance = self._stable = None
        await self._stop_partials()
        stopped_at = time.perf_counter()
        self._submit(lambda: self._final_transcript(utterance, stable, stopped_at))

    async def _stop_partials(self) -> None:
        task, self._partials = self._partials, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _stream_partials(self, utterance: Utterance, stable: StablePrefix) -> None:
        """While the client talks: transcribe what it said so far, about once a second, and send
        the words two partials in a row agree on. Only when the STT thread is idle, and only
        while the utterance fits Whisper's short windows (past them a partial costs ~0.5 s)."""
        server = self.server
        due = PARTIAL_EVERY_S
        while True:
            await utterance.reached(due)
            if encoder_window(utterance.seconds, server.settings.stt) is None:
                return
            due = utterance.seconds + PARTIAL_EVERY_S
            if not server.stt_idle:
                continue
            text = await server.transcribe(utterance.audio(), partial=True)
            if piece := stable.partial(text):
                await self.write_event(TranscriptChunk(text=piece).event())

    async def _final_transcript(
        self, utterance: Utterance, stable: StablePrefix | None, stopped_at: float
    ) -> None:
        server = self.server
        text = await server.transcribe(utterance.audio()) if utterance.frames else ""
        log.info(
            "transcript of %.1f s in %.0f ms after audio-stop: %r",
            utterance.seconds,
            (time.perf_counter() - stopped_at) * 1000,
            text,
        )
        if stable is not None and (piece := stable.final(text)):
            await self.write_event(TranscriptChunk(text=piece).event())
        await self.write_event(Transcript(text=text, language=server.language).event())
        if stable is not None:
            await self.write_event(TranscriptStop().event())

    # -- tts -------------------------------------------------------------------------------
    async def _on_synthesize(self, event: Event) -> None:
        if self._text_stream is not None:
            return  # inside a stream it is the whole text again, sent for older servers: ignored
        with _parsing(event):
            request = Synthesize.from_event(event)
        text = _text(request.text, MAX_SYNTHESIZE_CHARS, "synthesize")
        self._voice_request(request.voice.name if request.voice else None)
        # The whole text is here: whole sentences sound best (no first clause cut short to start
        # speaking sooner, as a streamed reply's is).
        splitter = SentenceSplitter(first_clause_words=0, first_phrase_words=0)
        sentences = splitter.feed(text) + splitter.flush()
        self._submit(lambda: self._speak(sentences))

    def _voice_request(self, name: str | None) -> None:
        if name and name != self.server.settings.tts.voice:
            log.info("voice %r asked for; voxloop speaks with %r", name, self.server.settings.tts.voice)

    async def _on_synthesize_start(self, event: Event) -> None:
        if self._text_stream is not None:
            raise ClientError("synthesize-start inside a stream: send synthesize-stop first.", "bad-order")
        with _parsing(event):
            request = SynthesizeStart.from_event(event)
        self._voice_request(request.voice.name if request.voice else None)
        stream = TextStream()
        self._submit(lambda: self._speak_stream(stream))
        self._text_stream = stream

    async def _on_synthesize_chunk(self, event: Event) -> None:
        if self._text_stream is None:
            raise ClientError("synthesize-chunk outside a stream: send synthesize-start first.", "bad-order")
        with _parsing(event):
            chunk = SynthesizeChunk.from_event(event)
        if not isinstance(chunk.text, str):
            raise ClientError("synthesize-chunk needs a text.", "bad-event")
        self._text_stream.feed(chunk.text)

    async def _on_synthesize_stop(self, event: Event) -> None:
        stream, self._text_stream = self._text_stream, None
        if stream is None:
            raise ClientError("synthesize-stop outside a stream: send synthesize-start first.", "bad-order")
        stream.end()

    async def _send_audio(self, samples: np.ndarray) -> None:
        rate = self.server.synthesizer.sample_rate
        pcm = encode_pcm16(samples)
        step = SAMPLES_PER_CHUNK * 2
        for i in range(0, len(pcm), step):
            await self.write_event(
                AudioChunk(rate=rate, width=2, channels=1, audio=pcm[i : i + step]).event()
            )

    async def _speak(self, sentences: list[str]) -> None:
        """One ``synthesize``: one audio stream, each sentence sent as soon as it is voiced."""
        rate = self.server.synthesizer.sample_rate
        await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        for sentence in sentences:
            await self._send_audio(await self.server.voice(sentence))
        await self.write_event(AudioStop().event())

    async def _speak_stream(self, stream: TextStream) -> None:
        """A text stream: an audio stream per sentence, as the text arrives."""
        rate = self.server.synthesizer.sample_rate
        while (sentence := await stream.sentences.get()) is not None:
            samples = await self.server.voice(sentence)
            if not len(samples):
                continue
            await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
            await self._send_audio(samples)
            await self.write_event(AudioStop().event())
        await self.write_event(SynthesizeStopped().event())

    # -- handle ----------------------------------------------------------------------------
    async def _on_transcript(self, event: Event) -> None:
        with _parsing(event):
            request = Transcript.from_event(event)
        text = _text(request.text, MAX_HANDLE_CHARS, "transcript")
        context = request.context if isinstance(request.context, dict) else {}
        given = context.get("conversation_id")
        if given in (None, ""):
            conversation_id = uuid.uuid4().hex  # a new conversation; the reply's context names it
        elif (
            isinstance(given, (str, int)) and not isinstance(given, bool) and len(str(given)) <= MAX_ID_CHARS
        ):
            conversation_id = str(given)
        else:
            raise ClientError(
                f"context.conversation_id must be a string of at most {MAX_ID_CHARS} characters.", "bad-event"
            )
        self._submit(lambda: self._handle(text.strip(), conversation_id))

    async def _handle(self, user: str, conversation_id: str) -> None:
        server = self.server
        streaming = server.options.streaming
        context = {"conversation_id": conversation_id}
        sentences: list[str] = []
        started = time.perf_counter()
        async with server.conversations.turn(conversation_id) as conversation:
            try:
                async with contextlib.aclosing(
                    answer(server.chat, conversation, user, server.settings.llm)
                ) as reply:
                    async for sentence in reply:
                        if streaming:
                            if not sentences:
                                await self.write_event(HandledStart(context=context).event())
                            await self.write_event(
                                HandledChunk(text=(" " if sentences else "") + sentence).event()
                            )
                        sentences.append(sentence)
            except LLMError as exc:
                await self.write_event(NotHandled(text=str(exc), context=context).event())
                if streaming and sentences:
                    await self.write_event(HandledStop().event())
                return
            text = " ".join(sentences)
            conversation.add(user, text)
        log.info("handled in %.0f ms: %r -> %r", (time.perf_counter() - started) * 1000, user, text)
        if streaming and not sentences:
            await self.write_event(HandledStart(context=context).event())
        await self.write_event(Handled(text=text, context=context).event())
        if streaming:
            await self.write_event(HandledStop().event())

    async def _on_select_program(self, event: Event) -> None:
        name = event.data.get("name")
        if name != "voxloop":
            raise ClientError(
                f"No program {name!r} here; voxloop's programs are all named 'voxloop'.", "bad-event"
            )


# -- the command ------------------------------------------------------------------------------
def reached_at(host: str) -> str:
    """The address Home Assistant reaches a server bound to ``host`` at: on a wildcard bind, the
    machine's LAN address (when it has one)."""
    if host in ("0.0.0.0", "::", ""):
        from voxloop.server.wyoming_zeroconf import lan_address

        with contextlib.suppress(OSError):
            return lan_address()
    return host


NO_AUTH_WARNING = (
    "warning: Wyoming has no authentication: anyone who can reach {where} can use voxloop's speech "
    "to text, voice and LLM. Bind to loopback (the default) or a network you trust."
)


def serve_wyoming(settings: Settings, urls: list[str], options: WyomingOptions, printer: Printer) -> None:
    """Load the models once, then serve until SIGTERM or Ctrl-C."""
    if options.zeroconf is not None:  # a mistake here is said now, not after the models load
        import importlib.util

        from voxloop.server.wyoming_zeroconf import announced_address

        announced_address(options.host)
        if importlib.util.find_spec("zeroconf") is None:
            raise ConfigError("--zeroconf needs the zeroconf package. Run: pip install 'voxloop[zeroconf]'")
    if not is_loopback(options.host):
        printer.info(NO_AUTH_WARNING.format(where=f"{options.host}:{options.port}"))
    asyncio.run(_serve(settings, urls, options, printer))


async def _serve(settings: Settings, urls: list[str], options: WyomingOptions, printer: Printer) -> None:
    from voxloop.app import make_chat
    from voxloop.stt.whisper import WhisperTranscriber
    from voxloop.tts.hibari_tts import HibariSynthesizer

    probe = make_chat(urls, settings, printer)
    try:
        await probe.connect()  # a clear error now, before the models load
    finally:
        await probe.aclose()
    transcriber, synthesizer = await asyncio.gather(
        asyncio.to_thread(WhisperTranscriber, settings.stt),
        asyncio.to_thread(HibariSynthesizer, settings.tts),
    )
    await asyncio.gather(asyncio.to_thread(transcriber.warm_up), asyncio.to_thread(synthesizer.warm_up))
    server = WyomingServer(settings, transcriber, synthesizer, make_chat(urls, settings, printer), options)

    def ready(s: WyomingServer) -> None:
        printer.info(
            f"voxloop's Wyoming server listens on tcp://{options.host}:{options.port} (speech to text, "
            f"voice, conversation agent). In Home Assistant: Settings → Devices & services → Add "
            f"integration → Wyoming Protocol, host {reached_at(options.host)}, port {options.port}."
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    for sig in previous:
        loop.add_signal_handler(sig, stop.set)  # a graceful stop: connections closed, LLM too
    try:
        await server.run(stop, ready)
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)
