"""The speech-to-text side of the Wyoming server: a client's audio, in whatever PCM format it
announces, gathered into 16 kHz mono float32 for Whisper; and the partial transcripts streamed
while it talks, as words that will not change.
"""

from __future__ import annotations

import asyncio

import numpy as np

from voxloop.audio.decode import STT_RATE, resample, to_mono

MAX_UTTERANCE_S = 60.0  # a voice command is seconds long; more is a client that never stops
RATES = (4000, 192000)  # sample rates accepted, in Hz
WIDTHS = (1, 2, 3, 4)  # bytes per sample: unsigned 8-bit (as in WAV), signed 16-, 24-, 32-bit
MAX_CHANNELS = 8


class ClientError(Exception):
    """Something the client sent cannot be used; it gets an ``error`` event with this text, and
    the connection goes on."""

    def __init__(self, message: str, code: str = "bad-request") -> None:
        super().__init__(message)
        self.code = code


def check_format(rate: object, width: object, channels: object) -> tuple[int, int, int]:
    """The audio format an ``audio-start`` announces, or a ClientError that says what is wrong."""
    if (
        isinstance(rate, int)
        and isinstance(width, int)
        and isinstance(channels, int)
        and not any(isinstance(v, bool) for v in (rate, width, channels))
        and RATES[0] <= rate <= RATES[1]
        and width in WIDTHS
        and 1 <= channels <= MAX_CHANNELS
    ):
        return rate, width, channels
    raise ClientError(
        f"Unsupported audio format rate={rate!r} width={width!r} channels={channels!r}: send PCM at "
        f"{RATES[0]}-{RATES[1]} Hz, 1-4 bytes a sample, 1-{MAX_CHANNELS} channels "
        "(16000 Hz, 2 bytes, 1 channel is best).",
        "bad-audio-format",
    )


def decode_pcm(data: bytes, width: int, channels: int) -> np.ndarray:
    """Interleaved little-endian PCM -> mono float32 in [-1, 1)."""
    if width == 1:
        samples = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        samples = (np.where(ints >= 1 << 23, ints - (1 << 24), ints) / float(1 << 23)).astype(np.float32)
    else:
        samples = (np.frombuffer(data, "<i4").astype(np.float64) / 2.0**31).astype(np.float32)
    return to_mono(samples.reshape(-1, channels)).astype(np.float32, copy=False)


def encode_pcm16(samples: np.ndarray) -> bytes:
    """float32 -> signed 16-bit little-endian PCM."""
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


class Utterance:
    """The audio of one ``audio-start`` … ``audio-stop``, kept at the client's rate (mono) and
    resampled to 16 kHz when Whisper needs it: one resampling of the whole, not one per chunk."""

    def __init__(self, rate: int, width: int, channels: int, max_s: float = MAX_UTTERANCE_S) -> None:
        self.rate, self.width, self.channels = rate, width, channels
        self.max_frames = int(max_s * rate)
        self.frames = 0
        self.overflowed = False
        self._blocks: list[np.ndarray] = []
        self._grew = asyncio.Event()
        self._wanted_s = 0.0

    @property
    def seconds(self) -> float:
        return self.frames / self.rate

    def add(self, data: bytes, rate: int, width: int, channels: int) -> None:
        """One ``audio-chunk``. Raises ClientError for a chunk that does not fit the stream;
        audio past ``max_s`` is dropped (the first such chunk raises, the rest are silent)."""
        if (rate, width, channels) != (self.rate, self.width, self.channels):
            raise ClientError(
                f"audio-chunk format ({rate} Hz, {width} bytes, {channels} channels) differs from "
                f"the audio-start's ({self.rate} Hz, {self.width} bytes, {self.channels} channels); "
                "the chunk was dropped.",
                "bad-audio-format",
            )
        if len(data) % (width * channels):
            raise ClientError(
                f"audio-chunk of {len(data)} bytes is not a whole number of {width * channels}-byte "
                "frames; the chunk was dropped.",
                "bad-audio",
            )
        if self.frames >= self.max_frames:
            if self.overflowed:
                return
            self.overflowed = True
            raise ClientError(
                f"Audio longer than {self.max_frames / self.rate:g} s; the rest is ignored. "
                "Send audio-stop at the end of the command.",
                "audio-too-long",
            )
        samples = decode_pcm(data, width, channels)[: self.max_frames - self.frames]
        self._blocks.append(samples)
        self.frames += len(samples)
        if self.seconds >= self._wanted_s:
            self._grew.set()

    async def reached(self, seconds: float) -> None:
        """Wait until the utterance holds ``seconds`` of audio."""
        while self.seconds < seconds:
            self._wanted_s = seconds
            self._grew.clear()
            await self._grew.wait()

    def audio(self) -> np.ndarray:
        """Everything so far, 16 kHz mono float32."""
        if not self._blocks:
            return np.zeros(0, np.float32)
        if len(self._blocks) > 1:
            self._blocks = [np.concatenate(self._blocks)]
        return resample(self._blocks[0], self.rate, STT_RATE)


def _common_prefix(a: list[str], b: list[str]) -> list[str]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


class StablePrefix:
    """Partial transcripts as ``transcript-chunk`` pieces that only ever add words.

    A chunk cannot be taken back, and Whisper, transcribing the audio so far, may still change
    its last words when more audio comes ("What is the capital." -> "What is the capital of
    France?"). A word is sent once two partials in a row agree on it and on every word before it
    (the "local agreement" of whisper_streaming), never the last word of a partial, which may be
    cut mid-word. The pieces, joined, are the start of the final transcript; if the final one
    disagrees with words already sent (rare), the ``transcript`` event has the right text.
    """

    def __init__(self) -> None:
        self.sent: list[str] = []
        self._last: list[str] = []

    def _piece(self, words: list[str]) -> str:
        return (" " if self.sent else "") + " ".join(words)

    def partial(self, text: str) -> str:
        """The new stable words from this partial transcript ("" for none), as a chunk."""
        words = text.split()
        agreed = _common_prefix(self._last, words[:-1])
        self._last = words
        if len(agreed) <= len(self.sent) or agreed[: len(self.sent)] != self.sent:
            return ""
        piece = self._piece(agreed[len(self.sent) :])
        self.sent = agreed
        return piece

    def final(self, text: str) -> str:
        """The rest of the final transcript after what was sent ("" when nothing fits)."""
        words = text.split()
        if len(words) <= len(self.sent) or words[: len(self.sent)] != self.sent:
            return ""
        piece = self._piece(words[len(self.sent) :])
        self.sent = words
        return piece
