"""Speech audio as the OpenAI speech endpoint sends it: encoded piece by piece, as it is made.

Each encoder takes float32 mono pieces (one sentence each) and returns the bytes to send now,
then the rest at the end. WAV and raw PCM are written here (a 44-byte header is simpler than a
library); MP3, Ogg Opus, AAC (ADTS) and FLAC come from FFmpeg through PyAV, already voxloop's
decoder. A format is streamable as is: the container is written to a pipe, never seeked.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
import soxr

PCM_RATE = 24000  # OpenAI's "pcm": raw 16-bit little-endian mono at 24 kHz
STREAMING_SIZE = 0xFFFFFFFF  # a WAV's RIFF and data sizes when the length is not known yet

# format -> (media type, FFmpeg container, FFmpeg encoder); None: written here.
FORMATS: dict[str, tuple[str, str | None, str | None]] = {
    "mp3": ("audio/mpeg", "mp3", "libmp3lame"),
    "opus": ("audio/ogg", "ogg", "libopus"),
    "aac": ("audio/aac", "adts", "aac"),
    "flac": ("audio/flac", "flac", "flac"),
    "wav": ("audio/wav", None, None),
    "pcm": ("audio/pcm", None, None),
}


class Encoder(Protocol):
    media_type: str

    def encode(self, samples: np.ndarray) -> bytes:
        """Bytes ready to send for one more piece of audio (maybe none yet)."""
        ...

    def finish(self) -> bytes:
        """The bytes still held back, once the last piece is in."""
        ...


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def wav_header(rate: int, data_bytes: int | None = None) -> bytes:
    """A 16-bit mono PCM WAV header; sizes of 0xFFFFFFFF (as OpenAI streams it) when the length
    is not known, which players read as "until the end of the stream"."""
    data = STREAMING_SIZE if data_bytes is None else data_bytes
    riff = STREAMING_SIZE if data_bytes is None else 36 + data_bytes
    # RIFF, the fmt chunk (PCM, mono, rate, bytes a second, block align, bits), the data chunk
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16, b"data", data
    )


class PcmEncoder:
    """Raw 16-bit little-endian mono, resampled to ``out_rate`` (one stream, no seams)."""

    media_type = "audio/pcm"

    def __init__(self, rate: int, out_rate: int = PCM_RATE) -> None:
        self.rate = out_rate
        self._resampler = None if rate == out_rate else soxr.ResampleStream(rate, out_rate, 1, "float32")

    def encode(self, samples: np.ndarray) -> bytes:
        samples = samples.astype(np.float32, copy=False)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        return pcm16(samples)

    def finish(self) -> bytes:
        if self._resampler is None:
            return b""
        return pcm16(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))


class WavEncoder(PcmEncoder):
    """A streaming WAV at the synthesizer's own rate: the header first, then 16-bit samples."""

    media_type = "audio/wav"

    def __init__(self, rate: int) -> None:
        super().__init__(rate, rate)
        self._header = wav_header(rate)

    def encode(self, samples: np.ndarray) -> bytes:
        head, self._header = self._header, b""
        return head + super().encode(samples)

    def finish(self) -> bytes:
        head, self._header = self._header, b""
        return head


class _Pipe:
    """Where PyAV writes the container: bytes wait here until they are sent. No seek(), so
    FFmpeg's muxers write a streamable file."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: Any) -> int:
        self.buffer += bytes(data)
        return len(data)

    def take(self) -> bytes:
        data, self.buffer = bytes(self.buffer), bytearray()
        return data


class AvEncoder:
    """MP3, Ogg Opus, AAC or FLAC through PyAV; PyAV itself cuts the pieces into the codec's
    frame size and converts the sample format."""

    def __init__(self, fmt: str, rate: int) -> None:
        import av

        self.media_type, container, codec = FORMATS[fmt]
        assert container is not None and codec is not None
        rates = av.codec.Codec(codec, "w").audio_rates
        self.rate = (
            rate if not rates or rate in rates else min(rates, key=lambda r: (r < rate, abs(r - rate)))
        )
        self._resampler = None if self.rate == rate else soxr.ResampleStream(rate, self.rate, 1, "float32")
        self._pipe = _Pipe()
        # Ogg pages are cut every 100 ms instead of every second: the first audio goes out sooner.
        options = {"page_duration": "100000"} if container == "ogg" else {}
        self._container = av.open(self._pipe, mode="w", format=container, options=options)
        stream = self._container.add_stream(codec, rate=self.rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        self._stream = stream
        self._pts = 0

    def _frame(self, samples: np.ndarray) -> Any:
        import av

        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        frame.time_base = Fraction(1, self.rate)
        self._pts += len(samples)
        return frame

    def _mux(self, frame: Any) -> bytes:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._pipe.take()

    def encode(self, samples: np.ndarray) -> bytes:
        samples = samples.astype(np.float32, copy=False)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        return self._mux(self._frame(np.ascontiguousarray(samples))) if len(samples) else b""

    def finish(self) -> bytes:
        out = b""
        if self._resampler is not None:
            rest = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            out += self._mux(self._frame(rest)) if len(rest) else b""
        out += self._mux(None)
        self._container.close()
        return out + self._pipe.take()


def encoder_for(fmt: str, rate: int) -> Encoder:
    """The encoder for an OpenAI ``response_format``; ValueError naming the formats there are
    when ``fmt`` is not one of them or this FFmpeg build cannot write it."""
    if fmt not in FORMATS:
        raise ValueError(f"Unsupported response_format {fmt!r}: use one of {', '.join(FORMATS)}.")
    if fmt == "pcm":
        return PcmEncoder(rate)
    if fmt == "wav":
        return WavEncoder(rate)
    try:
        return AvEncoder(fmt, rate)
    except Exception as exc:  # PyAV raises many types for a codec this FFmpeg lacks
        raise ValueError(f"This server cannot write {fmt} ({exc}); use wav, pcm or flac.") from None


def stretch(samples: np.ndarray, rate: int, speed: float) -> np.ndarray:
    """``samples`` played ``speed`` times faster at the same pitch: FFmpeg's atempo filter (a
    WSOLA time-stretch), chained for factors beyond the 0.5-2.0 that one keeps clean."""
    if speed == 1.0 or not len(samples):
        return samples
    import av
    import av.filter

    graph = av.filter.Graph()
    node = graph.add_abuffer(format="flt", sample_rate=rate, layout="mono", time_base=Fraction(1, rate))
    tempos, rest = [], speed
    while rest < 0.5 or rest > 2.0:
        step = 0.5 if rest < 0.5 else 2.0
        tempos.append(step)
        rest /= step
    for tempo in [*tempos, rest]:
        step_node = graph.add("atempo", f"{tempo:.6f}")
        node.link_to(step_node)
        node = step_node
    sink = graph.add("abuffersink")
    node.link_to(sink)
    graph.configure()
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, dtype=np.float32)[None, :], format="flt", layout="mono"
    )
    frame.sample_rate = rate
    frame.pts = 0
    frame.time_base = Fraction(1, rate)
    graph.push(frame)
    graph.push(None)
    out = []
    while True:
        try:
            out.append(graph.pull().to_ndarray().reshape(-1))
        except (av.BlockingIOError, av.EOFError):
            break
    return np.concatenate(out).astype(np.float32, copy=False) if out else samples[:0]
