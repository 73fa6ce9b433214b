"""Text to speech."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Synthesizer(Protocol):
    """One sentence of text in, float32 mono audio at ``sample_rate`` out."""

    sample_rate: int

    def synthesize(self, text: str) -> np.ndarray: ...


__all__ = ["Synthesizer"]
