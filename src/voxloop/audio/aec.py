"""Acoustic echo cancellation: take voxloop's own voice back out of the microphone signal.

Why: with a raw microphone and a loudspeaker in the same room, everything voxloop says comes
straight back in through the microphone. Without an echo canceller the voice activity detector
takes that echo for the user talking, so voxloop has to stop listening while it speaks
(half-duplex) and the user cannot interrupt it (barge-in). Because voxloop knows exactly what it
sends to the speaker (the *far end*), an adaptive filter can learn the speaker-room-microphone
path and subtract the echo from what the microphone hears (the *near end*), leaving the user's
voice.

Both backends here wrap WebRTC's AEC3, the canceller that runs in Chrome:

* :class:`WebRtcAec` uses ``pywebrtc-audio`` (a small pybind11 wheel; the one voxloop depends on);
* :class:`LiveKitAec` uses ``livekit`` (``rtc.AudioProcessingModule``), heavier but widely packaged.

Both packages are imported only when a canceller is made, so voxloop imports without them and
:func:`make_echo_canceller` can fall back to half-duplex (``None``).

AEC3 works on 10 ms frames (160 samples at 16 kHz) and both libraries misbehave on anything
else: pywebrtc-audio zero-pads a short tail frame, which feeds the adaptive filter silence that
never happened, and livekit's native code panics and aborts the whole Python process. voxloop's
audio comes in blocks of any size (512 samples from the microphone), so the cancellers here
buffer into whole frames and hand back exactly as many samples as they were given, always
:data:`LATENCY_SAMPLES` (one frame, 10 ms) late, whatever the block size: the first call returns
10 ms of silence first. AEC3 itself adds a further ~8 ms (128 samples) inside the library.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from voxloop.errors import ConfigError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FRAME = SAMPLE_RATE // 100  # AEC3 processes exactly 10 ms at a time
LATENCY_SAMPLES = FRAME  # what the frame buffering adds: constant, whatever the block size

KINDS = ("auto", "webrtc", "livekit", "none")

# kind -> (module to import, PyPI package that provides it)
_BACKENDS: dict[str, tuple[str, str]] = {
    "webrtc": ("pywebrtc_audio", "pywebrtc-audio"),
    "livekit": ("livekit.rtc", "livekit"),
}


class EchoCanceller(Protocol):
    """Removes the far-end (speaker) signal's echo from the near-end (microphone) signal.

    ``near`` and ``far`` are float32 16 kHz mono blocks covering the same span of time and of
    equal, arbitrary length. The result has the same length as ``near``; it is the cleaned
    microphone signal delayed by a constant latency (10 ms for the implementations here).
    """

    kind: str  # which backend: one of KINDS

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None:
        """Forget the learned echo path and any buffered audio (e.g. the device changed)."""
        ...


def _import_backend(kind: str) -> ModuleType:
    """Import the module behind ``kind`` or say which package to install."""
    module, package = _BACKENDS[kind]
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as exc:  # OSError: a wheel whose native library fails to load
        raise ConfigError(
            f"Echo cancellation {kind!r} needs the {package} package, which could not be imported "
            f"({exc}). Install it with: pip install {package} -- or choose another echo canceller "
            f"({', '.join(KINDS)})."
        ) from None


def _check_delay(delay_ms: int) -> int:
    if not 0 <= int(delay_ms) <= 500:
        raise ConfigError(
            f"Echo delay {delay_ms} ms is out of range: give the speaker-to-microphone delay "
            "in milliseconds, 0 to 500 (0 lets the canceller find it alone)."
        )
    return int(delay_ms)


def _as_block(samples: np.ndarray, name: str) -> np.ndarray:
    block = np.asarray(samples, dtype=np.float32)
    if block.ndim != 1:
        raise ValueError(f"{name} must be mono (1-D), got shape {block.shape}")
    return block


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)


class _FramedCanceller:
    """Shared buffering: any block size in, whole 10 ms frames to the backend, same size out.

    The output queue starts with one frame of silence. After that, each call has appended every
    complete frame it could, and fewer than one frame of input is ever left waiting, so the queue
    always holds at least as many samples as the caller asks for and the latency stays exactly
    :data:`LATENCY_SAMPLES`.
    """

    latency_samples = LATENCY_SAMPLES

    def __init__(self) -> None:
        self._clear_buffers()

    def _clear_buffers(self) -> None:
        self._near = np.zeros(0, np.float32)
        self._far = np.zeros(0, np.float32)
        self._out = np.zeros(LATENCY_SAMPLES, np.float32)

    def _process_frames(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """Cancel echo in a whole number of frames (len(near) % FRAME == 0)."""
        raise NotImplementedError

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        near = _as_block(near, "near")
        far = _as_block(far, "far")
        if near.shape != far.shape:
            raise ValueError(
                f"near ({near.size} samples) and far ({far.size} samples) must cover the same time span"
            )
        self._near = np.concatenate((self._near, near))
        self._far = np.concatenate((self._far, far))
        whole = len(self._near) // FRAME * FRAME
        if whole:
            cleaned = self._process_frames(self._near[:whole], self._far[:whole])
            self._out = np.concatenate((self._out, np.asarray(cleaned, dtype=np.float32)))
            self._near = self._near[whole:]
            self._far = self._far[whole:]
        result, self._out = self._out[: near.size], self._out[near.size :]
        return result

    def _reset_backend(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        self._reset_backend()
        self._clear_buffers()


class WebRtcAec(_FramedCanceller):
    """WebRTC AEC3 through ``pywebrtc-audio``: one C++ call per block, the GIL released.

    ``delay_ms`` is a hint for how long the played sound takes to come back into the
    microphone (output buffer + acoustic path + input buffer); AEC3 also estimates it itself.
    """

    kind = "webrtc"

    def __init__(self, delay_ms: int = 40) -> None:
        self._module = _import_backend("webrtc")
        self.delay_ms = _check_delay(delay_ms)
        self._ec: Any = self._module.EchoCanceller(SAMPLE_RATE, 1, self.delay_ms)
        super().__init__()

    def _process_frames(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        # float32 in [-1, 1] goes straight in (the library splits it into 10 ms frames itself);
        # clipping keeps an over-driven block from wrapping around in its int16 conversion.
        cleaned: np.ndarray = self._ec.process(np.clip(near, -1.0, 1.0), np.clip(far, -1.0, 1.0))
        return cleaned

    def _reset_backend(self) -> None:
        self._ec.reset()


class LiveKitAec(_FramedCanceller):
    """WebRTC AEC3 through ``livekit`` (``rtc.AudioProcessingModule``), frame by frame.

    livekit takes int16 ``rtc.AudioFrame``\\ s of exactly 10 ms (any other size aborts the process,
    not just the call) and processes them in place: the
    far-end frame goes to ``process_reverse_stream`` before the near-end frame of the same
    instant goes to ``process_stream``. Each call is a round trip through livekit's FFI, so it
    costs more per frame than :class:`WebRtcAec`. The module has no reset: a new one is made.
    """

    kind = "livekit"

    def __init__(self, delay_ms: int = 40) -> None:
        self._rtc = _import_backend("livekit")
        self.delay_ms = _check_delay(delay_ms)
        self._apm: Any = None
        # Two reusable frames whose int16 buffers numpy writes into and reads back from.
        self._far_frame: Any = self._rtc.AudioFrame.create(SAMPLE_RATE, 1, FRAME)
        self._near_frame: Any = self._rtc.AudioFrame.create(SAMPLE_RATE, 1, FRAME)
        self._far_pcm = np.frombuffer(self._far_frame.data, dtype=np.int16)
        self._near_pcm = np.frombuffer(self._near_frame.data, dtype=np.int16)
        self._reset_backend()
        super().__init__()

    def _process_frames(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        near16 = _to_int16(near)
        far16 = _to_int16(far)
        out = np.empty(near16.size, np.int16)
        apm = self._apm
        for start in range(0, near16.size, FRAME):
            stop = start + FRAME
            self._far_pcm[:] = far16[start:stop]
            apm.process_reverse_stream(self._far_frame)
            self._near_pcm[:] = near16[start:stop]
            apm.process_stream(self._near_frame)
            out[start:stop] = self._near_pcm
        return out.astype(np.float32) / 32767.0

    def _reset_backend(self) -> None:
        self._apm = self._rtc.AudioProcessingModule(echo_cancellation=True)
        # Kept by the module across frames (AEC3 treats it as a hint only).
        self._apm.set_stream_delay_ms(self.delay_ms)


def make_echo_canceller(kind: str = "auto", delay_ms: int = 40) -> EchoCanceller | None:
    """The echo canceller to use, or ``None`` for half-duplex.

    ``auto`` takes the first backend that is installed (webrtc, then livekit) and returns
    ``None`` when neither is, so voxloop keeps working, just without barge-in. ``none`` asks for
    half-duplex explicitly. Naming a backend that is not installed raises :class:`ConfigError`,
    because quietly falling back would hide why the user cannot interrupt voxloop.
    """
    kind = kind.strip().lower()
    _check_delay(delay_ms)
    if kind == "none":
        return None
    if kind == "webrtc":
        return WebRtcAec(delay_ms)
    if kind == "livekit":
        return LiveKitAec(delay_ms)
    if kind != "auto":
        raise ConfigError(f"Unknown echo canceller {kind!r}. Choose one of: {', '.join(KINDS)}.")
    for name, cls in (("webrtc", WebRtcAec), ("livekit", LiveKitAec)):
        try:
            _import_backend(name)
        except ConfigError as exc:
            log.debug("echo canceller %s unavailable: %s", name, exc)
            continue
        return cls(delay_ms)
    log.info("no echo canceller installed (pip install pywebrtc-audio); listening half-duplex")
    return None


def describe(aec: EchoCanceller | None, kind: str) -> str:
    """One line for `voxloop doctor`: which canceller a microphone conversation gets.

    Raises :class:`ConfigError` when ``auto`` finds none, because then the user cannot talk
    over voxloop and should be told which package fixes that.
    """
    if aec is not None:
        package = _BACKENDS[aec.kind][1]
        return f"{aec.kind} ({package} {importlib.metadata.version(package)}): you can talk over replies"
    if kind.strip().lower() == "none":
        return "off (half-duplex): on a microphone voxloop listens only while it is silent"
    raise ConfigError(
        "none installed: on a microphone voxloop listens only while it is silent (half-duplex). "
        "To talk over replies: pip install pywebrtc-audio"
    )


def echo_reduction_db(
    mic: np.ndarray, cleaned: np.ndarray, skip_s: float = 1.0, sample_rate: int = SAMPLE_RATE
) -> float:
    """How much quieter ``cleaned`` is than ``mic``, in dB (energy ratio; higher is better).

    Meant for echo-only recordings, where every bit of energy removed is echo removed. The first
    ``skip_s`` seconds are left out because the adaptive filter is still learning the echo path
    there. The canceller's few milliseconds of latency do not matter over seconds of audio, so
    the signals are compared over their common length without alignment.
    """
    skip = int(skip_s * sample_rate)
    n = min(len(mic), len(cleaned))
    before = np.asarray(mic[skip:n], dtype=np.float64)
    after = np.asarray(cleaned[skip:n], dtype=np.float64)
    if before.size == 0:
        raise ValueError(f"nothing left to compare after skipping {skip_s} s")
    mic_energy = float(np.dot(before, before))
    if mic_energy == 0.0:
        raise ValueError("the microphone signal is silent: there is no echo to reduce")
    cleaned_energy = float(np.dot(after, after))
    if cleaned_energy == 0.0:
        return float("inf")
    return float(10.0 * np.log10(mic_energy / cleaned_energy))
