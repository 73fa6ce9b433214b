"""The endpointing seam: audio blocks in, SpeechStarted / SpeechEnded out."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from voxloop.events import SpeechEnded, SpeechStarted


class Endpointer(Protocol):
    """Consumes 16 kHz mono blocks of any size, in order, and reports turns on the audio clock."""

    def feed(self, block: np.ndarray) -> list[SpeechStarted | SpeechEnded]: ...

    def reset(self) -> None:
        """Forget any half-heard utterance (after voxloop spoke in half-duplex mode)."""

    def hint(self, complete: bool) -> None:
        """The words of the current pause form a finished sentence (or not)."""

    def playback(self, playing: bool) -> None:
        """Whether voxloop is speaking now, so the microphone may carry what the echo canceller
        leaves of its voice (set before each block)."""

    def current_audio(self) -> np.ndarray | None:
        """The utterance so far while it goes on (for interim transcripts), else None."""

    @property
    def hearing(self) -> bool:
        """The last step fed sounded like speech, announced or not (playback pauses on it)."""

    @property
    def voiced_ms(self) -> float:
        """Voiced speech in the utterance heard now (0 between utterances): how much of a sound
        over voxloop's reply was voice, to tell a cough or an "uh-huh" from an interruption."""


class Framer:
    """Cuts a stream of arbitrary blocks into fixed frames, counting samples for the audio clock."""

    def __init__(self, frame: int) -> None:
        self.frame = frame
        self._pending = np.zeros(0, np.float32)
        self.consumed = 0  # samples handed out as frames so far

    def frames(self, block: np.ndarray) -> list[np.ndarray]:
        data = np.concatenate([self._pending, block.astype(np.float32, copy=False)])
        count = len(data) // self.frame
        out = [data[i * self.frame : (i + 1) * self.frame] for i in range(count)]
        self._pending = data[count * self.frame :]
        self.consumed += count * self.frame
        return out
