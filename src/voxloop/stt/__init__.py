"""Speech to text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


class Transcriber(Protocol):
    """16 kHz mono float32 utterance in, its text out ("" when it holds no words)."""

    def transcribe(self, audio: np.ndarray, stop: Callable[[], bool] | None = None) -> str:
        """``stop`` is asked between the expensive steps (for an interim transcript that a newer
        request has made useless); when it says True the work is dropped and "" returned."""
        ...


__all__ = ["Transcriber"]
