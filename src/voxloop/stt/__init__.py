"""Speech to text."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Transcriber(Protocol):
    """16 kHz mono float32 utterance in, its text out ("" when it holds no words)."""

    def transcribe(self, audio: np.ndarray) -> str: ...


__all__ = ["Transcriber"]
