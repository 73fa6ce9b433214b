"""Barge-in: the user talks over voxloop. Playback stops within 200 ms, the reply stream is
closed, and the history keeps only what was heard. voxloop's own voice coming back through the
microphone (simulated room echo) must not trigger it when echo cancellation is on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from conftest import cer
from kit import ScriptedChat, Voice, Words
from voxloop.audio.aec import make_echo_canceller
from voxloop.audio.sink import NullSink
from voxloop.audio.speech import spoken_turns
from voxloop.conversation import Conversation
from voxloop.events import Event, Interrupted, SpeechEnded, SpeechStarted, TurnDone
from voxloop.llm.openai_http import OpenAIChat
from voxloop.pipeline import Assistant
from voxloop.printer import CollectingPrinter
from voxloop.reply import Models, ReplyJob
from voxloop.settings import LlmSettings, Settings, VadSettings
from voxloop.testing import EchoSource, VirtualSpeaker
from voxloop.vad.endpointer import SileroEndpointer

# Playback pauses on the first voiced step over it; the reply is cut once the voice has lasted
# VadSettings.interrupt_ms (0.7 s), which the echo canceller's double-talk onset delays.
CUT_WITHIN_S = 1.5

STORY = (
    "Once upon a time, a small dragon lived on a quiet hill. Every morning she flew over the "
    "village to count the sheep. The farmers waved at her and she waved back. One day the sheep "
    "were gone, and the dragon followed their tracks into the dark forest. There she found a "
    "lost lamb crying under an old oak tree. She carried it home on her back. "
)


def story_chat() -> ScriptedChat:
    """Tells a long story slowly, then answers the next request with the time."""
    return ScriptedChat([w + " " for w in (STORY * 3).split(" ")], ["It is three o'clock."], delay_s=0.01)


def _scene(synthesizer, interrupt_after_s: float = 2.5) -> tuple[np.ndarray, float, float]:
    """The user asks for a story, then talks over the reply. Returns (audio, end of the
    question, the instant the interruption becomes audible) on the 16 kHz clock, in seconds."""
    ask = spoken_turns(synthesizer, ["Tell me a story about a dragon."], lead_s=0.5, turn_gap_s=0)
    end_of_question = (len(ask) - 0.5 * 16000) / 16000
    gap = np.zeros(int(interrupt_after_s * 16000), np.float32)
    stop = spoken_turns(synthesizer, ["Stop. What time is it?"], lead_s=0.0)
    onset = int(np.flatnonzero(np.abs(stop) > 0.01)[0])
    start_of_interruption = (len(ask) + len(gap) + onset) / 16000
    tail = np.zeros(16000 * 3, np.float32)
    return np.concatenate([ask, gap, stop, tail]), end_of_question, start_of_interruption


async def _run(settings, transcriber, synthesizer, chat, audio, aec_kind: str | None, gain: float = 0.5):
    speaker = VirtualSpeaker(synthesizer.sample_rate)
    printer = CollectingPrinter()
    aec = make_echo_canceller(aec_kind) if aec_kind else None
    assistant = Assistant(settings, transcriber, chat, synthesizer, speaker, printer, aec=aec)
    turns = await assistant.run(EchoSource(audio, speaker, delay_ms=40, gain=gain))
    return turns, printer.events, speaker, assistant


@pytest.mark.integration
async def test_barge_in_stops_playback_closes_stream_and_keeps_what_was_heard(transcriber, synthesizer):
    audio, _end_q, interrupt_at = _scene(synthesizer)
    chat = story_chat()
    turns, events, speaker, _assistant = await _run(
        Settings(), transcriber, synthesizer, chat, audio, "webrtc"
    )

    # The echo of the story never counted as the user: the only speech starts are the two turns.
    starts = [e.at_s for e in events if isinstance(e, SpeechStarted)]
    assert len(starts) == 2, starts
    interrupted = [e for e in events if isinstance(e, Interrupted)]
    assert len(interrupted) == 1
    # Playback stopped soon after the user started talking over it: paused on the first step
    # that sounded like speech, then flushed once the next one confirmed it. Through echo
    # cancellation the first ~150 ms of the user's voice are held down (AEC3's double-talk
    # onset), so the bound here is 250 ms; with headphones (no echo, below) it is 200 ms.
    assert len(speaker.paused_at_s) == 1 and not speaker.resumed_at_s
    assert 0 <= speaker.paused_at_s[0] - interrupt_at <= 0.25, (speaker.paused_at_s, interrupt_at)
    assert len(speaker.flushed_at_s) == 1
    # Cut (flushed) once 0.7 s of voice makes it an interruption, not a cough or an "okay".
    assert 0.6 < speaker.flushed_at_s[0] - speaker.paused_at_s[0] <= CUT_WITHIN_S
    # The reply stream was closed, so the server stops generating.
    assert chat.closed_early == 1
    # The history keeps what was heard: the second request carries the spoken part only.
    first, second = turns
    assert first.interrupted and not second.interrupted
    heard = interrupted[0].spoken
    assert heard and heard == first.assistant
    assert heard.startswith("Once upon a time")
    assert len(heard) < len(STORY) * 3 / 2
    history = chat.requests[1]
    assert history[-2] == {"role": "assistant", "content": heard}
    assert "what time is it" in second.user.lower()
    assert second.assistant == "It is three o'clock."


@pytest.mark.integration
async def test_barge_in_with_headphones_stops_within_200_ms(transcriber, synthesizer):
    """No echo reaches the microphone (headphones): full duplex without a canceller."""
    audio, _end_q, interrupt_at = _scene(synthesizer)
    chat = story_chat()
    turns, _events, speaker, _ = await _run(Settings(), transcriber, synthesizer, chat, audio, None, gain=0.0)
    assert len(speaker.paused_at_s) == 1 and len(speaker.flushed_at_s) == 1
    assert 0 <= speaker.paused_at_s[0] - interrupt_at <= 0.2, (speaker.paused_at_s, interrupt_at)
    assert turns[0].interrupted and chat.closed_early == 1


@pytest.mark.integration
async def test_without_echo_cancellation_the_echo_would_interrupt(transcriber, synthesizer):
    """The control for the test above: the same room without AEC barges in on its own echo."""
    audio, _end_q, interrupt_at = _scene(synthesizer)
    chat = story_chat()
    turns, _events, speaker, _ = await _run(Settings(), transcriber, synthesizer, chat, audio, None)
    assert speaker.paused_at_s and speaker.paused_at_s[0] < interrupt_at - 0.3
    assert speaker.flushed_at_s and turns[0].interrupted


@pytest.mark.integration
async def test_barge_in_with_a_real_llm_server(transcriber, synthesizer, llm_server):
    """The same scene against llama.cpp: a long reply is cut and its stream closed."""
    audio, _end_q, interrupt_at = _scene(synthesizer, interrupt_after_s=2.0)
    settings = Settings(
        system_prompt="You are a storyteller. Always tell a long story of at least ten sentences.",
        # ignore_eos: the reply outlasts the interruption whatever greedy decoding picks on this box
        llm=LlmSettings(max_tokens=400, temperature=0.0, extra_body='{"ignore_eos": true}'),
    )
    chat = OpenAIChat(llm_server, settings.llm)
    await chat.connect()
    try:
        _turns, events, speaker, _ = await _run(settings, transcriber, synthesizer, chat, audio, "webrtc")
    finally:
        await chat.aclose()
    done = [e for e in events if isinstance(e, TurnDone)]
    assert [t.interrupted for t in done][:1] == [True]
    assert speaker.paused_at_s and 0 <= speaker.paused_at_s[0] - interrupt_at <= 0.25
    assert speaker.flushed_at_s and 0 <= speaker.flushed_at_s[0] - interrupt_at <= CUT_WITHIN_S
    # Whisper hears the interruption through the canceller's double-talk, which may blur a word.
    assert len(done) == 2 and cer("Stop. What time is it?", done[1].user) <= 0.25, done[1].user


def test_a_paused_speaker_goes_on_where_it_stopped_and_a_flush_ends_the_pause():
    speaker = VirtualSpeaker(16000)
    reply = np.arange(1, 16001, dtype=np.float32) / 16000  # 1 s that shows where it is
    asyncio.run(speaker.play(reply))
    speaker.now = 4000
    speaker.pause()
    assert speaker.played_total == 4000 and speaker.busy()
    speaker.now = 5000  # 1000 samples of silence while held
    assert not speaker.render(4000, 5000).any() and speaker.played_total == 4000
    speaker.resume()
    assert np.array_equal(speaker.render(5000, 5100), reply[4000:4100])
    speaker.now = 5000 + 12000
    assert speaker.played_total == 16000 and not speaker.busy()  # nothing lost
    speaker.pause()
    asyncio.run(speaker.play(reply))  # queued while held: waits for the resume or the flush
    assert speaker.busy() and not speaker.render(17000, 18000).any()
    speaker.flush()
    assert not speaker.busy()
    asyncio.run(speaker.play(reply[:100]))  # after a flush the speaker plays again at once
    assert np.array_equal(speaker.render(17000, 17100), reply[:100])


def short_chat() -> ScriptedChat:
    """One short reply (about six seconds of speech)."""
    return ScriptedChat([w + " " for w in STORY.split(" ")[:24]])


def _blip(synthesizer, before: np.ndarray) -> np.ndarray:
    """A sliver of a hum that the endpointer, after ``before``, hears as voiced for exactly one
    step and never announces: a click or a breath, not the user talking."""
    hum = spoken_turns(synthesizer, ["Hm."], lead_s=0.0)
    voiced = np.flatnonzero(np.abs(hum) > 0.02)
    for start in range(int(voiced[0]), int(voiced[-1]), 160):
        for ms in (40, 60, 80, 100):
            blip = hum[start : start + ms * 16]
            endpointer = SileroEndpointer(VadSettings())
            endpointer.feed(before)
            trail = np.concatenate([blip, np.zeros(16000, np.float32)])
            heard, events = [], []
            for i in range(0, len(trail) - 511, 512):
                events += endpointer.feed(trail[i : i + 512])
                heard.append(endpointer.hearing)
            if sum(heard) == 1 and not events:
                return blip
    raise AssertionError("no one-step blip in this hum")


@pytest.mark.integration
async def test_a_click_during_the_reply_pauses_it_for_a_moment_and_it_goes_on(transcriber, synthesizer):
    """Headphones, and a short noise while voxloop talks: playback holds on the voiced step and
    goes on one step later from where it stopped. The reply is neither cut nor lost."""
    ask = spoken_turns(synthesizer, ["Tell me a short story."], lead_s=0.5, turn_gap_s=0)
    before = np.concatenate([ask, np.zeros(2 * 16000 - len(ask) % 512, np.float32)])
    blip = _blip(synthesizer, before)
    audio = np.concatenate([before, blip, np.zeros(12 * 16000, np.float32)])
    chat = short_chat()
    turns, events, speaker, _ = await _run(Settings(), transcriber, synthesizer, chat, audio, None, gain=0.0)
    assert len(speaker.paused_at_s) == 1 and len(speaker.resumed_at_s) == 1, events
    assert 0 < speaker.resumed_at_s[0] - speaker.paused_at_s[0] <= 0.07
    assert not speaker.flushed_at_s and not [e for e in events if isinstance(e, Interrupted)]
    assert chat.closed_early == 0
    assert len(turns) == 1 and not turns[0].interrupted
    assert speaker.played_total == speaker.queued_total  # every sample of the reply was heard
    assert turns[0].assistant == " ".join(STORY.split(" ")[:24])


def _cough(synthesizer, before: np.ndarray) -> np.ndarray:
    """A voiced sound of ~100-200 ms that the endpointer announces as speech, then drops as too
    short to be a turn: a cough, a "hm" over the reply."""
    hum = spoken_turns(synthesizer, ["Hm."], lead_s=0.0)
    voiced = np.flatnonzero(np.abs(hum) > 0.02)
    for ms in (120, 160, 200):
        cough = hum[int(voiced[0]) : int(voiced[0]) + ms * 16]
        endpointer = SileroEndpointer(VadSettings())
        endpointer.feed(before)
        events = endpointer.feed(np.concatenate([cough, np.zeros(16000, np.float32)]))
        if [type(e) for e in events] == [SpeechStarted]:
            return cough
    raise AssertionError("no announced-then-dropped sound in this hum")


@pytest.mark.integration
async def test_a_cough_over_the_reply_pauses_it_and_it_goes_on(transcriber, synthesizer):
    """Headphones, and a sound long enough to be announced as speech but too short to be a turn:
    the reply holds for a moment and goes on where it was, whole (false-interruption resume)."""
    ask = spoken_turns(synthesizer, ["Tell me a short story."], lead_s=0.5, turn_gap_s=0)
    before = np.concatenate([ask, np.zeros(2 * 16000 - len(ask) % 512, np.float32)])
    audio = np.concatenate([before, _cough(synthesizer, before), np.zeros(12 * 16000, np.float32)])
    chat = short_chat()
    turns, events, speaker, _ = await _run(Settings(), transcriber, synthesizer, chat, audio, None, gain=0.0)
    assert len([e for e in events if isinstance(e, SpeechStarted)]) == 2, events  # the cough was announced
    assert len(speaker.paused_at_s) == 1 and len(speaker.resumed_at_s) == 1
    assert (
        0 < speaker.resumed_at_s[0] - speaker.paused_at_s[0] <= 1.0
    )  # the sound and the silence that ends it
    assert not speaker.flushed_at_s and not [e for e in events if isinstance(e, Interrupted)]
    assert len(turns) == 1 and not turns[0].interrupted and chat.closed_early == 0
    assert speaker.played_total == speaker.queued_total  # every sample of the reply was heard


@pytest.mark.integration
@pytest.mark.parametrize("said", ["Okay.", "Yeah."])
async def test_an_uh_huh_over_the_reply_is_not_a_turn_and_the_reply_goes_on(transcriber, synthesizer, said):
    ask = spoken_turns(synthesizer, ["Tell me a short story."], lead_s=0.5, turn_gap_s=0)
    before = np.concatenate([ask, np.zeros(2 * 16000 - len(ask) % 512, np.float32)])
    nod = spoken_turns(synthesizer, [said], lead_s=0.0, turn_gap_s=0)
    audio = np.concatenate([before, nod, np.zeros(12 * 16000, np.float32)])
    chat = short_chat()
    turns, events, speaker, _ = await _run(Settings(), transcriber, synthesizer, chat, audio, None, gain=0.0)
    assert len(speaker.paused_at_s) == 1 and len(speaker.resumed_at_s) == 1, (speaker.paused_at_s, events)
    assert 0 < speaker.resumed_at_s[0] - speaker.paused_at_s[0] <= 1.6  # the nod, its endpoint, its words
    assert not speaker.flushed_at_s and not [e for e in events if isinstance(e, Interrupted)]
    assert len(turns) == 1 and not turns[0].interrupted and len(chat.requests) == 1
    assert speaker.played_total == speaker.queued_total


class FakeOutputStream:
    """Stands in for sounddevice's OutputStream: the test calls the PortAudio callback itself."""

    def __init__(self, callback, blocksize, **_kwargs) -> None:
        self.callback, self.blocksize = callback, blocksize

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def pull(self) -> np.ndarray:
        out = np.full((self.blocksize, 1), 9.0, np.float32)
        self.callback(out, self.blocksize, None, None)
        return out[:, 0]


def test_the_speaker_plays_silence_while_paused_and_goes_on_with_the_next_block(monkeypatch):
    import types

    from voxloop.audio import sink as sink_module

    streams: list[FakeOutputStream] = []
    fake = types.SimpleNamespace(
        query_devices=lambda *a, **k: {},
        OutputStream=lambda **kw: streams.append(FakeOutputStream(**kw)) or streams[-1],
    )
    monkeypatch.setattr(sink_module, "_import_sounddevice", lambda: fake)
    speaker = sink_module.SpeakerSink(24000, block=4)
    stream = streams[0]
    asyncio.run(speaker.play(np.arange(1, 13, dtype=np.float32)))  # three blocks
    assert stream.pull().tolist() == [1, 2, 3, 4]
    speaker.pause()
    assert not stream.pull().any() and speaker.busy() and speaker.played_total == 4
    speaker.resume()
    assert stream.pull().tolist() == [5, 6, 7, 8]
    speaker.pause()
    speaker.flush()  # a barge-in drops the rest and ends the pause
    asyncio.run(speaker.play(np.full(4, 0.5, np.float32)))
    assert stream.pull().tolist() == [0.5] * 4 and speaker.played_total == 12


# -- a TTS that lags behind a fast LLM (fakes only) -----------------------------------------------
# A GPU LLM streams short sentences faster than a CPU TTS voices them, so a backlog of sentences
# waits for the TTS thread. Calling the reply off must drop that backlog at once: nothing of it is
# voiced or played, and the caller (the loop that feeds the VAD) is not held up while it would be.
FACTS = [f"This is fact number {i}." for i in range(40)]
TTS_S = 0.05  # per piece
QUICK_S = 0.15  # "at once", with room for a loaded 2-core box; one piece of the backlog is 0.05 s


def fast_chat() -> ScriptedChat:
    """A fast LLM: forty short sentences, one every 10 ms."""
    return ScriptedChat([fact + " " for fact in FACTS], delay_s=0.01)


def lagging_voice() -> Voice:
    """A CPU TTS: 50 ms a piece on the TTS thread."""
    return Voice(delay_s=TTS_S)


class RecordingSink(NullSink):
    """Plays instantly; records when each piece was played and when playback was flushed, and
    wakes a waiter once ``wait_for`` pieces have played."""

    def __init__(self) -> None:
        super().__init__()
        self.played_at: list[float] = []
        self.flushed_at: list[float] = []
        self._want = 0
        self._enough = asyncio.Event()

    async def play(self, samples: np.ndarray) -> None:
        await super().play(samples)
        self.played_at.append(time.perf_counter())
        if self._want and len(self.played_at) >= self._want:
            self._enough.set()

    def flush(self) -> None:
        self.flushed_at.append(time.perf_counter())

    async def wait_for(self, pieces: int) -> None:
        self._want = pieces
        if len(self.played_at) < pieces:
            await self._enough.wait()

    def after_flush(self) -> int:
        """Pieces played after the (one) flush: a barge-in that kept talking."""
        assert len(self.flushed_at) == 1, self.flushed_at
        return sum(t > self.flushed_at[0] for t in self.played_at)


def _utterance(end_s: float, final: bool = True) -> SpeechEnded:
    return SpeechEnded(
        audio=np.zeros(1600, np.float32), start_s=0.0, end_s=end_s, endpoint_at_s=end_s + 0.01, final=final
    )


@pytest.fixture
def threads() -> Iterator[tuple[ThreadPoolExecutor, ThreadPoolExecutor]]:
    """One STT and one TTS thread, as a conversation of its own has."""
    with ThreadPoolExecutor(1) as stt, ThreadPoolExecutor(1) as tts:
        yield stt, tts


def _reply(
    threads: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> tuple[ReplyJob, ScriptedChat, Voice, RecordingSink, list[Event]]:
    chat, synth, sink, emitted = fast_chat(), lagging_voice(), RecordingSink(), []
    models = Models(Words("Tell me forty facts."), chat, synth, sink, *threads)
    job = ReplyJob(models, Conversation(""), LlmSettings(max_tokens=400), _utterance(1.0), emitted.append)
    return job, chat, synth, sink, emitted


async def test_a_barge_in_plays_nothing_after_the_flush_when_tts_lags(threads):
    job, chat, synth, sink, _ = _reply(threads)
    job.commit()
    await sink.wait_for(2)
    t0 = time.perf_counter()
    spoken = await job.interrupt()
    waited = time.perf_counter() - t0
    voiced = len(synth.said)
    await asyncio.sleep(0.3)  # a backlog left running would be heard by now
    assert sink.after_flush() == 0, f"{sink.after_flush()} pieces played after the flush"
    assert waited < QUICK_S, f"interrupt() waited {waited:.2f} s"
    assert len(synth.said) == voiced  # nothing more was voiced once it returned
    assert chat.closed_early == 1  # and generation stopped
    # What was heard is what was played, and that is what the history keeps.
    assert spoken == FACTS[: len(sink.played_at)] and len(spoken) >= 2
    assert job.result.sentences == spoken
    assert (await job.finish()).sentences == spoken


async def test_calling_off_a_speculative_reply_does_not_wait_for_its_tts_backlog(threads):
    job, chat, synth, sink, emitted = _reply(threads)  # never committed: the user went on
    while len(job.result.sentences) < 12:  # ~10 sentences waiting for the TTS thread
        await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    await job.cancel()
    waited = time.perf_counter() - t0
    voiced = len(synth.said)
    await asyncio.sleep(0.2)
    assert waited < QUICK_S, f"cancel() waited {waited:.2f} s for the TTS backlog"
    assert len(synth.said) == voiced <= 4
    assert chat.closed_early == 1
    assert not sink.played_at and not emitted  # a speculative reply is neither shown nor heard


async def test_a_reply_left_alone_speaks_every_piece_even_when_tts_lags(threads):
    job, chat, synth, sink, emitted = _reply(threads)
    job.commit()
    result = await job.finish()
    assert result.sentences == FACTS == synth.said
    assert len(sink.played_at) == 40 and len(result.audio) == 40
    assert job.queued_end == sink.queued_total and chat.closed_early == 0
    assert [e.text for e in emitted if hasattr(e, "first")] == FACTS  # every AudioChunk, in order


async def test_a_reply_moves_through_its_lifecycle_once_and_refuses_other_moves(threads):
    from voxloop.reply import JobState

    spec, _, _, spec_sink, _ = _reply(threads)
    assert spec.state is JobState.HELD
    await spec.cancel()  # the user went on
    await spec.cancel()  # a second call off changes nothing
    assert spec.state is JobState.CANCELLED and not spec_sink.played_at
    with pytest.raises(RuntimeError, match="cancelled to committed"):
        spec.commit()  # a reply called off is never shown or played after all
    job, _, _, sink, _ = _reply(threads)
    job.commit()
    await sink.wait_for(1)
    spoken = await job.interrupt()
    assert job.state is JobState.INTERRUPTED and job.interrupted
    assert await job.interrupt() == spoken  # cut once: a late second cut is a no-op
    await job.cancel()  # the conversation ending later leaves it interrupted
    assert job.state is JobState.INTERRUPTED and job.result.sentences == spoken


async def test_a_reply_in_text_only_keeps_what_was_shown_when_cut(threads):
    """A client that asked for text (the Realtime API's output_modalities ["text"]) saw every
    sentence so far: a cut keeps them all, not the "…" of a reply nobody heard."""
    chat, sink, emitted = fast_chat(), RecordingSink(), []
    models = Models(Words("Tell me forty facts."), chat, Voice(seconds=0.0), sink, *threads)
    job = ReplyJob(models, Conversation(""), LlmSettings(max_tokens=400), _utterance(1.0), emitted.append)
    job.commit()
    while len(job.result.sentences) < 5:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the silent voice has been through them
    kept = await job.interrupt()
    assert len(kept) >= 5 and kept == FACTS[: len(kept)], kept
    assert job.result.sentences == kept and not sink.played_at


class ScriptedEndpointer:
    """Reports what ``script`` says at each fed block, and notes when each block was fed."""

    hearing = False
    voiced_ms = float("inf")  # what it scripts is speech, long enough to interrupt

    def __init__(self, script: dict[int, list[SpeechStarted | SpeechEnded]]) -> None:
        self.script = script
        self.fed_at: list[float] = []

    def feed(self, block: np.ndarray) -> list[SpeechStarted | SpeechEnded]:
        self.fed_at.append(time.perf_counter())
        return self.script.get(len(self.fed_at) - 1, [])

    def reset(self) -> None:
        return None

    def hint(self, complete: bool) -> None:
        return None

    def playback(self, playing: bool) -> None:
        return None

    def current_audio(self) -> np.ndarray | None:
        return None

    def longest_gap(self) -> float:
        return float(np.diff(self.fed_at).max())


class MicSource:
    """A microphone in real time: 10 ms blocks of silence."""

    sample_rate = 16000
    live = False  # full duplex, as on a socket
    started_at: float | None = None

    def __init__(self, blocks: int) -> None:
        self.n = blocks

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        self.started_at = time.perf_counter()
        for _ in range(self.n):
            yield np.zeros(160, np.float32)
            await asyncio.sleep(0.01)

    def discard_pending(self) -> None:
        return None


async def test_the_vad_is_fed_throughout_a_called_off_reply_and_a_barge_in():
    """The user pauses (a speculative reply starts), goes on (it is called off), ends the turn,
    then talks over the reply: each time with a backlog of sentences waiting for the TTS."""
    endpointer = ScriptedEndpointer(
        {
            2: [SpeechStarted(at_s=0.0), _utterance(0.02, final=False)],
            20: [SpeechStarted(at_s=0.2, resumed=True)],
            25: [_utterance(0.25)],
            45: [SpeechStarted(at_s=0.45)],
        }
    )
    chat, sink, printer = fast_chat(), RecordingSink(), CollectingPrinter()
    words = Words("Tell me", "Tell me forty facts.")
    assistant = Assistant(Settings(), words, chat, lagging_voice(), sink, printer)
    turns = await assistant.run(MicSource(70), endpointer)
    assert endpointer.longest_gap() < QUICK_S, f"the VAD went unfed for {endpointer.longest_gap():.2f} s"
    assert chat.closed_early == 2  # both replies' streams were closed
    assert sink.played_at and sink.after_flush() == 0
    assert [t.interrupted for t in turns] == [True]
    cut = [e for e in printer.events if isinstance(e, Interrupted)]
    assert len(cut) == 1 and cut[0].spoken.startswith(FACTS[0])
    assert turns[0].assistant == cut[0].spoken  # the history keeps what was heard, no more


# -- the same through `voxloop serve` ---------------------------------------------------------------
@contextlib.contextmanager
def _serving(state: Any) -> Iterator[str]:
    """`voxloop serve`'s app on a free loopback port, in a thread with its own event loop."""
    import uvicorn

    from voxloop.server.app import build_app

    server = uvicorn.Server(uvicorn.Config(build_app(state), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:  # uvicorn offers a flag, not an event
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        state.stt_pool.shutdown()
        state.tts_pool.shutdown()


async def test_an_interrupt_over_the_websocket_stops_the_reply_audio_when_tts_lags(monkeypatch):
    """`voxloop serve` with its one shared TTS thread: after the client's interrupt, at most the
    piece already on its way arrives (sent before the server read the interrupt), and nothing
    after the ``interrupted`` event."""
    websockets = pytest.importorskip("websockets")
    from voxloop.server.app import ServerState

    monkeypatch.setattr(
        "voxloop.pipeline.make_endpointer",
        lambda settings, rate: ScriptedEndpointer({3: [SpeechStarted(at_s=0.0), _utterance(0.06)]}),
    )
    chat = fast_chat()
    state = ServerState(Settings(), Words("Tell me forty facts."), chat, lagging_voice())
    pieces, after_request, after_event = 0, 0, 0
    requested = interrupted = False
    kinds: list[str] = []
    spoken = done = ""
    with _serving(state) as base:
        async with websockets.connect(f"ws://{base}/ws", max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"

            async def microphone() -> None:  # 20 ms frames of silence, as the page sends
                while True:
                    await ws.send(b"\0" * 640)
                    await asyncio.sleep(0.02)

            mic = asyncio.create_task(microphone())
            try:
                while not {"interrupted", "metrics"} <= set(kinds):
                    message = await asyncio.wait_for(ws.recv(), timeout=10)
                    if isinstance(message, bytes):
                        pieces += 1
                        after_event += interrupted
                        after_request += requested
                        if pieces == 2 and not requested:
                            await ws.send(json.dumps({"type": "interrupt"}))
                            requested = True
                        continue
                    event = json.loads(message)
                    kinds.append(event["type"])
                    interrupted = interrupted or event["type"] == "interrupted"
                    spoken = event.get("spoken", spoken)
                    done = (event["assistant"] or "") if event["type"] == "turn_done" else done
                with contextlib.suppress(asyncio.TimeoutError):
                    while True:  # a backlog left running would go on arriving
                        message = await asyncio.wait_for(ws.recv(), timeout=0.5)
                        after_event += isinstance(message, bytes)
            finally:
                mic.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await mic
    assert interrupted
    assert after_request <= 1, f"{after_request} pieces arrived after the interrupt was sent"
    assert after_event == 0
    assert chat.closed_early == 1
    # The history keeps what the page had played by then (on its clock): part of the first piece.
    assert done == (spoken or "…") and FACTS[1] not in done


@pytest.mark.integration
async def test_a_pause_mid_phrase_taken_for_the_end_is_one_turn_when_the_user_goes_on_unheard(
    transcriber, synthesizer
):
    """ "I'd like to order." ends the turn after 0.4 s of silence (its words sound finished), and
    the reply starts; the user goes on 1.2 s into the pause, before any of the reply was heard.
    The cut turn is taken back: one turn with the whole phrase reaches the LLM, and the history
    holds no reply the user never heard."""
    first = spoken_turns(synthesizer, ["I'd like to order."], lead_s=0.5, turn_gap_s=0)[:-8000]
    rest = spoken_turns(synthesizer, ["A large pizza with mushrooms."], lead_s=0.0)
    audio = np.concatenate(
        [first, np.zeros(int(1.2 * 16000), np.float32), rest, np.zeros(16000 * 3, np.float32)]
    )
    # A slow server: no reply audio for ~1.2 s after the turn ends.
    chat = ScriptedChat(
        ["Sure", ", what", " would you like?"], ["One large mushroom pizza, coming up."], delay_s=0.6
    )
    turns, events, _speaker, assistant = await _run(
        Settings(), transcriber, synthesizer, chat, audio, None, gain=0.0
    )
    cut = [e for e in events if isinstance(e, Interrupted)]
    assert len(cut) == 1 and cut[0].spoken == "", cut  # cut before a word of it was heard
    assert len(chat.requests) == 2, chat.requests
    asked = chat.requests[1][-1]["content"].lower()
    assert "order" in asked and "pizza" in asked and "mushroom" in asked, asked
    assert [m["role"] for m in chat.requests[1]] == ["system", "user"]  # no unheard reply before it
    assert [t.assistant for t in turns] == [None, "One large mushroom pizza, coming up."], turns
    whole = turns[1].user.lower()
    assert whole.startswith("i'd like to order") and "pizza" in whole, whole
    assert [(e.user.lower()[:17], e.assistant) for e in assistant.conversation.exchanges] == [
        ("i'd like to order", "One large mushroom pizza, coming up.")
    ]
