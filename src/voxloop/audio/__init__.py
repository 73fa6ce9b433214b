"""Audio in and out: decoding files, microphone and file sources, speaker sink, WAV files."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write mono float samples as a 16-bit PCM WAV (what every player opens)."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16")
    return path
