"""Fakes at the seams, shared by the fast tests: a chat model that plays back scripted replies, a
transcriber that hears given words, and a synthesizer that says anything in a fixed time.

Each satisfies its protocol (``ChatModel``, ``Transcriber``, ``Synthesizer``), so a test runs the
real pipeline around them and asserts what a user would see.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import numpy as np

from voxloop.llm import Message
from voxloop.tools import ToolCall

STALL = None  # a piece that never comes: the stream hangs there until it is closed

# What a reply is made of: text to stream, an exception to raise (the server goes away), or STALL.
Piece = str | BaseException | None
# A reply that depends on the request (tool results, whether tools were offered): it gets the
# request's messages, tools and the list to append tool calls to, and returns the pieces.
Script = Callable[[list[Message], list[dict[str, Any]] | None, list[ToolCall] | None], Iterable[Piece]]


class ScriptedChat:
    """A chat model that plays back one reply per request, in order, and the last one again for
    every request after them.

    A reply is a list of pieces or a :data:`Script`. Each piece comes ``delay_s`` after the one
    before (a fast GPU server, or a slow story). It records every request and prefill, and counts
    the streams closed or cancelled before their end (``closed_early``): a barge-in, or a reply
    called off, must stop generation on the server.
    """

    def __init__(
        self,
        *replies: Sequence[Piece] | Script,
        delay_s: float = 0.0,
        takes_tools: bool = False,
        model: str = "scripted",
        context_tokens: int = 4096,
    ) -> None:
        if not replies:
            raise ValueError("ScriptedChat needs at least one reply")
        self.replies = list(replies)
        self.delay_s = delay_s
        self.takes_tools = takes_tools
        self.model = model
        self.context_tokens = context_tokens
        self.url = "http://127.0.0.1:1/v1"  # where requests go; StallGuard moves it on a restart
        self.requests: list[list[Message]] = []
        self.prefills: list[list[Message]] = []
        self.closed_early = 0

    async def connect(self) -> None:
        return None

    async def stream(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        calls: list[ToolCall] | None = None,
    ) -> AsyncIterator[str]:
        self.requests.append(messages)
        reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        pieces = reply(messages, tools, calls) if callable(reply) else reply
        try:
            for piece in pieces:
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if piece is STALL:
                    await asyncio.Event().wait()  # no token comes
                elif isinstance(piece, BaseException):
                    raise piece
                else:
                    yield piece
        except (GeneratorExit, asyncio.CancelledError):
            self.closed_early += 1
            raise

    async def prefill(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> None:
        self.prefills.append(messages)

    async def aclose(self) -> None:
        return None


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
