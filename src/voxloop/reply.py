"""One reply in the making: STT -> LLM stream -> sentences -> TTS, started as soon as the user
pauses and held back until the pause is known to be the end of the turn.

A job started on a pause that turns out not to be the end (the user goes on) is cancelled: its
LLM stream is closed, which stops generation on the server, and nothing of it was shown or
played. A committed job releases what it held at once and streams the rest as it comes.

A job's lifecycle is one :class:`JobState`, changed only by ``ReplyJob._to``, which checks the
transition: HELD (answering a pause that may not be the end: nothing shown or played), then
COMMITTED (the turn's reply) or CANCELLED (the user went on); a committed reply ends as it ran,
or INTERRUPTED (talked over: stopped where it was heard) or CANCELLED (the conversation ended).

A job owns its three tasks: the writer (STT, then the LLM stream cut into sentences), the speaker
(TTS, one sentence after another) and the player (into the sink). Only the job cancels them, all
at once: a fast LLM runs ahead of a CPU TTS, and a reply called off must drop that backlog, not
voice and play it first while the caller (the loop that feeds the VAD) waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from voxloop.audio.sink import AudioSink
from voxloop.conversation import Conversation
from voxloop.errors import LLMContextOverflowError, LLMError
from voxloop.events import AudioChunk, ErrorEvent, Event, ReplyDelta, SpeechEnded, ToolUsed, Transcript
from voxloop.llm import ChatModel, Message
from voxloop.settings import LlmSettings
from voxloop.stt import Transcriber
from voxloop.tools import Toolbox, ToolCall, ToolFailure
from voxloop.tools.intents import Intent, heard_intent
from voxloop.tools.textcalls import calls_in_text
from voxloop.tts import Synthesizer
from voxloop.tts.pacing import paced
from voxloop.tts.sentences import SpokenReply, spoken

log = logging.getLogger(__name__)

PREFILL_WAIT_S = 0.5  # longest wait for a prompt-cache prefill to finish before the real request
# voxloop's own budget for a reply, whatever the server does with max_tokens: characters per
# token asked for (English runs ~4; twice that leaves room for long words and numbers).
CHARS_PER_TOKEN = 8
MAX_TOOL_ROUNDS = 3  # tool calls, then their results read, at most this often in one reply
STALL_NOTICE_S = 5.0  # a server silent this long mid-reply is worth telling the user about
# Said when the model's reply had nothing speakable twice (symbols only, a loop cut at once).
NOTHING_TO_SAY = "Sorry, I lost my words there. Could you ask again?"

_UNFINISHED = {
    "and", "or", "but", "so", "because", "to", "the", "a", "an", "of", "with", "for", "in", "on",
    "at", "my", "your", "is", "are", "was", "um", "uh", "like", "if", "then", "that", "which",
}  # fmt: skip


_ANSWERS = {"yes", "no", "yeah", "yep", "nope", "okay", "ok", "sure", "thanks", "thank you", "hello", "hi", "bye", "right", "really"}  # fmt: skip


def sounds_finished(text: str) -> bool:
    """Whether the words so far end a sentence: '?'/'!', or '.' not after a word that needs more,
    or a one-word answer that Whisper left without punctuation ("No")."""
    text = text.strip()
    if text.lower().strip(".!?, ") in _ANSWERS:
        return True
    if not text or text.endswith(("...", "…", ",", "-")):
        return False
    if text.endswith(("?", "!")):
        return True
    if not text.endswith("."):
        return False
    words = text.rstrip(".").split()
    return bool(words) and words[-1].lower().strip(",'\"") not in _UNFINISHED


def joined(lead: str, words: str) -> str:
    """A phrase the user paused in, whole again: "I'd like to order." + "A large pizza." ->
    "I'd like to order, a large pizza." (Whisper closes each part as a sentence)."""
    lead = lead.strip()
    if lead.endswith("."):
        lead = lead[:-1].rstrip() + ","
    first = words.split(maxsplit=1)[0] if words.strip() else ""
    plain = first[:1].isupper() and first[1:] == first[1:].lower()  # "A", "What"; not "NASA"
    if plain and first.rstrip(".,!?") != "I" and not first.startswith("I'"):
        words = words.lstrip()
        words = words[0].lower() + words[1:]
    return f"{lead} {words}"


@dataclass
class Models:
    """The shared, loaded stages a reply runs on, with the threads they run in."""

    transcriber: Transcriber
    chat: ChatModel
    synthesizer: Synthesizer
    sink: AudioSink
    stt_thread: Executor
    tts_thread: Executor


@dataclass
class ReplyResult:
    user: str = ""
    sentences: list[str] = field(default_factory=list)  # as spoken: what the history keeps
    steps: list[Message] = field(default_factory=list)  # tool calls and results on the way
    tools: list[str] = field(default_factory=list)  # the tools run for this reply
    audio: list[np.ndarray] = field(default_factory=list)
    error: str | None = None
    stt_ms: float = 0.0
    llm_first_token_ms: float | None = None
    first_sentence_ms: float | None = None
    tts_ms: float = 0.0
    first_tts_ms: float | None = None  # synthesis of the first sentence
    first_audio_wall: float | None = None  # perf_counter() when the first audio was ready
    llm_total_ms: float = 0.0


class JobState(enum.Enum):
    HELD = "held"  # answering a pause that may not be the end: its events are held back
    COMMITTED = "committed"  # the turn's reply: shown, played and streamed as it comes
    INTERRUPTED = "interrupted"  # talked over: stopped where it was heard (final)
    CANCELLED = "cancelled"  # called off: nothing more of it is voiced or played (final)


_JOB_NEXT = {
    JobState.HELD: {JobState.COMMITTED, JobState.CANCELLED},
    JobState.COMMITTED: {JobState.INTERRUPTED, JobState.CANCELLED},
    JobState.INTERRUPTED: set(),
    JobState.CANCELLED: set(),
}
STOPPED = (JobState.INTERRUPTED, JobState.CANCELLED)


class ReplyJob:
    def __init__(
        self,
        models: Models,
        conversation: Conversation,
        llm: LlmSettings,
        speech: SpeechEnded,
        emit: Callable[[Event], None],
        after: Awaitable[object] | None = None,
        on_words: Callable[[str], None] | None = None,
        warming: asyncio.Task[None] | None = None,
        toolbox: Toolbox | None = None,
        filler: str = "",
        lead: Callable[[], str] | None = None,
    ) -> None:
        self.models = models
        self.toolbox = toolbox  # the tools the model may call (None or empty: none)
        self.filler = filler  # said while a tool runs, if nothing was said before it
        self.conversation = conversation
        self.llm = llm
        self.speech = speech
        self._emit = emit
        self._after = after  # the previous turn: its reply must be in the history first
        self._on_words = on_words
        self._warming = warming  # a prefill of the server's prompt cache, still running maybe
        # Words of a turn the user went on from before hearing any reply to it: this turn says
        # them again, first (read once the turn before has been recorded).
        self._lead = lead
        self.words = ""  # what this utterance itself said (``result.user`` may have a lead)
        self.started_wall = time.perf_counter()
        self.started_audio_s = speech.endpoint_at_s
        self.result = ReplyResult()
        self.state = JobState.HELD  # read by the STT thread too: a stopped job skips its decoder
        self._held: list[Event] = []
        self.transcribed = asyncio.Event()
        self._sentences: asyncio.Queue[str | None] = asyncio.Queue()  # for the TTS, in order
        self._playback: asyncio.Queue[tuple[str, np.ndarray] | None] = asyncio.Queue()
        self._spans: list[tuple[str, int, int]] = []  # sentence, sink samples [start, end)
        self._silent = 0  # sentences the synthesizer gave no audio for (a reply in text only)
        self._player = asyncio.create_task(self._play())
        self._speaker = asyncio.create_task(self._speak())
        self.task = asyncio.create_task(self._run())  # done once every sentence is voiced
        self._tasks = (self._player, self._speaker, self.task)  # children first

    # -- control --------------------------------------------------------------------------------
    @property
    def interrupted(self) -> bool:
        return self.state is JobState.INTERRUPTED

    def _to(self, state: JobState) -> None:
        if state not in _JOB_NEXT[self.state]:
            raise RuntimeError(f"a reply cannot go from {self.state.value} to {state.value}")
        log.debug("reply %s: %s -> %s", self.speech.utterance, self.state.value, state.value)
        self.state = state

    def commit(self) -> None:
        """The pause was the end of the turn: show and play everything held, then stream."""
        self._to(JobState.COMMITTED)
        held, self._held = self._held, []
        for event in held:
            self._deliver(event)

    async def cancel(self) -> None:
        """The user went on (or interrupted): stop everything at once, closing the LLM stream.
        Sentences still waiting for the TTS are dropped, never voiced."""
        if self.state not in STOPPED:
            self._to(JobState.CANCELLED)
        self._stop()
        await self._reap()

    async def interrupt(self) -> list[str]:
        """The user talked over this reply: stop it where it is heard; return what was said."""
        if self.state in STOPPED:  # stopped already (the conversation ended): nothing to cut
            return list(self.result.sentences)
        self._to(JobState.INTERRUPTED)
        self._stop()  # first: nothing more can reach the sink once it is flushed
        sink = self.models.sink
        sink.flush()
        if self._silent and not self._spans:
            # A reply in text only (a client that asked for no audio): what was shown is kept.
            await self._reap()
            return list(self.result.sentences)
        heard = sink.played_total
        spoken = []
        for sentence, start, end in self._spans:
            if heard >= end:
                spoken.append(sentence)
            elif heard > start:  # cut mid-sentence: keep the words in proportion
                words = sentence.split()
                cut = round(len(words) * (heard - start) / (end - start))
                if cut:
                    spoken.append(" ".join(words[:cut]) + "…")
                break
        # Before any await: whoever waits on this job (the turn) wakes to what was heard.
        self.result.sentences = spoken
        await self._reap()
        return spoken

    def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _reap(self) -> None:
        """Wait for the tasks to end (at once, once cancelled); raise what one of them failed with."""
        for outcome in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                raise outcome

    @property
    def queued_end(self) -> int:
        """Where this reply's audio ends in the sink's sample count (0 before any audio)."""
        return self._spans[-1][2] if self._spans else 0

    async def finish(self) -> ReplyResult:
        """Wait for the reply to be complete and queued for playback (or interrupted)."""
        try:
            await self.task
            self._playback.put_nowait(None)
            await self._player
        except (Exception, asyncio.CancelledError) as exc:
            # Interrupted, failed, or called off from outside: what is left of it stops now.
            self._stop()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if not (self.interrupted and isinstance(exc, asyncio.CancelledError)):
                raise
        return self.result

    async def _play(self) -> None:
        sink = self.models.sink
        while (item := await self._playback.get()) is not None:
            sentence, samples = item
            start = sink.queued_total
            self._spans.append((sentence, start, start + len(samples)))
            await sink.play(samples)

    def _out(self, event: Event) -> None:
        if self.state is JobState.COMMITTED:
            self._deliver(event)
        else:
            self._held.append(event)

    def _deliver(self, event: Event) -> None:
        self._emit(event)
        if isinstance(event, AudioChunk):
            self._playback.put_nowait((event.text, event.samples))  # played in order by _play

    # -- the work -------------------------------------------------------------------------------
    async def _run(self) -> ReplyResult:
        try:
            await self._write()
        finally:
            self.transcribed.set()  # whoever waits for the words is not left waiting if STT fails
        # A reply that ran its course is voiced to the end; a cancelled one never gets here.
        self._sentences.put_nowait(None)
        await self._speaker
        return self.result

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        r = self.result
        t0 = time.perf_counter()
        r.user = await loop.run_in_executor(
            self.models.stt_thread,
            functools.partial(
                self.models.transcriber.transcribe, self.speech.audio, stop=lambda: self.state in STOPPED
            ),
        )
        r.stt_ms = (time.perf_counter() - t0) * 1000
        self.words = r.user
        self.transcribed.set()
        if self._on_words is not None:
            self._on_words(r.user)
        if not r.user:
            return
        self._out(Transcript(text=r.user, stt_ms=r.stt_ms))
        if self._after is not None:
            # Shielded: calling this job off must not call off the turn before it.
            await asyncio.shield(self._after)
        if self._lead is not None and (lead := self._lead()):
            r.user = joined(lead, r.user)
        if self.toolbox and (intent := heard_intent(r.user, set(self.toolbox.tools))):
            await self._act(intent)  # a plain request for a built-in action: no model needed
            return
        if self._warming is not None and not self._warming.done():
            # A request sent now would go to another server slot, with none of the prompt cached.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._warming), PREFILL_WAIT_S)
        started = time.perf_counter()
        drop_oldest = 0
        try:
            try:
                await self._generate(started, drop_oldest)
            except LLMContextOverflowError:
                if r.llm_first_token_ms is not None:
                    raise
                # The estimate was off: keep only the newest exchange and try once more.
                log.warning("context overflow; retrying with the oldest history dropped")
                drop_oldest = len(self.conversation.exchanges) - 1
                await self._generate(started, drop_oldest)
            if not r.sentences:
                # A tiny model now and then ends its reply before anything speakable (only
                # symbols, or a loop cut short): ask once more, with the same history.
                log.info("the reply had nothing to say; asking again")
                await self._generate(started, drop_oldest)
            if not r.sentences:
                log.warning("the reply had nothing to say twice; apologizing instead")
                self._say(NOTHING_TO_SAY, started)
        except LLMError as exc:
            r.error = str(exc)
        finally:
            r.llm_total_ms = (time.perf_counter() - started) * 1000

    async def _generate(self, started: float, drop_oldest: int) -> None:
        r = self.result
        chat = self.models.chat
        messages = self.conversation.request(
            r.user, chat.context_tokens, self.llm.max_tokens, max(0, drop_oldest)
        )

        def seen(text: str) -> None:
            if r.llm_first_token_ms is None:
                r.llm_first_token_ms = (time.perf_counter() - started) * 1000
            self._out(ReplyDelta(text))

        tools = self.toolbox.offered() if self.toolbox is not None else None
        for _ in range(MAX_TOOL_ROUNDS):
            reply = SpokenReply(self.llm.max_tokens * CHARS_PER_TOKEN)
            calls: list[ToolCall] = []
            stream = chat.stream(messages, tools, calls)
            if tools and self.toolbox is not None:
                # Calls the server parsed, and calls a small model wrote as text.
                stream = calls_in_text(stream, self.toolbox.tools, calls)
            async for sentence in spoken(self._watched(stream), reply, seen):
                self._say(sentence, started)
            if not calls or reply.stopped:
                return
            answers = await self._use_tools(reply.text, calls, started)
            if answers is None:
                return
            messages = [*messages, *answers]
            self.result.steps += answers
        log.warning("the model still asked for tools after %d rounds; stopped", MAX_TOOL_ROUNDS)

    async def _act(self, intent: Intent) -> None:
        """Answer a request heard in the words by running its tool: one sentence, or the
        tool's apology."""
        assert self.toolbox is not None
        started = time.perf_counter()
        self.result.tools.append(intent.call.name)
        try:
            result = await self.toolbox.run(intent.call)
        except ToolFailure as failure:
            self._out(
                ToolUsed(intent.call.name, intent.call.arguments, None, str(failure), self._ms(started))
            )
            said = failure.spoken
        else:
            self._out(ToolUsed(intent.call.name, intent.call.arguments, result, None, self._ms(started)))
            said = intent.answer(result)
        self.result.llm_total_ms = self._ms(started)
        self._say_own(said, started)

    @staticmethod
    def _ms(since: float) -> float:
        return (time.perf_counter() - since) * 1000

    def _say_own(self, text: str, started: float, more: bool = False) -> None:
        """Words of voxloop's own (a tool's answer, the filler, an apology): shown as the
        model's would be (``more``: with a space before the words that follow), and said."""
        self._out(ReplyDelta(text + " " if more else text))
        self._say(text, started)

    async def _use_tools(self, text: str, calls: list[ToolCall], started: float) -> list[Message] | None:
        """Run the calls the model asked for (saying the filler first if nothing was said yet);
        return the messages that give the model their results, or None when a call failed: its
        apology is said instead, and the reply ends there."""
        assert self.toolbox is not None
        if not self.result.sentences and self.filler:
            self._say_own(self.filler, started, more=True)
        t0 = time.perf_counter()
        self.result.tools += [c.name for c in calls]
        outcomes = await asyncio.gather(*(self.toolbox.run(c) for c in calls), return_exceptions=True)
        ms = self._ms(t0)
        results: list[Message] = []
        for call, outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                spoken_error = outcome.spoken if isinstance(outcome, ToolFailure) else "Sorry, that failed."
                self._out(ToolUsed(call.name, call.arguments, None, str(outcome), ms))
                self._say_own(spoken_error, started)
                return None
            self._out(ToolUsed(call.name, call.arguments, outcome, None, ms))
            results.append({"role": "tool", "tool_call_id": call.id, "content": outcome})
        asked: Message = {"role": "assistant", "content": text, "tool_calls": [c.message() for c in calls]}
        return [asked, *results]

    async def _watched(self, stream: AsyncIterator[str]) -> AsyncIterator[str]:
        """The stream's pieces; a server silent for ``STALL_NOTICE_S`` mid-reply is told to the
        user once (the stream goes on waiting, up to the LLM's own time-out)."""
        pieces = aiter(stream)
        told = False
        try:
            while True:
                nxt = asyncio.ensure_future(anext(pieces))
                try:
                    done, _ = await asyncio.wait({nxt}, timeout=None if told else STALL_NOTICE_S)
                    if not done:
                        told = True
                        self._out(
                            ErrorEvent(
                                f"The LLM has sent nothing for {STALL_NOTICE_S:g} s; still waiting for "
                                f"it (up to {self.llm.timeout_s:g} s)."
                            )
                        )
                    piece = await nxt
                except StopAsyncIteration:
                    return
                finally:
                    nxt.cancel()
                yield piece
        finally:  # closing the stream closes the connection, which stops generation
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    def _say(self, sentence: str, started: float) -> None:
        r = self.result
        if r.first_sentence_ms is None:
            r.first_sentence_ms = (time.perf_counter() - started) * 1000
        r.sentences.append(sentence)
        self._sentences.put_nowait(sentence)

    def _voice(self, sentence: str) -> np.ndarray:
        """In the TTS thread: a piece of the reply as it is played, with the pause after it."""
        synth = self.models.synthesizer
        return paced(synth.synthesize(sentence), synth.sample_rate, sentence)

    async def _speak(self) -> None:
        loop = asyncio.get_running_loop()
        r = self.result
        synth = self.models.synthesizer
        first = True
        while (sentence := await self._sentences.get()) is not None:
            t0 = time.perf_counter()
            samples = await loop.run_in_executor(self.models.tts_thread, self._voice, sentence)
            r.tts_ms += (time.perf_counter() - t0) * 1000
            if r.first_tts_ms is None:
                r.first_tts_ms = (time.perf_counter() - t0) * 1000
            if not len(samples):
                self._silent += 1
                continue
            if r.first_audio_wall is None:
                r.first_audio_wall = time.perf_counter()
            r.audio.append(samples)
            self._out(AudioChunk(samples=samples, sample_rate=synth.sample_rate, text=sentence, first=first))
            first = False
