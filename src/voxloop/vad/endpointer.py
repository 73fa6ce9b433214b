"""voxloop's endpointer: Silero VAD v6 streamed in 32 ms steps.

A turn is over after ``end_silence_ms`` of silence (0.5 s by default, half the reference's
fixed second). There is no minimum utterance length, so a one-word "yes" is a turn; only
blips with less than ``min_speech_ms`` of voiced audio (a cough, a click) are ignored.
Hysteresis (speech above ``threshold``, silence below ``threshold - 0.15``) keeps one word
from being split at a soft consonant.

How long a pause must last to end the turn depends on what is known about it (``adaptive``):
at its first silent step voxloop starts a speculative reply and asks the turn model
(:mod:`voxloop.vad.turn`) whether the voice sounds finished; the reply's transcript then says
whether the words do (``hint``). See :meth:`SileroEndpointer.wait_ms` for how they combine.
"""

from __future__ import annotations

import collections
import logging
import threading
from pathlib import Path

import numpy as np

from voxloop.events import SpeechEnded, SpeechStarted
from voxloop.settings import VadSettings
from voxloop.vad.base import Framer

log = logging.getLogger(__name__)

STEP = 512  # Silero v6 at 16 kHz takes 512 new samples per call
CONTEXT = 64  # ...plus the last 64 samples of the previous call
QUIET = 0.15  # a step this unlike speech counts towards clearing Silero's memory
TRAILING_S = 0.2  # silence kept after the last voiced step for the STT
LEANS_FINISHED = 0.5  # the turn model's own boundary between finished and not


def silero_model_path() -> Path:
    """The Silero VAD v6 ONNX file that ships inside faster-whisper, its sha256 checked before
    first use (:mod:`voxloop.vad.models`)."""
    from voxloop.vad.models import silero

    return silero()


class SileroVad:
    """Streaming Silero VAD: one speech probability per 512-sample step, state carried over."""

    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self._session = ort.InferenceSession(
            str(path or silero_model_path()), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)

    def probability(self, step: np.ndarray) -> float:
        window = np.concatenate([self._context, step])[None, :]
        prob, self._h, self._c = self._session.run(None, {"input": window, "h": self._h, "c": self._c})
        self._context = step[-CONTEXT:]
        return float(np.asarray(prob).reshape(-1)[0])


class SileroEndpointer:
    def __init__(self, settings: VadSettings, sample_rate: int = 16000, vad: SileroVad | None = None) -> None:
        if sample_rate != 16000:
            raise ValueError("the endpointer runs at 16 kHz")
        self.settings = settings
        self.rate = sample_rate
        self.vad = vad or SileroVad()
        self._framer = Framer(STEP)
        pre_roll_steps = max(1, round(settings.pre_roll_ms / 1000 * sample_rate / STEP))
        self._pre_roll: collections.deque[np.ndarray] = collections.deque(maxlen=pre_roll_steps)
        self._off = settings.threshold - 0.15
        self._refresh_steps = round(settings.refresh_ms / 1000 * sample_rate / STEP)
        self._playing = False  # voxloop is speaking (see playback)
        # hint() and turn() come from the event loop while feed() runs in the VAD thread.
        self._lock = threading.Lock()
        self._start_new()

    def _start_new(self) -> None:
        self._in_speech = False
        self._calm = 0  # quiet steps in a row between turns, since Silero's memory was cleared
        self._announced = False
        self._chunks: list[np.ndarray] = []
        self._start = 0  # sample index where the kept audio starts
        self._voiced = 0  # voiced samples in this utterance
        self._last_voiced_end = 0  # sample index just after the last voiced step
        self._silence = 0  # samples of silence since the last voiced step
        self._pause_reported = False  # a speculative SpeechEnded went out for this pause
        self._forget_pause()

    def _forget_pause(self) -> None:
        self._pause: SpeechEnded | None = None  # the speculative end reported for this pause
        self._words: bool | None = None  # the words sound finished (hint), unknown yet
        self._turn_p: float | None = None  # the turn model's probability for this pause
        self._required = self.settings.end_silence_ms  # silence (ms) that ends this pause

    def reset(self) -> None:
        self.vad.reset()
        self._pre_roll.clear()
        self._start_new()

    def hint(self, complete: bool) -> None:
        """What the words so far say: a finished sentence ends the turn after a short pause,
        a phrase that is clearly not finished ("…and", "I'd like to") after a longer one."""
        with self._lock:
            if self._in_speech:
                self._words = complete
                self._required = self.wait_ms()

    def turn(self, pause: SpeechEnded, probability: float) -> None:
        """The turn model's probability that the speaker is done, for the speculative end
        ``pause`` (ignored once that pause is over: the user went on, or the turn ended)."""
        with self._lock:
            if pause is self._pause:
                self._turn_p = probability
                self._required = self.wait_ms()

    def wait_ms(self) -> int:
        """The silence that ends the current pause, from what is known about it.

        - Nothing yet (or no turn model): ``end_silence_ms``; the words alone:
          ``complete_silence_ms`` if they sound finished, else ``incomplete_silence_ms``.
        - The voice sounds surely finished (``turn_threshold``): ``turn_complete_ms``, unless the
          words, if they come in time, are unfinished ("…recipe for?"): ``turn_incomplete_ms``.
        - The voice leans to finished (p >= 0.5, the model's own boundary) and the words sound
          finished: ``turn_unsure_ms``.
        - Anything else: ``turn_incomplete_ms``, longer than people pause mid-phrase.

        The voice is heard ~0.1 s into the pause, the words ~0.1-0.4 s: a finished question
        ends after ``turn_complete_ms`` without waiting for them. Neither alone is trusted
        more: Whisper ends "My number is 0 1 2" with a full stop, and the model hears synthetic
        voices (espeak-ng) finish as often mid-phrase as at the end.
        """
        s = self.settings
        if not s.adaptive:
            return s.end_silence_ms
        p, words = self._turn_p, self._words
        if p is None:
            if words is None:
                return s.end_silence_ms
            return s.complete_silence_ms if words else s.incomplete_silence_ms
        if p >= s.turn_threshold:
            return s.turn_incomplete_ms if words is False else s.turn_complete_ms
        if p >= LEANS_FINISHED and words:
            return s.turn_unsure_ms
        return s.turn_incomplete_ms

    def playback(self, playing: bool) -> None:
        self._playing = playing
        if not playing:
            self._calm = 0

    @property
    def hearing(self) -> bool:
        """The last step was voiced: possibly the user, before ``announce_ms`` confirms it."""
        return self._in_speech and self._silence == 0

    @property
    def voiced_ms(self) -> float:
        return self._voiced * 1000 / self.rate if self._in_speech else 0.0

    def current_audio(self) -> np.ndarray | None:
        """The utterance heard so far while the user is talking (None in a pause, when the
        speculative transcript is about to take the STT)."""
        talking = self._in_speech and self._announced and self._silence == 0
        return np.concatenate(self._chunks) if talking else None

    def feed(self, block: np.ndarray) -> list[SpeechStarted | SpeechEnded]:
        events: list[SpeechStarted | SpeechEnded] = []
        with self._lock:
            start = self._framer.consumed
            for i, step in enumerate(self._framer.frames(block)):
                at = start + i * STEP
                event = self._step(step, at)
                if event is not None:
                    events.append(event)
        return events

    def _step(self, step: np.ndarray, at: int) -> SpeechStarted | SpeechEnded | None:
        prob = self.vad.probability(step)
        s = self.settings
        if not self._in_speech:
            if prob >= s.threshold:
                self._in_speech = True
                self._chunks = list(self._pre_roll)
                self._start = at - STEP * len(self._pre_roll)
                self._voiced = STEP
                self._last_voiced_end = at + STEP
                self._silence = 0
                self._chunks.append(step)
                return self._maybe_announce()
            self._pre_roll.append(step)
            self._refresh(prob)
            return None

        self._chunks.append(step)
        # Between the two thresholds a step continues speech but does not resume it.
        if prob >= s.threshold or (prob >= self._off and self._silence == 0):
            self._voiced += STEP
            self._last_voiced_end = at + STEP
            self._silence = 0
            if self._pause_reported:
                # The user went on after a pause voxloop had started answering: call it off.
                self._pause_reported = False
                self._forget_pause()
                return SpeechStarted(at_s=at / self.rate, resumed=True)
            return self._maybe_announce()
        self._silence += STEP
        silence_ms = self._silence * 1000 / self.rate
        if silence_ms >= self._required:
            return self._finish(at + STEP)
        if (
            s.spec_silence_ms
            and not self._pause_reported
            and silence_ms >= s.spec_silence_ms
            and self._is_turn()
        ):
            self._pause_reported = True
            self._pause = self._ended(at + STEP, final=False)
            return self._pause
        return None

    def _refresh(self, prob: float) -> None:
        """While voxloop speaks, clear Silero's recurrent memory after a stretch of quiet.

        Why: over seconds of what the echo canceller leaves of voxloop's own voice, Silero's
        state settles where a new voice moves it slowly: the user's first words over a reply
        scored 0.2-0.4 for 200-300 ms where the same samples score 0.6-0.85 from a fresh state
        (benchmarks/aec_onset.py), so barge-in waited for the second or third word. A fresh
        state after half a second of quiet hears the next voice as soon as it would in silence.
        Only between turns (inside one, the memory is what tells a pause from the end), and
        only while voxloop speaks: on ordinary turns the earlier start moved Whisper's window
        and cost words (bench set WER 1.4% -> 3.9%), for no gain in answer time.
        """
        if not self._refresh_steps or not self._playing:
            return
        self._calm = self._calm + 1 if prob < QUIET else 0
        if self._calm >= self._refresh_steps:
            self.vad.reset()
            self._calm = 0

    def _is_turn(self) -> bool:
        s = self.settings
        long_enough = (self._last_voiced_end - self._start) * 1000 >= s.min_utterance_ms * self.rate
        return long_enough and self._voiced * 1000 >= s.min_speech_ms * self.rate

    def _maybe_announce(self) -> SpeechStarted | None:
        s = self.settings
        if self._announced or self._voiced * 1000 < min(s.min_speech_ms, s.announce_ms) * self.rate:
            return None
        self._announced = True
        return SpeechStarted(at_s=self._start / self.rate)

    def _ended(self, now: int, final: bool) -> SpeechEnded:
        audio = np.concatenate(self._chunks)
        # Keep 0.2 s of trailing silence: Whisper transcribes a clipped last word worse, and
        # after a short one it may hear the utterance twice ("Okay. Okay."). A speculative end
        # comes before the pause is that long: make up the rest with digital silence.
        keep = self._last_voiced_end - self._start + int(TRAILING_S * self.rate)
        if keep > len(audio):
            audio = np.concatenate([audio, np.zeros(keep - len(audio), np.float32)])
        # The end of a pause answered early names that early end; any other end gets a new id.
        same = {"utterance": self._pause.utterance} if final and self._pause is not None else {}
        return SpeechEnded(
            audio=audio[:keep],
            start_s=max(0, self._start) / self.rate,
            end_s=self._last_voiced_end / self.rate,
            endpoint_at_s=now / self.rate,
            final=final,
            **same,
        )

    def _finish(self, now: int) -> SpeechEnded | None:
        event = self._ended(now, final=True) if self._is_turn() else None
        if event is None:
            log.debug("dropped a %.0f ms blip", self._voiced * 1000 / self.rate)
        self._pre_roll.clear()
        self._start_new()
        return event
