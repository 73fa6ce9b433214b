"""Where reply audio goes: the speakers (bounded queue, flushable) or nowhere."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any, Protocol

import numpy as np

from voxloop.audio.sources import _import_sounddevice
from voxloop.errors import AudioDeviceError

log = logging.getLogger(__name__)


class AudioSink(Protocol):
    async def play(self, samples: np.ndarray) -> None:
        """Queue samples for playback; returns once they are queued (not played)."""

    async def drain(self) -> None:
        """Wait until everything queued has been played."""

    def flush(self) -> None:
        """Drop everything not yet played (barge-in)."""

    def close(self) -> None: ...


class NullSink:
    """No playback (``--no-speak``); replies are still synthesized and saved."""

    async def play(self, samples: np.ndarray) -> None:
        return None

    async def drain(self) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class SpeakerSink:
    """The default output device through PortAudio.

    The PortAudio callback pulls fixed blocks from a bounded queue and plays silence when it is
    empty, so :meth:`flush` silences the speaker within one block (~20 ms).
    """

    def __init__(
        self,
        sample_rate: int,
        device: str | int | None = None,
        block: int = 480,
        max_blocks: int = 500,
    ) -> None:
        sd = _import_sounddevice()
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
        self.block = block
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=max_blocks)
        self._idle = threading.Event()
        self._idle.set()

    def _callback(self, outdata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        try:
            block = self._queue.get_nowait()
        except queue.Empty:
            outdata.fill(0)
            self._idle.set()
            return
        outdata[: len(block), 0] = block
        outdata[len(block) :, 0] = 0

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

    async def drain(self) -> None:
        while not (self._queue.empty() and self._idle.is_set()):
            await asyncio.sleep(0.02)

    def flush(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    def close(self) -> None:
        self.flush()
        self._stream.close()
