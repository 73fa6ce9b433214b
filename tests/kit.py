"""Fakes at the seams, shared by the fast tests: a chat model that plays back scripted replies
(:class:`voxloop.testing.ScriptedChat`, which the benchmarks use too), a transcriber that hears
given words, and a synthesizer that says anything in a fixed time.

Each satisfies its protocol (``ChatModel``, ``Transcriber``, ``Synthesizer``), so a test runs the
real pipeline around them and asserts what a user would see.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from voxloop.testing import STALL, Piece, Script, ScriptedChat

__all__ = ["STALL", "Piece", "Script", "ScriptedChat", "Voice", "Words"]


class Words:
    """A transcriber that hears the given texts, one per utterance, and the last one again for
    every utterance after them."""

    def __init__(self, *texts: str) -> None:
        if not texts:
            raise ValueError("Words needs at least one text")
        self.texts = list(texts)
        self.heard = 0  # utterances transcribed so far

    def transcribe(self, audio: np.ndarray, stop: Callable[[], bool] | None = None) -> str:
        self.heard += 1
        return self.texts[min(self.heard, len(self.texts)) - 1]


class Voice:
    """A synthesizer that says any text as ``seconds`` of a steady tone, taking ``delay_s`` of the
    TTS thread to do it (a CPU voice that lags behind a fast LLM); ``said`` lists each text it
    started on, in order."""

    def __init__(self, sample_rate: int = 24000, seconds: float = 0.1, delay_s: float = 0.0) -> None:
        self.sample_rate = sample_rate
        self.samples = round(seconds * sample_rate)
        self.delay_s = delay_s
        self.said: list[str] = []

    def synthesize(self, text: str) -> np.ndarray:
        self.said.append(text)
        if self.delay_s:
            time.sleep(self.delay_s)  # the TTS thread is busy, as with a real model
        return np.full(self.samples, 0.1, np.float32)
