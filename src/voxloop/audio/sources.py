"""Where the user's voice comes from: a recording or the microphone.

Both yield 16 kHz mono float32 blocks through the same async iterator, so everything
downstream is tested on files and runs unchanged on a live microphone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import numpy as np

from voxloop.audio.decode import STT_RATE
from voxloop.errors import AudioDeviceError

log = logging.getLogger(__name__)

BLOCK = 512  # 32 ms at 16 kHz: one Silero VAD step


class AudioSource(Protocol):
    """16 kHz mono float32 blocks, in order, until the source ends."""

    sample_rate: int
    live: bool  # a microphone (True) or a recording (False)
    started_at: float | None  # perf_counter() at sample 0 for sources that run in real time

    def blocks(self) -> AsyncIterator[np.ndarray]: ...

    def discard_pending(self) -> None:
        """Drop audio that arrived while voxloop was busy answering (half-duplex)."""


class ArraySource:
    """Audio already in memory (a decoded file, generated test speech), handed out block by block.

    A file is processed as fast as the machine allows; the audio clock still runs from its
    sample positions, so timings on the audio clock are the same as on a live microphone.
    """

    sample_rate = STT_RATE
    live = False
    started_at: float | None = None

    def __init__(self, samples: np.ndarray, block: int = BLOCK, tail_silence_s: float = 1.5) -> None:
        # Silence after the last word lets the endpointer close a final turn that the
        # recording cuts off without a pause, the way a person stops talking.
        pad = np.zeros(int(tail_silence_s * self.sample_rate), np.float32)
        self.samples = np.concatenate([samples.astype(np.float32, copy=False), pad])
        self.block = block

    def iter_blocks(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self.samples), self.block):
            yield self.samples[start : start + self.block]

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        for block in self.iter_blocks():
            yield block
            await asyncio.sleep(0)

    def discard_pending(self) -> None:
        """A recording has no 'while busy': every turn in it is kept."""


class RealtimeSource(ArraySource):
    """Audio in memory fed at speech speed, exactly as a microphone would deliver it, so that
    latency measured on a file is latency on a microphone (``--realtime``)."""

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        self.started_at = t0 = time.perf_counter()
        for i, block in enumerate(self.iter_blocks()):
            # Block i is complete once its last sample has been "spoken".
            delay = t0 + (i + 1) * self.block / self.sample_rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            yield block


def _import_sounddevice() -> Any:
    try:
        import sounddevice as sd
    except OSError as exc:  # PortAudio's shared library is missing
        raise AudioDeviceError(
            f"Cannot use the sound card: {exc}. Install PortAudio (apt-get install libportaudio2) "
            "or pass --input FILE to use a recording."
        ) from None
    return sd


class MicSource:
    """The default microphone through PortAudio, 16 kHz mono.

    The PortAudio callback only copies the block and hands it to the event loop.
    """

    sample_rate = STT_RATE
    live = True
    started_at: float | None = None

    def __init__(self, device: str | int | None = None, block: int = BLOCK, max_queue: int = 2000) -> None:
        self.device = device
        self.block = block
        self._queue: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=max_queue)

    def check(self) -> None:
        """Fail now, before models load, if there is no microphone to open."""
        self._check_device(_import_sounddevice())

    def _check_device(self, sd: Any) -> None:
        try:
            sd.query_devices(self.device, kind="input")
        except Exception as exc:
            raise AudioDeviceError(
                f"No microphone found ({exc}). Connect one, or pass --input FILE to use a recording."
            ) from None

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        sd = _import_sounddevice()
        self._check_device(sd)
        loop = asyncio.get_running_loop()

        def put(block: np.ndarray) -> None:
            with contextlib.suppress(asyncio.QueueFull):  # never block PortAudio's thread
                self._queue.put_nowait(block)

        def callback(indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
            if status:
                log.debug("microphone status: %s", status)
            loop.call_soon_threadsafe(put, indata[:, 0].copy())

        try:
            stream = sd.InputStream(
                samplerate=self.sample_rate,
                channels=1,
                dtype="float32",
                blocksize=self.block,
                device=self.device,
                callback=callback,
            )
        except Exception as exc:
            raise AudioDeviceError(
                f"Cannot open the microphone ({exc}). It may be busy in another program; "
                "close it or pass --input FILE."
            ) from None
        with stream:
            self.started_at = time.perf_counter()
            while True:
                yield await self._queue.get()

    def discard_pending(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
