"""Where reply audio goes: the speakers (bounded queue, flushable) or nowhere. A simulated
loudspeaker on the audio clock, for barge-in and echo cancellation tests, is in
:mod:`voxloop.testing`.

Every sink counts what it was given (``queued_total``) and what actually reached the air
(``played_total``), in samples at its own rate, so a reply cut short by the user can be trimmed to
what was really heard; and it can hand back what it played over the last stretch of microphone
time (``far_end``) for the echo canceller.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from typing import Any, Protocol

import numpy as np

from voxloop.audio.decode import STT_RATE, resample
from voxloop.audio.sources import _import_sounddevice
from voxloop.errors import AudioDeviceError

log = logging.getLogger(__name__)


class AudioSink(Protocol):
    @property
    def queued_total(self) -> int:
        """Samples (at the sink's rate) handed to :meth:`play` so far."""

    @property
    def played_total(self) -> int:
        """Samples that have actually been played out so far."""

    async def play(self, samples: np.ndarray) -> None:
        """Queue samples for playback; returns once they are queued (not played)."""

    async def drain(self) -> None:
        """Wait until everything queued has been played."""

    def flush(self) -> None:
        """Drop everything not yet played (barge-in), and play on from there (no longer paused)."""

    def pause(self) -> None:
        """Hold playback where it is, keeping what is queued (the user may be starting to talk)."""

    def resume(self) -> None:
        """Go on from where :meth:`pause` held it (it was not the user after all)."""

    def busy(self) -> bool:
        """Something is still being played."""

    def far_end(self, n: int) -> np.ndarray:
        """What the speaker played over the last ``n`` samples of microphone time (16 kHz)."""

    def close(self) -> None: ...


class NullSink:
    """No playback (``--no-speak``); replies are still synthesized and saved."""

    def __init__(self) -> None:
        self.queued_total = 0
        self.played_total = 0

    async def play(self, samples: np.ndarray) -> None:
        self.queued_total += len(samples)
        self.played_total += len(samples)

    async def drain(self) -> None:
        return None

    def flush(self) -> None:
        return None

    def pause(self) -> None:
        return None

    def resume(self) -> None:
        return None

    def busy(self) -> bool:
        return False

    def far_end(self, n: int) -> np.ndarray:
        return np.zeros(n, np.float32)

    def close(self) -> None:
        return None


class SpeakerSink:
    """The default output device through PortAudio.

    The PortAudio callback pulls fixed blocks from a bounded queue and plays silence when it is
    empty or playback is paused, so :meth:`pause` and :meth:`flush` silence the speaker within
    one block (20 ms). What it plays is kept, resampled to 16 kHz, as the echo canceller's
    reference.
    """

    def __init__(
        self,
        sample_rate: int,
        device: str | int | None = None,
        block: int = 480,
        max_blocks: int = 500,
    ) -> None:
        sd = _import_sounddevice()
        self.rate = sample_rate
        self.block = block
        self.queued_total = 0
        self.played_total = 0
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=max_blocks)
        self._idle = threading.Event()
        self._idle.set()
        self._paused = threading.Event()
        self._far: collections.deque[np.ndarray] = collections.deque(maxlen=200)
        self._far_lock = threading.Lock()
        try:
            sd.query_devices(device, kind="output")
            self._stream = sd.OutputStream(
                samplerate=sample_rate,
                channels=1,
                dtype="float32",
                blocksize=block,
                device=device,
                callback=self._callback,
            )
            self._stream.start()
        except Exception as exc:
            raise AudioDeviceError(f"Cannot open the speaker ({exc}).") from None

    def _callback(self, outdata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        try:
            if self._paused.is_set():
                raise queue.Empty
            block = self._queue.get_nowait()
        except queue.Empty:
            outdata.fill(0)
            self._idle.set()
            block = np.zeros(0, np.float32)
        else:
            outdata[: len(block), 0] = block
            outdata[len(block) :, 0] = 0
            self.played_total += len(block)
        with self._far_lock:
            self._far.append(outdata[:, 0].copy())

    async def play(self, samples: np.ndarray) -> None:
        self._idle.clear()
        for start in range(0, len(samples), self.block):
            block = samples[start : start + self.block].astype(np.float32)
            while True:
                try:
                    self._queue.put_nowait(block)
                    break
                except queue.Full:
                    await asyncio.sleep(0.02)
            self.queued_total += len(block)

    async def drain(self) -> None:
        while not (self._queue.empty() and self._idle.is_set()):
            await asyncio.sleep(0.02)

    def flush(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._paused.clear()

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def busy(self) -> bool:
        return not (self._queue.empty() and self._idle.is_set())

    def far_end(self, n: int) -> np.ndarray:
        with self._far_lock:
            played = np.concatenate(list(self._far)) if self._far else np.zeros(0, np.float32)
            self._far.clear()
        far = resample(played, self.rate, STT_RATE) if len(played) else played
        # The echo canceller wants exactly n samples: the newest, zero-padded in front.
        return np.concatenate([np.zeros(max(0, n - len(far)), np.float32), far[-n:]])

    def close(self) -> None:
        self.flush()
        self._stream.close()
