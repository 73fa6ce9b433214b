"""`voxloop wyoming`: the Wyoming server with real models and a real LLM server, driven by the
real `wyoming` package's client the way Home Assistant's integration drives it (describe, speech
to text, text to speech, the conversation agent), and its guards (garbage, disconnects)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.handle import Handled, HandledChunk, HandledStop
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from conftest import ROOT, TEST_PRESET, wer
from voxloop.audio.decode import resample
from voxloop.llm.openai_http import OpenAIChat
from voxloop.llm.server import free_port
from voxloop.server.wyoming import WyomingOptions, WyomingServer
from voxloop.server.wyoming_asr import ClientError, StablePrefix, Utterance, decode_pcm
from voxloop.server.wyoming_wire import MAX_PAYLOAD_BYTES, WireError, read_event
from voxloop.settings import LlmSettings, Settings, TtsSettings

QUESTION = "What is the capital of France?"
DEFAULT_PRESET = Settings().llm.preset  # what voxloop answers with when not told otherwise


# -- the server, in a thread and event loop of its own, as another process would be ----------
@contextlib.contextmanager
def running(
    transcriber: Any, synthesizer: Any, llm_url: str, options: WyomingOptions | None = None
) -> Iterator[WyomingServer]:
    settings = Settings(llm=LlmSettings(preset=TEST_PRESET, temperature=0.0), tts=TtsSettings(seed=0))
    options = dataclasses.replace(options or WyomingOptions(), port=free_port())
    server = WyomingServer(settings, transcriber, synthesizer, OpenAIChat(llm_url, settings.llm), options)
    started = threading.Event()
    held: dict[str, Any] = {}

    async def serve() -> None:
        held["loop"], held["stop"] = asyncio.get_running_loop(), asyncio.Event()
        await server.run(held["stop"], lambda s: started.set())

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            held["error"] = exc
            started.set()

    thread = threading.Thread(target=main, name="wyoming-server", daemon=True)
    thread.start()
    assert started.wait(60) and "error" not in held, held.get("error")
    try:
        yield server
    finally:
        held["loop"].call_soon_threadsafe(held["stop"].set)
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def served(llm_server, transcriber, synthesizer) -> Iterator[WyomingServer]:
    with running(transcriber, synthesizer, llm_server) as server:
        yield server


def client(server: WyomingServer) -> AsyncTcpClient:
    return AsyncTcpClient(server.options.host, server.options.port, connect_timeout=5)


async def read_until(c: AsyncTcpClient, last: Callable[[Event], bool], timeout: float = 60) -> list[Event]:
    """Events up to and including the first one ``last`` accepts."""
    events: list[Event] = []
    while True:
        event = await asyncio.wait_for(c.read_event(), timeout)
        assert event is not None, f"the server closed the connection after {[e.type for e in events]}"
        events.append(event)
        if last(event):
            return events


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


async def send_speech(
    c: AsyncTcpClient, samples: np.ndarray, rate: int = 16000, channels: int = 1, pace_s: float = 0.0
) -> None:
    """Home Assistant's STT request: transcribe, audio-start, 1024-sample chunks, audio-stop."""
    await c.write_event(Transcribe(language="en").event())
    await c.write_event(AudioStart(rate=rate, width=2, channels=channels).event())
    data = pcm16(samples.reshape(-1))  # frames x channels -> interleaved
    step = 1024 * 2 * channels
    for i in range(0, len(data), step):
        await c.write_event(
            AudioChunk(rate=rate, width=2, channels=channels, audio=data[i : i + step]).event()
        )
        if pace_s:
            await asyncio.sleep(pace_s)
    await c.write_event(AudioStop().event())


def spoken(speech: Callable[..., Any], text: str) -> np.ndarray:
    samples, rate = sf.read(str(speech([text])), dtype="float32")
    assert rate == 16000
    return samples


def audio_of(events: list[Event]) -> tuple[np.ndarray, int]:
    chunks = [AudioChunk.from_event(e) for e in events if AudioChunk.is_type(e.type)]
    assert chunks, [e.type for e in events]
    assert {(c.width, c.channels) for c in chunks} == {(2, 1)}
    assert max(c.samples for c in chunks) <= 1024
    rate = chunks[0].rate
    pcm = b"".join(c.audio for c in chunks)
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768, rate


# -- describe ----------------------------------------------------------------------------------
async def test_describe_lists_asr_tts_and_handle_within_a_second(served):
    t0 = time.perf_counter()
    async with client(served) as c:
        await c.write_event(Describe().event())
        events = await read_until(c, lambda e: Info.is_type(e.type), timeout=1)
    took = time.perf_counter() - t0
    info = Info.from_event(events[-1])
    print(f"describe -> info in {took * 1000:.0f} ms")
    assert took < 1.0
    assert [p.name for p in info.asr] == ["voxloop"] and info.asr[0].installed
    assert info.asr[0].models[0].languages == ["en"] and info.asr[0].supports_transcript_streaming
    voices = info.tts[0].voices
    assert [v.name for v in voices] == ["heart"] and voices[0].installed and voices[0].languages == ["en"]
    assert info.tts[0].supports_synthesize_streaming
    handle = info.handle[0]
    assert handle.installed and handle.models[0].installed and handle.supports_handled_streaming
    assert not handle.supports_home_control


# -- speech to text ----------------------------------------------------------------------------
async def test_a_spoken_question_is_transcribed(served, speech):
    async with client(served) as c:
        await send_speech(c, spoken(speech, QUESTION))
        sent = time.perf_counter()
        events = await read_until(c, lambda e: Transcript.is_type(e.type))
        took = time.perf_counter() - sent
        rest = await read_until(c, lambda e: TranscriptStop.is_type(e.type))
    text = Transcript.from_event(events[-1]).text
    print(f"transcript {text!r} {took * 1000:.0f} ms after audio-stop")
    assert wer(QUESTION, text) <= 0.25, text
    assert Transcript.from_event(events[-1]).language == "en"
    # The streaming form around it, for clients that read it: the chunks add up to the text.
    kinds = [e.type for e in events + rest]
    assert kinds[0] == "transcript-start" and kinds[-1] == "transcript-stop"
    chunks = [TranscriptChunk.from_event(e).text for e in events if TranscriptChunk.is_type(e.type)]
    assert "".join(chunks) == text


async def test_audio_at_22050_hz_stereo_is_converted_for_whisper(served, speech):
    mono = resample(spoken(speech, QUESTION), 16000, 22050)
    stereo = np.stack([mono, mono * 0.5], axis=1)
    async with client(served) as c:
        await send_speech(c, stereo, rate=22050, channels=2)
        events = await read_until(c, lambda e: Transcript.is_type(e.type))
    text = Transcript.from_event(events[-1]).text
    assert wer(QUESTION, text) <= 0.25, text


async def test_partial_transcripts_stream_while_the_client_talks(served, speech):
    question = "What is the capital of France, and how many people live in Paris?"
    samples = spoken(speech, question)
    events: list[tuple[float, Event]] = []
    async with client(served) as c:

        async def reader() -> None:
            while (event := await c.read_event()) is not None:
                events.append((time.perf_counter(), event))
                if TranscriptStop.is_type(event.type):
                    return

        task = asyncio.create_task(reader())
        await send_speech(c, samples, pace_s=1024 / 16000)  # in real time, as a microphone
        stopped = time.perf_counter()
        await asyncio.wait_for(task, 60)
    at = next(at for at, e in events if Transcript.is_type(e.type))
    print(f"real-time audio: transcript {(at - stopped) * 1000:.0f} ms after audio-stop")
    kinds = [e.type for _, e in events]
    assert kinds[0] == "transcript-start" and kinds[-2:] == ["transcript", "transcript-stop"], kinds
    early = [e for at, e in events if TranscriptChunk.is_type(e.type) and at < stopped]
    assert early, f"no partial transcript before audio-stop: {kinds}"
    text = Transcript.from_event(events[-2][1]).text
    chunks = "".join(TranscriptChunk.from_event(e).text for _, e in events if TranscriptChunk.is_type(e.type))
    print(
        f"partials before audio-stop: {[TranscriptChunk.from_event(e).text for e in early]}; final {text!r}"
    )
    assert chunks == text and wer(question, text) <= 0.25


# -- text to speech ----------------------------------------------------------------------------
async def test_synthesized_speech_transcribes_back(served, transcriber):
    async with client(served) as c:
        await c.write_event(Synthesize(text="The capital of France is Paris.").event())
        events = await read_until(c, lambda e: AudioStop.is_type(e.type))
    assert AudioStart.is_type(events[0].type)
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    audio, rate = audio_of(events)
    assert 1.0 < len(audio) / rate < 6.0
    heard = transcriber.transcribe(resample(audio, rate, 16000))
    print(f"synthesized, heard back: {heard!r}")
    assert "paris" in heard.lower()


async def test_streamed_text_is_spoken_sentence_by_sentence(served, transcriber):
    pieces = ["The capital of France ", "is Paris. Berlin is ", "the capital of Germany."]
    async with client(served) as c:
        await c.write_event(SynthesizeStart().event())
        for piece in pieces:
            await c.write_event(SynthesizeChunk(text=piece).event())
        await c.write_event(Synthesize(text="".join(pieces)).event())  # the compatibility copy
        await c.write_event(SynthesizeStop().event())
        events = await read_until(c, lambda e: SynthesizeStopped.is_type(e.type))
        # Nothing more comes: the compatibility copy was not spoken again.
        await c.write_event(Describe().event())
        after = await read_until(c, lambda e: Info.is_type(e.type), timeout=5)
    assert [e.type for e in after] == ["info"]
    kinds = [e.type for e in events]
    assert kinds.count("audio-start") == kinds.count("audio-stop") >= 2, kinds
    audio, rate = audio_of(events)
    heard = transcriber.transcribe(resample(audio, rate, 16000)).lower()
    assert "paris" in heard and "berlin" in heard, heard


# -- the conversation agent --------------------------------------------------------------------
async def handle(server: WyomingServer, text: str, conversation_id: str) -> list[Event]:
    async with client(server) as c:
        await c.write_event(Transcript(text=text, context={"conversation_id": conversation_id}).event())
        return await read_until(c, lambda e: HandledStop.is_type(e.type))


async def test_the_agent_remembers_the_conversation(proxy, transcriber, synthesizer):
    with running(transcriber, synthesizer, proxy.url) as server:
        first = await handle(server, "My name is Alice.", "kitchen-1")
        second = await handle(server, "What is my name?", "kitchen-1")
        other = await handle(server, "What is my name?", "garage-7")
    for events, conversation_id in ((first, "kitchen-1"), (second, "kitchen-1"), (other, "garage-7")):
        kinds = [e.type for e in events]
        assert kinds[0] == "handled-start" and kinds[-2:] == ["handled", "handled-stop"], kinds
        done = Handled.from_event(events[-2])
        assert done.text and done.context == {"conversation_id": conversation_id}
        assert (
            "".join(HandledChunk.from_event(e).text for e in events if HandledChunk.is_type(e.type))
            == done.text
        )
        assert "**" not in done.text and "#" not in done.text  # speakable, as voxloop chat says it
    reply = Handled.from_event(first[-2]).text
    answer = Handled.from_event(second[-2]).text
    print(f"handle: 'My name is Alice.' -> {reply!r}; 'What is my name?' -> {answer!r}")
    messages = [r["messages"] for r in proxy.chats]
    assert messages[0][0]["role"] == "system" and "voxloop" in messages[0][0]["content"]
    # The second turn carried the first exchange; another conversation did not.
    assert messages[1][1:] == [
        {"role": "user", "content": "My name is Alice."},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "What is my name?"},
    ]
    assert messages[2][1:] == [{"role": "user", "content": "What is my name?"}]


async def test_the_default_model_answers_from_the_history(transcriber, synthesizer, tmp_path_factory):
    """SmolLM2 (the tests' tiny preset) forgets a name it was told; the default model does not."""
    from voxloop.llm.server import start_server

    os.environ.setdefault("VOXLOOP_HOME", str(tmp_path_factory.mktemp("voxloop-home")))
    info, proc = start_server(LlmSettings(preset=DEFAULT_PRESET), detach=False)
    try:
        with running(transcriber, synthesizer, info.url) as server:
            await handle(server, "Hi, my name is Alice.", "living-room")
            answer = Handled.from_event((await handle(server, "What is my name?", "living-room"))[-2]).text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"handle, {DEFAULT_PRESET} preset: 'What is my name?' -> {answer!r}")
    assert "alice" in answer.lower()


async def test_one_shot_forms_when_streaming_is_off(proxy, transcriber, synthesizer, speech):
    proxy.plan = ["say:**Sure!** The answer is forty-two."]
    with running(transcriber, synthesizer, proxy.url, WyomingOptions(streaming=False)) as server:
        async with client(server) as c:
            await c.write_event(Describe().event())
            info = Info.from_event((await read_until(c, lambda e: Info.is_type(e.type)))[-1])
            await send_speech(c, spoken(speech, QUESTION))
            asr = await read_until(c, lambda e: Transcript.is_type(e.type))
            await c.write_event(Transcript(text="What is the answer?").event())
            handled = await read_until(c, lambda e: Handled.is_type(e.type))
    assert not (
        info.asr[0].supports_transcript_streaming
        or info.tts[0].supports_synthesize_streaming
        or info.handle[0].supports_handled_streaming
    )
    assert [e.type for e in asr] == ["transcript"] and [e.type for e in handled] == ["handled"]
    done = Handled.from_event(handled[0])
    assert done.text == "Sure! The answer is forty-two."  # markdown gone, as voxloop would say it
    assert done.context and len(done.context["conversation_id"]) == 32  # a new conversation, named


# -- guards ------------------------------------------------------------------------------------
async def test_garbage_gets_an_error_and_the_connection_goes_on(served):
    reader, writer = await asyncio.open_connection(served.options.host, served.options.port)
    try:
        writer.write(b"this is not json\n")
        writer.write(b'{"type": "audio-chunk", "data": "nope"}\n')
        writer.write(json.dumps({"type": "x", "payload_length": MAX_PAYLOAD_BYTES + 1}).encode() + b"\n")
        writer.write(b"\0" * (MAX_PAYLOAD_BYTES + 1))
        await async_write_event(Event(type="launch-missiles", data={"now": True}), writer)
        await async_write_event(
            AudioChunk(rate=16000, width=2, channels=1, audio=b"\0\0" * 160).event(), writer
        )
        await async_write_event(AudioStop().event(), writer)
        await async_write_event(SynthesizeChunk(text="hello").event(), writer)
        await async_write_event(AudioStart(rate=16000, width=5, channels=1).event(), writer)
        await async_write_event(Event(type="synthesize", data={"text": 42}), writer)
        await async_write_event(Describe().event(), writer)
        errors = []
        while True:
            event = await asyncio.wait_for(async_read_event(reader), 10)
            assert event is not None
            if Info.is_type(event.type):
                break
            assert Error.is_type(event.type), event
            errors.append(Error.from_event(event))
    finally:
        writer.close()
    texts = [e.text for e in errors]
    assert len(errors) == 9, texts
    assert "Not a Wyoming event" in texts[0] and '"data" must be a JSON object' in texts[1]
    assert "over the limit" in texts[2] and "launch-missiles" in texts[3]
    assert "audio-chunk before audio-start" in texts[4] and "audio-stop without audio-start" in texts[5]
    assert "synthesize-chunk outside a stream" in texts[6] and "Unsupported audio format" in texts[7]
    assert "synthesize needs a non-empty text" in texts[8]
    assert errors[3].code == "unknown-event"


async def test_a_client_that_hangs_up_mid_reply_closes_the_llm_stream(proxy, transcriber, synthesizer):
    proxy.plan = ["stall:4:Let me think about that. It is a long story."]
    with running(transcriber, synthesizer, proxy.url) as server:
        async with client(server) as c:
            await c.write_event(Transcript(text="Tell me a long story.").event())
            await read_until(c, lambda e: HandledChunk.is_type(e.type))
            # and a synthesize stream left open, and an utterance never stopped
            await c.write_event(SynthesizeStart().event())
            await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        hung_up = time.monotonic()
        deadline = hung_up + 10
        while not proxy.client_gone and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert proxy.client_gone, "the LLM stream stayed open after the client left"
        assert not server.connections  # the connection's task ended, with its worker
        async with client(server) as c:  # and the server goes on
            await c.write_event(Describe().event())
            await read_until(c, lambda e: Info.is_type(e.type), timeout=2)


async def test_zeroconf_lets_home_assistant_find_the_server(llm_server, transcriber, synthesizer):
    """Home Assistant's discovery: resolve ``_wyoming._tcp``, connect to what it names, describe."""
    pytest.importorskip("zeroconf")
    from zeroconf.asyncio import AsyncZeroconf

    from voxloop.server.wyoming_zeroconf import SERVICE_TYPE, lan_address

    try:
        lan_address()
    except OSError:
        pytest.skip("no LAN interface to announce on")
    name = f"voxloop-test-{os.getpid()}"
    options = WyomingOptions(host="0.0.0.0", zeroconf=name)
    with running(transcriber, synthesizer, llm_server, options) as server:
        zc = AsyncZeroconf()
        try:
            found = await zc.async_get_service_info(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", timeout=3000)
        finally:
            await zc.async_close()
        assert found is not None and found.port == server.options.port
        async with AsyncTcpClient(found.parsed_addresses()[0], found.port, connect_timeout=5) as c:
            await c.write_event(Describe().event())
            await read_until(c, lambda e: Info.is_type(e.type), timeout=2)
    zc = AsyncZeroconf()
    try:  # withdrawn when the server stopped
        assert await zc.async_get_service_info(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", timeout=1000) is None
    finally:
        await zc.async_close()


# -- the command -------------------------------------------------------------------------------
def test_the_command_serves_until_sigterm(llm_server, tmp_path):
    port = free_port()
    env = {**os.environ, "VOXLOOP_HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxloop", "wyoming", "--host", "0.0.0.0", "--port", str(port), "--llm-url", llm_server],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = []
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "listens on" in line:
                break
        assert any("listens on" in line for line in lines), "".join(lines)
        assert "no authentication" in "".join(lines) and "Wyoming Protocol" in lines[-1]

        async def describe() -> float:
            t0 = time.perf_counter()
            async with AsyncTcpClient("127.0.0.1", port, connect_timeout=2) as c:
                await c.write_event(Describe().event())
                event = await asyncio.wait_for(c.read_event(), 1)
            assert event is not None and Info.is_type(event.type)
            return time.perf_counter() - t0

        print(f"describe against `voxloop wyoming`: {asyncio.run(describe()) * 1000:.0f} ms")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_zeroconf_needs_a_lan_address(voxloop):
    run = voxloop("wyoming", "--zeroconf", "--llm-url", "http://127.0.0.1:9/v1", timeout=60)
    assert run.code == 2 and "--host 0.0.0.0" in run.err, run.err


# -- the pieces, without models ------------------------------------------------------------------
def test_pcm_of_every_width_decodes_to_the_same_mono_signal():
    tone = np.sin(np.linspace(0, 20, 480)).astype(np.float32) * 0.5
    stereo = np.stack([tone, tone], axis=1).reshape(-1)
    as_int = {
        1: (np.round(stereo * 127) + 128).astype(np.uint8).tobytes(),
        2: (stereo * 32767).astype("<i2").tobytes(),
        3: b"".join(int(v).to_bytes(3, "little", signed=True) for v in np.round(stereo * 8388607)),
        4: (stereo * 2147483647).astype("<i4").tobytes(),
    }
    for width, data in as_int.items():
        assert np.allclose(decode_pcm(data, width, 2), tone, atol=0.01), width


def test_an_utterance_refuses_a_chunk_that_does_not_fit():
    utt = Utterance(16000, 2, 1, max_s=0.1)
    with pytest.raises(ClientError, match="differs from"):
        utt.add(b"\0\0" * 10, 22050, 2, 1)
    with pytest.raises(ClientError, match="whole number"):
        utt.add(b"\0" * 3, 16000, 2, 1)
    utt.add(b"\0\0" * 1600, 16000, 2, 1)
    with pytest.raises(ClientError, match=r"longer than 0\.1 s"):
        utt.add(b"\0\0" * 10, 16000, 2, 1)
    utt.add(b"\0\0" * 10, 16000, 2, 1)  # said once; the rest is dropped quietly
    assert utt.frames == 1600 and len(utt.audio()) == 1600


def test_partial_words_are_sent_once_two_partials_agree():
    stable = StablePrefix()
    assert stable.partial("What is") == ""
    assert stable.partial("What is the capital.") == "What is"
    assert stable.partial("What is the capital of") == " the"  # "capital." and "capital" differ
    assert stable.partial("What is the capital of France") == " capital of"
    assert stable.final("What is the capital of France?") == " France?"
    assert StablePrefix().final("Hello there.") == "Hello there."


async def test_the_wire_reader_reports_a_bad_event_and_stays_in_step():
    reader = asyncio.StreamReader()
    reader.feed_data(b'{"type": "a", "data_length": 9}\n{"bad": 1{"type": "b"}\n')
    reader.feed_eof()
    with pytest.raises(WireError, match="not a JSON object"):
        await read_event(reader)
    event = await read_event(reader)
    assert event is not None and event.type == "b"
    assert await read_event(reader) is None


def test_zeroconf_announces_the_lan_address():
    pytest.importorskip("zeroconf")
    from voxloop.errors import ConfigError
    from voxloop.server.wyoming_zeroconf import SERVICE_TYPE, announced_address, service_info

    info = service_info("voxloop-test", "192.168.1.5", 10300)
    assert info.type == SERVICE_TYPE == "_wyoming._tcp.local."
    assert info.name == "voxloop-test._wyoming._tcp.local." and info.port == 10300
    assert info.parsed_addresses() == ["192.168.1.5"]
    with pytest.raises(ConfigError, match=r"--host 0\.0\.0\.0"):
        announced_address("127.0.0.1")
