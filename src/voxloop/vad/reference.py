"""The reference design's endpointing, kept exactly for comparison (``--vad webrtc``).

webrtcvad mode 3 on 30 ms frames; only voiced frames are buffered; the turn ends once more
than ``end_silence_ms`` (1.0 s in the reference) has passed since the last voiced frame; a turn
with less than ``min_utterance_ms`` (2.0 s) of voiced audio is dropped. voxloop runs it on the
audio clock instead of the wall clock, so a file gives the same turns as a live microphone.
"""

from __future__ import annotations

import logging

import numpy as np

from voxloop.events import SpeechEnded, SpeechStarted
from voxloop.settings import VadSettings
from voxloop.vad.base import Framer

log = logging.getLogger(__name__)

REFERENCE = VadSettings(
    engine="webrtc", end_silence_ms=1000, min_speech_ms=0, min_utterance_ms=2000, webrtc_mode=3
)


class ReferenceEndpointer:
    def __init__(
        self, settings: VadSettings = REFERENCE, sample_rate: int = 16000, frame_ms: int = 30
    ) -> None:
        import webrtcvad

        self.settings = settings
        self.rate = sample_rate
        self.frame = sample_rate * frame_ms // 1000
        self._vad = webrtcvad.Vad(settings.webrtc_mode)
        self._framer = Framer(self.frame)
        self.dropped: list[float] = []  # voiced seconds of each turn dropped as too short
        self._start_new()

    def _start_new(self) -> None:
        self._voiced: list[np.ndarray] = []
        self._started = False
        self._first = 0
        self._last_speech_end = 0
        self._hearing = False

    @property
    def hearing(self) -> bool:
        return self._hearing

    @property
    def voiced_ms(self) -> float:
        """The reference tells no cough from a word: anything it hears counts in full."""
        return float("inf") if self._hearing or self._started else 0.0

    def reset(self) -> None:
        self._start_new()

    def hint(self, complete: bool) -> None:
        """The reference waits its fixed second whatever was said."""

    def playback(self, playing: bool) -> None:
        """The reference never listens while it speaks."""

    def current_audio(self) -> np.ndarray | None:
        return np.concatenate(self._voiced) if self._voiced else None

    def feed(self, block: np.ndarray) -> list[SpeechStarted | SpeechEnded]:
        events: list[SpeechStarted | SpeechEnded] = []
        start = self._framer.consumed
        for i, frame in enumerate(self._framer.frames(block)):
            at = start + i * self.frame
            pcm = (np.clip(frame, -1.0, 1.0) * 32767).astype("<i2").tobytes()
            self._hearing = self._vad.is_speech(pcm, self.rate)
            if self._hearing:
                if not self._started:
                    self._first = at
                    events.append(SpeechStarted(at_s=at / self.rate))
                self._voiced.append(frame)
                self._started = True
                self._last_speech_end = at + self.frame
            elif self._started:
                now = at + self.frame
                silence = (now - self._last_speech_end) / self.rate
                if silence > self.settings.end_silence_ms / 1000:
                    voiced_s = len(self._voiced) * self.frame / self.rate
                    if voiced_s >= self.settings.min_utterance_ms / 1000:
                        events.append(
                            SpeechEnded(
                                audio=np.concatenate(self._voiced),
                                start_s=self._first / self.rate,
                                end_s=self._last_speech_end / self.rate,
                                endpoint_at_s=now / self.rate,
                            )
                        )
                    else:
                        log.info(
                            "skipped short segment (%.2fs < %.1fs)",
                            voiced_s,
                            self.settings.min_utterance_ms / 1000,
                        )
                        self.dropped.append(voiced_s)
                    self._start_new()
        return events
