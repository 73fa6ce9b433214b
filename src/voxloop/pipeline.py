"""One spoken conversation: audio source -> endpointer -> STT -> LLM stream -> sentences -> TTS -> sink.

The LLM stream and speech synthesis overlap: each sentence is synthesized (in a worker thread)
and queued for playback while the next one is still being generated. Blocking libraries
(CTranslate2, ONNX Runtime) never run on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxloop.audio import save_wav
from voxloop.audio.sink import AudioSink
from voxloop.audio.sources import AudioSource
from voxloop.conversation import Conversation, ConversationLog
from voxloop.errors import LLMContextOverflowError, LLMError
from voxloop.events import (
    AudioChunk,
    ErrorEvent,
    ReplyDelta,
    SpeechEnded,
    SpeechStarted,
    Transcript,
    TurnDone,
)
from voxloop.llm import ChatModel
from voxloop.printer import Printer
from voxloop.settings import Settings
from voxloop.stt import Transcriber
from voxloop.tts import Synthesizer
from voxloop.tts.sentences import LoopGuard, SentenceSplitter
from voxloop.vad import Endpointer, make_endpointer

log = logging.getLogger(__name__)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


@dataclass
class _Reply:
    """What one reply produced so far (kept even if the LLM fails half-way)."""

    text: list[str] = field(default_factory=list)  # as streamed
    sentences: list[str] = field(default_factory=list)  # as spoken: what the history keeps
    audio: list[np.ndarray] = field(default_factory=list)
    first_token: float | None = None
    first_sentence: float | None = None
    first_audio: float | None = None
    tts_ms: float = 0.0


class Assistant:
    """Runs turns against shared, already loaded models; owns the conversation history."""

    def __init__(
        self,
        settings: Settings,
        transcriber: Transcriber,
        chat: ChatModel,
        synthesizer: Synthesizer,
        sink: AudioSink,
        printer: Printer,
    ) -> None:
        self.settings = settings
        self.transcriber = transcriber
        self.chat = chat
        self.synthesizer = synthesizer
        self.sink = sink
        self.printer = printer
        self.conversation = Conversation(settings.system_prompt)
        out = settings.output.output_dir
        self.output_dir = Path(out) if out else None
        self.log = ConversationLog(self.output_dir) if self.output_dir else None
        self.turns = 0
        self.failed_turns = 0

    # -- the loop -----------------------------------------------------------------------------
    async def run(self, source: AudioSource, endpointer: Endpointer | None = None) -> list[TurnDone]:
        """Listen until the source ends; answer every turn. Returns the finished turns."""
        endpointer = endpointer or make_endpointer(self.settings.vad, source.sample_rate)
        done: list[TurnDone] = []
        loop = asyncio.get_running_loop()
        # The VAD (ONNX Runtime) keeps one thread of its own, off the event loop.
        with ThreadPoolExecutor(1, thread_name_prefix="vad") as vad_thread:
            async for block in source.blocks():
                events = await loop.run_in_executor(vad_thread, endpointer.feed, block)
                done += await self._handle(events, source, endpointer)
        await self.sink.drain()
        return done

    async def _handle(
        self, events: list[SpeechStarted | SpeechEnded], source: AudioSource, endpointer: Endpointer
    ) -> list[TurnDone]:
        done: list[TurnDone] = []
        for event in events:
            self.printer.emit(event)
            if isinstance(event, SpeechEnded):
                turn = await self.answer(event)
                if turn is not None:
                    done.append(turn)
                if source.live:
                    # Half-duplex: what the microphone heard while voxloop spoke is not a turn.
                    await self.sink.drain()
                    source.discard_pending()
                    endpointer.reset()
        return done

    async def answer(self, speech: SpeechEnded) -> TurnDone | None:
        """One turn: transcribe, stream the reply, speak it, save it. None when no words were heard."""
        detected = time.perf_counter()
        timings = {"endpoint_wait_ms": (speech.endpoint_at_s - speech.end_s) * 1000}
        text = await asyncio.to_thread(self.transcriber.transcribe, speech.audio)
        timings["stt_ms"] = _ms(detected)
        if not text:
            log.info("no words in %.2f s of audio; not a turn", speech.duration_s)
            return None
        self.printer.emit(Transcript(text=text, stt_ms=timings["stt_ms"]))
        self.turns += 1
        index = self.turns

        reply = _Reply()
        error: str | None = None
        started = time.perf_counter()
        try:
            await self._stream_reply(text, reply, started)
        except LLMError as exc:
            error = str(exc)
            self.failed_turns += 1
            self.printer.emit(ErrorEvent(f"Turn {index} got no complete reply: {error}"))
        assistant = " ".join(reply.sentences)

        timings["llm_total_ms"] = _ms(started)
        if reply.first_token is not None:
            timings["llm_first_token_ms"] = (reply.first_token - started) * 1000
        if reply.first_sentence is not None:
            timings["first_sentence_ms"] = (reply.first_sentence - started) * 1000
        timings["tts_ms"] = reply.tts_ms
        if reply.first_audio is not None:
            timings["speech_end_to_first_audio_ms"] = (
                timings["endpoint_wait_ms"] + (reply.first_audio - detected) * 1000
            )

        audio_path = None
        if error is None:
            self.conversation.add(text, assistant)
            if self.output_dir is not None and reply.audio:
                audio_path = str(
                    save_wav(
                        self.output_dir / f"turn-{index:03d}.wav",
                        np.concatenate(reply.audio),
                        self.synthesizer.sample_rate,
                    )
                )
        turn = TurnDone(
            index=index,
            user=text,
            assistant=None if error else assistant,
            reply_audio=audio_path,
            timings=timings,
            error=error,
        )
        if self.log is not None:
            self.log.append(
                {
                    "turn": index,
                    "user": text,
                    "assistant": turn.assistant,
                    "reply_audio": audio_path,
                    "timings": {k: round(v, 1) for k, v in timings.items()},
                    "error": error,
                    "partial_reply": assistant if error and assistant else None,
                }
            )
        self.printer.emit(turn)
        return turn

    # -- one reply ----------------------------------------------------------------------------
    async def _stream_reply(self, text: str, reply: _Reply, started: float) -> None:
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak(sentences, reply))
        try:
            try:
                await self._generate(text, reply, started, sentences, drop_oldest=0)
            except LLMContextOverflowError:
                if reply.text:  # the server fails before the first token, or not this way
                    raise
                # The estimate was off: keep only the newest exchange and try once more.
                log.warning("context overflow; retrying with the oldest history dropped")
                await self._generate(
                    text,
                    reply,
                    started,
                    sentences,
                    drop_oldest=max(0, len(self.conversation.exchanges) - 1),
                )
        finally:
            await sentences.put(None)
            await speaker

    async def _generate(
        self,
        text: str,
        reply: _Reply,
        started: float,
        sentences: asyncio.Queue[str | None],
        drop_oldest: int,
    ) -> None:
        llm = self.settings.llm
        messages = self.conversation.request(text, self.chat.context_tokens, llm.max_tokens, drop_oldest)
        splitter = SentenceSplitter()
        guard = LoopGuard()
        stream = self.chat.stream(messages)
        streamed = ""
        try:
            async for delta in stream:
                if reply.first_token is None:
                    reply.first_token = time.perf_counter()
                reply.text.append(delta)
                streamed += delta
                self.printer.emit(ReplyDelta(delta))
                if guard.stuck(streamed[-120:]):
                    log.info("reply stuck in a loop; stopped")
                    return
                for sentence in splitter.feed(delta):
                    if guard.repeats(sentence):
                        log.info("reply repeats itself; stopped")
                        return
                    await self._say(sentence, reply, sentences)
        finally:
            # Closing the stream early closes the connection, which stops generation.
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        for sentence in splitter.flush():
            await self._say(sentence, reply, sentences)

    @staticmethod
    async def _say(sentence: str, reply: _Reply, sentences: asyncio.Queue[str | None]) -> None:
        reply.first_sentence = reply.first_sentence or time.perf_counter()
        reply.sentences.append(sentence)
        await sentences.put(sentence)

    async def _speak(self, sentences: asyncio.Queue[str | None], reply: _Reply) -> None:
        while (sentence := await sentences.get()) is not None:
            t0 = time.perf_counter()
            samples = await asyncio.to_thread(self.synthesizer.synthesize, sentence)
            reply.tts_ms += _ms(t0)
            if not len(samples):
                continue
            if reply.first_audio is None:
                reply.first_audio = time.perf_counter()
            chunk = AudioChunk(samples=samples, sample_rate=self.synthesizer.sample_rate, text=sentence)
            reply.audio.append(chunk.samples)
            await self.sink.play(chunk.samples)
