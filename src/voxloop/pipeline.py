"""One spoken conversation: audio source -> endpointer -> STT -> LLM stream -> sentences -> TTS -> sink.

Every stage streams and overlaps. When the user pauses, the reply starts speculatively (see
``reply.py``) and the turn model (``vad/turn.py``) hears whether the voice sounds finished;
with the reply's transcript it tells the endpointer to end the turn after a short pause or to
wait longer. If the user goes on, the speculative reply is cancelled; if the pause was the end,
it is committed and what it already produced plays at once. Blocking libraries (CTranslate2,
ONNX Runtime) run in their own threads, off the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from voxloop.audio.aec import EchoCanceller
from voxloop.audio.sink import AudioSink
from voxloop.audio.sources import AudioSource
from voxloop.conversation import Conversation, Exchange
from voxloop.events import (
    ErrorEvent,
    Interrupted,
    Notice,
    Ready,
    SpeechEnded,
    SpeechStarted,
    Transcript,
    TurnDone,
)
from voxloop.floor import Floor, FloorState
from voxloop.llm import ChatModel
from voxloop.printer import Printer
from voxloop.recorder import TurnRecorder
from voxloop.reply import Models, ReplyJob, sounds_finished
from voxloop.settings import Settings
from voxloop.stt import Transcriber
from voxloop.stt.interim import InterimTranscriber
from voxloop.tools import Toolbox
from voxloop.tools.mcp_stdio import McpServers
from voxloop.tools.offer import conversation_toolbox
from voxloop.tools.timers import Timers
from voxloop.tts import Synthesizer
from voxloop.vad import Endpointer, make_endpointer
from voxloop.vad.turn import TurnAware, TurnModel, shared_turn_model, words_finished

log = logging.getLogger(__name__)

PARTIAL_EVERY_S = 1.0
SAME_ONSET_S = 0.05  # a voice's onset and its utterance's start are the same step of the VAD
# What a listener says to show they follow, not to take the turn.
_BACKCHANNEL = frozenset(
    [
        "uh",
        "huh",
        "um",
        "mm",
        "mhm",
        "hm",
        "hmm",
        "mmm",
        "yeah",
        "yes",
        "yep",
        "okay",
        "ok",
        "right",
        "sure",
        "oh",
        "ah",
        "aha",
        "i",
        "see",
        "got",
        "it",
        "alright",
        "cool",
        "wow",
    ]
)


def is_backchannel(text: str) -> bool:
    """Whether words heard over a reply are only a listener's "uh-huh", "okay", "I see" (or
    nothing: a cough)."""
    words = re.sub(r"[^a-z']+", " ", text.lower()).split()
    return len(words) <= 3 and all(w in _BACKCHANNEL for w in words)


class TypedWords:
    """The transcriber of a typed turn: its words are already known."""

    def __init__(self, text: str) -> None:
        self.text = text

    def transcribe(self, audio: np.ndarray, stop: Callable[[], bool] | None = None) -> str:
        return self.text


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
        aec: EchoCanceller | None = None,
        pools: tuple[Executor, Executor] | None = None,
        interim: InterimTranscriber | None = None,
    ) -> None:
        self.settings = settings
        self.transcriber = transcriber
        self.chat = chat
        self.synthesizer = synthesizer
        self.sink = sink
        self.printer = printer
        self.aec = aec
        self.pools = pools  # (STT, TTS) executors shared with other conversations
        self.interim = interim  # interim transcripts on their own model, else on the STT thread
        self.conversation = Conversation(settings.system_prompt)
        out = settings.output.output_dir
        # Each finished turn's history, WAV, conversation.jsonl line and TurnDone.
        self.recorder = TurnRecorder(
            self.conversation, Path(out) if out else None, synthesizer.sample_rate, printer.emit
        )
        self._spec: ReplyJob | None = None  # answering a pause that may not be the end
        self._last_turn: asyncio.Task[TurnDone | None] | None = None
        self._speaking: ReplyJob | None = None  # the committed reply, while it is generated or heard
        self._partial: asyncio.Task[None] | None = None
        self._warming: asyncio.Task[None] | None = None  # a prefill of the LLM's prompt cache
        self._turn_model: TurnModel | None = None  # loaded by run() when the endpointer takes it
        self._turn_check: asyncio.Task[None] | None = None  # the turn model on the current pause
        # Set when the user pauses: an interim transcript still running is then useless, and it
        # would hold up the one that matters.
        self._paused = threading.Event()
        self._last_partial_s = 0.0
        self._t0: float | None = None  # wall clock at sample 0, for sources that run in real time
        self._input_done = False
        # The reply's playback and voice heard over it: it holds on a voiced step, and a turn
        # over it is judged (voiced ``interrupt_ms``, or words that are more than a backchannel)
        # an interruption, or it goes on.
        self._floor = Floor(sink)
        # A reply cut before any of it was heard, because the user went on talking (a pause
        # mid-phrase taken for the end): its words are said again with the turn that went on,
        # as one turn ("I'd like to order, a large pizza"), and the cut turn is kept out of the
        # history. (job, onset of the voice that went on), then (that onset, the words).
        self._unheard: tuple[ReplyJob, float] | None = None
        self._carry: tuple[float, str] | None = None
        self.timers = Timers(self._ring)
        self.toolbox = Toolbox()  # chosen in run(), once the model is known
        self._notices: set[asyncio.Task[None]] = set()  # timers ringing, being voiced
        # Told of every turn the endpointer commits, before any of its events reach the printer:
        # a socket protocol that names its turns (OpenAI Realtime) pairs them with it.
        self.on_commit: Callable[[ReplyJob], None] | None = None
        self._ready = asyncio.Event()  # run() has its models and tools: answer() may start a job

    # -- the loop -------------------------------------------------------------------------------
    async def run(self, source: AudioSource, endpointer: Endpointer | None = None) -> list[TurnDone]:
        """Listen until the source ends; answer every turn. Returns the finished turns."""
        endpointer = endpointer or make_endpointer(self.settings.vad, source.sample_rate)
        loop = asyncio.get_running_loop()
        vad = self.settings.vad
        if vad.turn_model and vad.adaptive and isinstance(endpointer, TurnAware):
            # Loaded (and its hash checked) once per process, off the event loop.
            self._turn_model = await loop.run_in_executor(None, shared_turn_model)
        fed = 0
        async with contextlib.AsyncExitStack() as stack:
            vad_thread = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="vad"))
            stt_thread: Executor
            tts_thread: Executor
            if self.pools is None:  # a conversation of its own: one STT and one TTS thread
                stt_thread = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="stt"))
                tts_thread = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="tts"))
            else:  # one of many (voxloop serve): the server's shared, bounded pools
                stt_thread, tts_thread = self.pools
            self.models = Models(
                self.transcriber, self.chat, self.synthesizer, self.sink, stt_thread, tts_thread
            )
            # Started in this task and stopped by it: the MCP SDK's streams belong to one task.
            tools = self.settings.tools
            servers = await stack.enter_async_context(McpServers(tools.mcp if tools.enabled else ()))
            embedded = not self.settings.llm.urls
            self.toolbox = conversation_toolbox(tools, self.chat, self.timers, embedded, servers.tools)
            self._ready.set()
            try:
                async for block in source.blocks():
                    if fed == 0 and source.started_at is not None:
                        self._t0 = source.started_at
                        self.printer.emit(Ready(wall=source.started_at))
                        self._prefill("")  # the system prompt, before the first turn
                    fed += len(block)
                    far = self.sink.far_end(len(block)) if self.aec is not None else None
                    events = await loop.run_in_executor(vad_thread, self._listen, endpointer, block, far)
                    for event in events:
                        await self._on_event(event, source, endpointer)
                    if self._floor.judging:
                        await self._judge_overlap(endpointer)
                    if self._full_duplex(source):
                        self._hold_playback(endpointer.hearing)
                    if self._t0 is not None:
                        self._maybe_partial(endpointer, fed / source.sample_rate)
                self._input_done = True
                if self._last_turn is not None:
                    await self._last_turn
            finally:
                # Normally everything has finished here; if the conversation was called off (the
                # client went away, Ctrl-C), stop any reply still streaming from the LLM.
                await self._cancel_spec()
                if self._speaking is not None and not self._speaking.task.done():
                    await self._speaking.cancel()
                for task in (self._last_turn, self._partial, self._warming, self._turn_check):
                    if task is not None and not task.done():
                        task.cancel()
                self._hold_playback(False)
                left = await self.timers.aclose()
                if left:
                    self.printer.emit(
                        Notice(f"The conversation ended with a timer running: {', '.join(left)}.")
                    )
                for notice in self._notices:
                    notice.cancel()
                await asyncio.gather(*self._notices, return_exceptions=True)
        await self.sink.drain()
        return self.recorder.done

    async def interrupt(self, at_s: float = 0.0, went_on: bool = False) -> bool:
        """Barge-in: stop the reply being spoken where it is heard. False if none was.
        ``went_on``: the user's voice starting at ``at_s`` cut it (not a client's request)."""
        speaking = self._speaking
        if speaking is None or (speaking.task.done() and not self.sink.busy()):
            return False
        self._speaking = None
        self._floor.cut()  # the flush ends the pause
        spoken = await speaking.interrupt()
        self.printer.emit(Interrupted(at_s=at_s, spoken=" ".join(spoken)))
        if went_on and not spoken and len(speaking.speech.audio):
            self._unheard = (speaking, at_s)  # its turn is taken back when it completes
        return True

    def _full_duplex(self, source: AudioSource) -> bool:
        """Whether voxloop listens while it speaks: always on a file or a socket, on a live
        microphone only with an echo canceller (else it would hear itself)."""
        return not source.live or self.aec is not None

    def _hold_playback(self, hearing: bool) -> None:
        """Pause the reply on the first voiced step heard over it, without waiting for the
        ``announce_ms`` that make it a barge-in: playback stops one VAD step (32 ms) sooner, and
        with the speaker quiet the echo canceller lets the user's voice through at once. If the
        next step is not voiced (a click, a leak of echo), the reply goes on from where it was."""
        if hearing and self._speaking is not None and self.sink.busy():
            self._floor.hold()
        elif not hearing and self._floor.state is FloorState.HELD:
            self._floor.release("a sound too short to be heard as voice")

    def _replying(self) -> bool:
        speaking = self._speaking
        return speaking is not None and (not speaking.task.done() or self.sink.busy())

    async def _judge_overlap(self, endpointer: Endpointer) -> None:
        """Voice over the reply: enough of it is an interruption; a sound too short to be a turn
        (a cough, a click) lets the reply go on where it was. A short turn ("uh-huh") is judged
        by its words when it ends (:meth:`_on_event`)."""
        if endpointer.voiced_ms >= self.settings.vad.interrupt_ms:
            await self.interrupt(self._floor.cut(), went_on=True)
        elif endpointer.voiced_ms == 0 and self._spec is None:
            self._floor.release("a sound too short to be a turn")

    def _listen(
        self, endpointer: Endpointer, block: np.ndarray, far: np.ndarray | None
    ) -> list[SpeechStarted | SpeechEnded]:
        """In the VAD thread: take voxloop's own voice out of the microphone, then endpoint."""
        if self.aec is not None and far is not None:
            block = self.aec.process(block, far)
        endpointer.playback(self.sink.busy())
        return endpointer.feed(block)

    async def _on_event(
        self, event: SpeechStarted | SpeechEnded, source: AudioSource, endpointer: Endpointer
    ) -> None:
        realtime = self._t0 is not None
        if isinstance(event, SpeechStarted):
            if event.resumed:
                await self._cancel_spec()  # the user went on: that pause was not the end
                return
            self.printer.emit(event)
            if self._full_duplex(source):  # the user may barge in
                if self._replying() and self.settings.vad.interrupt_ms > 0:
                    # Held until judged, even before its first audio: a reply does not start
                    # over someone talking.
                    self._floor.judge(event.at_s)
                else:
                    await self.interrupt(event.at_s, went_on=True)
            if self._t0 is not None and (self._speaking is None or self._speaking.task.done()):
                self._prefill("")  # the history with the last reply, while the user talks
            return
        self._paused.set()
        if not event.final:
            # With the turn model, words that sound finished may end the turn 0.2 s into the
            # pause: the stricter reading, where "…a recipe for?" is not finished.
            finished = sounds_finished if self._turn_model is None else words_finished
            self._spec = self._start_job(
                event, on_words=lambda text: endpointer.hint(finished(text)), lead=self._lead_for(event)
            )
            if self._turn_model is not None and isinstance(endpointer, TurnAware):
                # Beside the reply's STT, in the model's own thread; one pause at a time.
                if self._turn_check is not None and not self._turn_check.done():
                    self._turn_check.cancel()  # the pause it was for is over
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._turn_check
                self._turn_check = asyncio.create_task(self._check_turn(self._turn_model, event, endpointer))
            if not realtime:
                # A file read faster than real time: let the voice and the words steer the
                # endpointer as they would have in time (a fast machine), so a file gives the
                # same turns as a mic.
                await self._spec.transcribed.wait()
                if self._turn_check is not None:
                    await self._turn_check
            return
        self.printer.emit(event)
        spec = self._spec
        job = spec if spec is not None and spec.speech.utterance == event.utterance else None
        if job is None:
            await self._cancel_spec()
            job = self._start_job(event, lead=self._lead_for(event))
        self._spec = None
        if self._floor.judging:
            # A short turn over the reply: "uh-huh", "okay" let it go on; anything else stops it.
            await job.transcribed.wait()
            if is_backchannel(job.words):
                await job.cancel()
                self._floor.release(f"a backchannel ({job.words!r})")
                return
            await self.interrupt(self._floor.cut(), went_on=True)
        if self.on_commit is not None:
            self.on_commit(job)
        job.commit()
        self._speaking = job
        self._last_turn = asyncio.create_task(self._complete(job, event))
        if not self._full_duplex(source):
            # Half-duplex: without an echo canceller, what the microphone hears while voxloop
            # speaks is voxloop itself, not a turn.
            await self._last_turn
            await self.sink.drain()
            source.discard_pending()
            endpointer.reset()
        elif not realtime:
            await self._last_turn

    @staticmethod
    async def _check_turn(model: TurnModel, pause: SpeechEnded, endpointer: TurnAware) -> None:
        try:
            probability = await model.check(pause.audio)
        except Exception as exc:  # the turn model helps; a turn never fails for it
            log.warning("The turn model failed on a pause (%s); this pause ends on silence and words.", exc)
            return
        endpointer.turn(pause, probability)

    async def answer(self, text: str) -> ReplyJob:
        """Answer typed words as a turn (a client's text message): after the turn before it, into
        the same history, through the same sink, interrupted as a spoken one is. ``run()`` must
        be running."""
        await self._ready.wait()
        at = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        typed = SpeechEnded(np.zeros(0, np.float32), at, at, at)
        job = self._start_job(typed, models=dataclasses.replace(self.models, transcriber=TypedWords(text)))
        job.commit()
        self._speaking = job
        self._last_turn = asyncio.create_task(self._complete(job, typed))
        return job

    def _start_job(
        self,
        speech: SpeechEnded,
        on_words: Callable[[str], None] | None = None,
        models: Models | None = None,
        lead: Callable[[], str] | None = None,
    ) -> ReplyJob:
        return ReplyJob(
            models or self.models,
            self.conversation,
            self.settings.llm,
            speech,
            self.printer.emit,
            after=self._last_turn,
            on_words=on_words,
            warming=self._warming,
            toolbox=self.toolbox,
            filler=self.settings.tools.filler,
            lead=lead,
        )

    def _lead_for(self, speech: SpeechEnded) -> Callable[[], str]:
        """The words a turn taken back left for this utterance: only for the utterance whose
        voice cut that turn (read by the job once the turn before it is recorded)."""

        def lead() -> str:
            if self._carry is None or abs(speech.start_s - self._carry[0]) > SAME_ONSET_S:
                return ""
            return self._carry[1]

        return lead

    def _ring(self, text: str) -> None:
        """A timer rang: voice the notice now, after any reply still playing."""
        task = asyncio.create_task(self._notice(text))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    async def _notice(self, text: str) -> None:
        loop = asyncio.get_running_loop()
        synth = self.synthesizer
        samples = await loop.run_in_executor(self.models.tts_thread, synth.synthesize, text)
        self.printer.emit(Notice(text, samples, synth.sample_rate))
        await self.sink.play(samples)

    async def _cancel_spec(self) -> None:
        if self._spec is not None:
            job, self._spec = self._spec, None
            try:
                await job.cancel()
            except Exception as exc:  # an answer called off: its failure changes nothing now
                log.debug("a reply called off had failed: %s", exc, exc_info=True)

    def _maybe_partial(self, endpointer: Endpointer, now_s: float) -> None:
        """An interim transcript every second while the user talks, one at a time."""
        if self._partial is not None and not self._partial.done():
            return
        if self._spec is not None or now_s - self._last_partial_s < PARTIAL_EVERY_S:
            return
        audio = endpointer.current_audio()
        if audio is None or len(audio) < 16000 * PARTIAL_EVERY_S:
            return
        self._last_partial_s = now_s
        self._paused.clear()
        self._partial = asyncio.create_task(self._emit_partial(audio))

    async def _emit_partial(self, audio: np.ndarray) -> None:
        loop = asyncio.get_running_loop()
        transcriber: Transcriber = self.transcriber
        executor = self.models.stt_thread
        if self.interim is not None:  # its own model copy, on the thread that copy belongs to
            transcriber, executor = self.interim, self.interim.executor
        work = functools.partial(transcriber.transcribe, audio, stop=self._paused.is_set)
        try:
            text = await loop.run_in_executor(executor, work)
        except Exception as exc:  # a partial is a preview: the turn's own transcript decides
            log.debug("a partial transcript failed: %s", exc, exc_info=True)
            return
        if text:
            self.printer.emit(Transcript(text=text, stt_ms=0.0, partial=True))
            if not self._paused.is_set():  # still talking: the server reads the words so far
                self._prefill(text)

    def _prefill(self, user_text: str, pending: Exchange | None = None) -> None:
        """Let the LLM server read the system prompt, the history and the words heard so far
        (each partial transcript) into its prompt cache while the user is still talking, so the
        reply's request only has the last words to read: on 2 cores, Qwen2.5-Coder-1.5B reads a
        short prompt at ~15-20 ms a token. With the partial transcripts too, its first token came
        ~35 ms sooner (p50, `voxloop bench`, two runs each way), the transcription no slower."""
        if self._warming is not None and not self._warming.done():
            return  # one at a time
        messages = self.conversation.request(
            user_text, self.chat.context_tokens, self.settings.llm.max_tokens, pending=pending
        )
        self._warming = asyncio.create_task(self.chat.prefill(messages, self.toolbox.offered()))

    # -- finishing a turn -------------------------------------------------------------------------
    def _audio_time(self, job: ReplyJob, wall: float) -> float:
        """A wall-clock instant on the audio clock. In real time they run together; a file read
        faster than real time maps the job's own elapsed time onto the moment it started."""
        if self._t0 is not None:
            return wall - self._t0
        return job.started_audio_s + (wall - job.started_wall)

    async def _complete(self, job: ReplyJob, final: SpeechEnded) -> TurnDone | None:
        try:
            r = await job.finish()
        except Exception as exc:
            # Not an LLM error (those are in the result): a failure nobody foresaw, a library's
            # on one input. This turn says so and keeps what was said; the next one works.
            log.debug("turn failed", exc_info=True)
            r = job.result
            r.error = f"{type(exc).__name__}: {exc}"
            if not r.user:
                self.printer.emit(ErrorEvent(f"A turn failed before its words were known: {r.error}"))
                return None
        if self._t0 is not None and r.user and r.sentences and not (r.error or job.interrupted):
            # While the reply plays, the server reads it into its prompt cache as the history
            # will hold it; after a trim of the history that is seconds of reading, which the
            # next question would otherwise wait for.
            self._prefill("", pending=Exchange(r.user, " ".join(r.sentences), tuple(r.steps)))
        # The history gets the reply once it has been heard, or what was heard of it if the
        # user talks over it first (or the input ends).
        while not (job.interrupted or self._input_done or self.sink.played_total >= job.queued_end):
            await asyncio.sleep(0.02)
        if not r.user:
            log.info("no words in %.2f s of audio; not a turn", final.duration_s)
            return None
        ready = None
        if r.first_audio_wall is not None:
            ready = max(self._audio_time(job, r.first_audio_wall), final.endpoint_at_s)
        taken_back = False
        if self._unheard is not None and self._unheard[0] is job:
            onset, self._unheard = self._unheard[1], None
            # Nothing of the reply was heard and nothing was done for it (no tool ran): the
            # user only paused, so their words go on into the next turn.
            taken_back = not (r.tools or r.error)
            if taken_back:
                log.info("the user went on before hearing a reply to %r: one turn with what follows", r.user)
                self._carry = (onset, r.user)
        return self.recorder.record(r, final, job.started_audio_s, ready, job.interrupted, taken_back)
