"""Read any common audio file into 16 kHz mono float32, or say clearly why not.

libsndfile (via soundfile) reads WAV/FLAC/OGG/MP3 of any sample format; PyAV (FFmpeg) takes
whatever else there is (M4A, WebM, odd WAV codecs). soxr resamples.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soxr

from voxloop.errors import AudioInputError

log = logging.getLogger(__name__)

STT_RATE = 16000


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: frames x channels -> frames."""
    if samples.ndim == 1:
        return samples
    return samples.mean(axis=1)


def resample(samples: np.ndarray, rate: int, target: int = STT_RATE) -> np.ndarray:
    if rate == target:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples.astype(np.float32, copy=False), rate, target).astype(np.float32)


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data, int(rate)


def _read_av(path: Path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("it has no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or STT_RATE
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return data[:, None], int(rate)


def load_audio(path: str | Path, target_rate: int = STT_RATE) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``target_rate``.

    Raises AudioInputError with a one-line reason for a missing, empty, unreadable or silent
    (zero-sample) file.
    """
    path = Path(path)
    if not path.exists():
        raise AudioInputError(f"Audio file {path} does not exist. Check the path and its spelling.")
    if path.is_dir():
        raise AudioInputError(f"{path} is a folder, not an audio file. Pass a WAV, FLAC, OGG or MP3 file.")
    if path.stat().st_size == 0:
        raise AudioInputError(f"Audio file {path} is empty (0 bytes). Record again or choose another file.")
    errors = []
    for reader in (_read_soundfile, _read_av):
        try:
            data, rate = reader(path)
            break
        except Exception as exc:  # both libraries raise many types for a bad file
            log.debug("%s could not read %s: %s", reader.__name__, path, exc)
            errors.append(f"{exc}".strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    else:
        raise AudioInputError(
            f"Cannot decode {path}: it is not a readable audio file ({errors[-1]}). "
            "Use a WAV, FLAC, OGG or MP3 recording."
        )
    if data.size == 0:
        raise AudioInputError(
            f"Audio file {path} holds no audio samples. Record again or choose another file."
        )
    mono = to_mono(data)
    if not np.all(np.isfinite(mono)):
        raise AudioInputError(f"Audio file {path} contains invalid samples (NaN or infinity).")
    return resample(mono, rate, target_rate)
