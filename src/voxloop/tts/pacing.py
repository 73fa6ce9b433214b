"""The silence around each spoken piece of a reply.

hibari pads every piece with ~0.2 s of digital silence at each end, and its voice fades in and
out over another ~0.1 s: a reply would start ~0.25 s after its first audio is ready, and pieces
played back to back would be ~0.7 s apart, a long pause even between sentences and an odd one
inside a sentence cut at a comma. Each piece is cut to its voice, keeping the fades, and followed
by the pause a speaker makes where it ends.
"""

from __future__ import annotations

import numpy as np

QUIET = 1e-3  # -60 dBFS: below it, the fades are inaudible
SENTENCE_PAUSE_S = 0.35  # after . ! ? …
CLAUSE_PAUSE_S = 0.15  # after , ; : —
PHRASE_PAUSE_S = 0.05  # a piece that ends without punctuation


def trim_silence(samples: np.ndarray, rate: int, threshold: float = 0.01, keep_s: float = 0.05) -> np.ndarray:
    """Cut leading and trailing near-silence, keeping ``keep_s`` of margin."""
    loud = np.flatnonzero(np.abs(samples) > threshold)
    if not len(loud):
        return samples[:0]
    margin = int(keep_s * rate)
    return samples[max(0, loud[0] - margin) : loud[-1] + 1 + margin]


def pause_after(text: str) -> float:
    """Seconds of silence after a piece of speech that ends like ``text``."""
    end = text.rstrip("\"'”’)] ")[-1:]
    if end in {".", "!", "?", "…"}:
        return SENTENCE_PAUSE_S
    if end in {",", ";", ":", "—", "-"}:
        return CLAUSE_PAUSE_S
    return PHRASE_PAUSE_S


def paced(samples: np.ndarray, rate: int, text: str) -> np.ndarray:
    """A piece of a reply as it should be played: its voice, then the pause that fits its end."""
    voice = trim_silence(samples, rate, threshold=QUIET, keep_s=0.01)
    if not len(voice):
        return voice
    pause = np.zeros(int(pause_after(text) * rate), np.float32)
    return np.concatenate([voice.astype(np.float32, copy=False), pause])
