"""What the CLI commands do, as plain functions callable from Python."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from voxloop.audio import save_wav
from voxloop.audio.aec import make_echo_canceller
from voxloop.audio.decode import load_audio
from voxloop.audio.sink import AudioSink, NullSink, SpeakerSink
from voxloop.audio.sources import ArraySource, AudioSource, MicSource, RealtimeSource
from voxloop.errors import AudioDeviceError, LLMError
from voxloop.events import SpeechEnded, Transcript, TurnDone
from voxloop.llm import ChatModel
from voxloop.llm.failover import FailoverChat
from voxloop.llm.openai_http import OpenAIChat
from voxloop.llm.server import SERVE_THREADS, embedded_server
from voxloop.llm.stall import StallGuard
from voxloop.pipeline import Assistant
from voxloop.printer import Printer
from voxloop.reply import sounds_finished
from voxloop.settings import Settings
from voxloop.stt.interim import make_interim
from voxloop.stt.whisper import WhisperTranscriber
from voxloop.tools.offer import check_tool_settings
from voxloop.tts.hibari_tts import HibariSynthesizer
from voxloop.vad import make_endpointer

log = logging.getLogger(__name__)


@contextlib.contextmanager
def llm_urls(settings: Settings, printer: Printer) -> Iterator[list[str]]:
    """The servers to talk to: the --llm-url ones, or the embedded llama.cpp server."""
    check_tool_settings(settings.tools)
    if settings.llm.urls:
        yield list(settings.llm.urls)
        return
    with embedded_server(settings.llm, printer.info) as server:
        yield [server.url]


@contextlib.contextmanager
def conversation_model(settings: Settings, printer: Printer) -> Iterator[ChatModel]:
    """The chat model for one conversation: the --llm-url servers, or the embedded server,
    watched for the stall of two llama.cpp threads on a busy box (:mod:`voxloop.llm.stall`)."""
    check_tool_settings(settings.tools)
    if settings.llm.urls:
        yield make_chat(list(settings.llm.urls), settings, printer)
        return
    with embedded_server(settings.llm, printer.info) as server:
        yield StallGuard(OpenAIChat(server.url, settings.llm, notice=printer.info), server, printer.info)


def serving(settings: Settings) -> Settings:
    """The settings for many conversations at once: the embedded server on fewer threads
    (:data:`voxloop.llm.server.SERVE_THREADS`), unless the user chose a number."""
    if settings.llm.threads:
        return settings
    return dataclasses.replace(settings, llm=dataclasses.replace(settings.llm, threads=SERVE_THREADS))


def make_chat(urls: list[str], settings: Settings, printer: Printer) -> ChatModel:
    """One server, or several with failover between them."""
    chats = [OpenAIChat(url, settings.llm, notice=printer.info) for url in urls]
    return chats[0] if len(chats) == 1 else FailoverChat(chats)


def open_sink(settings: Settings, sample_rate: int, printer: Printer) -> AudioSink:
    if not settings.tts.speak:
        return NullSink()
    try:
        return SpeakerSink(sample_rate)
    except AudioDeviceError as exc:
        printer.info(f"warning: {exc} Replies are not played; --no-speak silences this warning.")
        return NullSink()


async def chat(
    settings: Settings, printer: Printer, input_path: str | None = None, realtime: bool = False
) -> list[TurnDone]:
    """A spoken conversation from a recording or the microphone. Returns the finished turns."""
    # A bad file or a missing microphone fails here, before any model loads.
    source: AudioSource
    if input_path:
        samples = load_audio(input_path)
        source = RealtimeSource(samples) if realtime else ArraySource(samples)
    else:
        source = mic = MicSource()
        mic.check()
    with conversation_model(settings, printer) as model:
        try:
            await model.connect()
            transcriber, synthesizer, interim = await asyncio.gather(
                asyncio.to_thread(WhisperTranscriber, settings.stt),
                asyncio.to_thread(HibariSynthesizer, settings.tts),
                asyncio.to_thread(make_interim, settings.stt),
            )
            await asyncio.gather(
                asyncio.to_thread(transcriber.warm_up),
                asyncio.to_thread(synthesizer.warm_up),
                *([asyncio.to_thread(interim.warm_up)] if interim else []),
            )
            sink = open_sink(settings, synthesizer.sample_rate, printer)
            # On a live microphone with speakers, cancel voxloop's own voice so the user can
            # talk over it; without a canceller voxloop listens half-duplex.
            aec = None
            if source.live and not isinstance(sink, NullSink):
                aec = make_echo_canceller(settings.tts.echo_cancel)
            assistant = Assistant(
                settings, transcriber, model, synthesizer, sink, printer, aec=aec, interim=interim
            )
            if not input_path:
                printer.info("Listening… speak now (Ctrl+C to stop).")
            try:
                return await assistant.run(source)
            finally:
                sink.close()
                if interim is not None:
                    interim.close()
        finally:
            await model.aclose()


def failed(turns: list[TurnDone]) -> int:
    """Exit code for a conversation: 0, or the LLM error code if any turn got no reply."""
    return LLMError.exit_code if any(t.error for t in turns) else 0


def transcribe(settings: Settings, path: str) -> list[tuple[SpeechEnded, Transcript]]:
    """Each utterance in a file with its transcript: the same decoder, VAD and STT as chat.

    As in chat, the words heard at each pause tell the endpointer whether the sentence sounded
    finished (end the utterance soon) or not (wait longer), so both split a recording alike.
    """
    samples = load_audio(path)
    transcriber = WhisperTranscriber(settings.stt)
    endpointer = make_endpointer(settings.vad)
    out: list[tuple[SpeechEnded, Transcript]] = []
    paused: tuple[float, Transcript] | None = None  # (end_s, words) of the pause being weighed

    def heard(event: SpeechEnded) -> Transcript:
        started = time.perf_counter()
        text = transcriber.transcribe(event.audio)
        return Transcript(text=text, stt_ms=(time.perf_counter() - started) * 1000)

    for block in ArraySource(samples).iter_blocks():
        for event in endpointer.feed(block):
            if not isinstance(event, SpeechEnded):
                continue
            if not event.final:
                words = heard(event)
                endpointer.hint(sounds_finished(words.text))
                paused = (event.end_s, words)
                continue
            # The pause that ended the utterance was already transcribed (chat reuses it too).
            words = paused[1] if paused is not None and paused[0] == event.end_s else heard(event)
            paused = None
            if words.text:
                out.append((event, words))
    return out


def say(settings: Settings, text: str, output: str | None) -> Path | None:
    """Speak ``text`` through the speaker, or write it to ``output`` as a WAV."""
    synthesizer = HibariSynthesizer(settings.tts)
    samples = synthesizer.synthesize(text)
    if output:
        return save_wav(output, samples, synthesizer.sample_rate)
    try:
        sink = SpeakerSink(synthesizer.sample_rate)
    except AudioDeviceError as exc:
        raise AudioDeviceError(f"{exc} Or write a file with -o out.wav.") from None

    async def play() -> None:
        await sink.play(samples)
        await sink.drain()

    try:
        asyncio.run(play())
    finally:
        sink.close()
    return None
