"""A simulated room for barge-in and echo cancellation (a loudspeaker on the microphone's audio
clock and a microphone that hears the user plus that speaker's echo), and a chat model that plays
back scripted replies.

Tests and benchmarks (``voxloop bench --interruptions``) use them alike, so they ship with the
package rather than with the tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import numpy as np

from voxloop.audio.decode import STT_RATE, resample
from voxloop.audio.sources import RealtimeSource
from voxloop.llm import Message
from voxloop.tools import ToolCall


class VirtualSpeaker:
    """A loudspeaker on the audio clock, for simulation: playback starts when queued and runs
    at real speed against the microphone's sample clock (which :class:`EchoSource` advances), so
    what it "plays" can be mixed back into the microphone as echo, and a pause or a flush cuts it
    off at an exact instant (``paused_at_s``, ``flushed_at_s``)."""

    def __init__(self, sample_rate: int) -> None:
        self.rate = sample_rate
        self.now = 0  # microphone clock, 16 kHz samples
        self._segments: list[tuple[int, np.ndarray]] = []  # (start on the 16 kHz clock, samples)
        self._end = 0
        self.queued_total = 0
        self._queued16 = 0
        self.flushed_at_s: list[float] = []
        self.paused_at_s: list[float] = []
        self.resumed_at_s: list[float] = []
        self._held: list[np.ndarray] | None = None  # while paused: what is still to play, in order

    @property
    def played_total(self) -> int:
        """Samples (at the sink's rate) whose time has come."""
        played16 = sum(max(0, min(len(s), self.now - start)) for start, s in self._segments)
        if played16 == self._queued16:  # all of it: exact, whatever resampling each piece rounded
            return self.queued_total
        return round(played16 * self.rate / STT_RATE)

    async def play(self, samples: np.ndarray) -> None:
        self.queued_total += len(samples)
        at16 = resample(samples, self.rate, STT_RATE)
        self._queued16 += len(at16)
        if self._held is not None:
            self._held.append(at16)
            return
        start = max(self.now, self._end)
        self._segments.append((start, at16))
        self._end = start + len(at16)

    async def drain(self) -> None:
        return None  # the simulated clock runs on the input; nothing to wait for here

    def _cut(self) -> np.ndarray:
        """Stop playing now; returns what had not been played yet."""
        rest = self.render(self.now, self._end)
        self._segments = [(st, s[: max(0, self.now - st)]) for st, s in self._segments]
        self._end = min(self._end, self.now)
        return rest

    def flush(self) -> None:
        self.flushed_at_s.append(self.now / STT_RATE)
        self._cut()
        self._held = None

    def pause(self) -> None:
        if self._held is None:
            self.paused_at_s.append(self.now / STT_RATE)
            self._held = [self._cut()]

    def resume(self) -> None:
        if self._held is not None:
            self.resumed_at_s.append(self.now / STT_RATE)
            rest, self._held = np.concatenate(self._held), None
            if len(rest):
                self._segments.append((self.now, rest))
                self._end = self.now + len(rest)

    def busy(self) -> bool:
        return self._end > self.now or bool(self._held and any(len(h) for h in self._held))

    def render(self, start: int, end: int) -> np.ndarray:
        """What played between two instants of the 16 kHz clock."""
        out = np.zeros(max(0, end - start), np.float32)
        for st, s in self._segments:
            a, b = max(start, st), min(end, st + len(s))
            if a < b:
                out[a - start : b - start] = s[a - st : b - st]
        return out

    def far_end(self, n: int) -> np.ndarray:
        return self.render(self.now - n, self.now)

    def close(self) -> None:
        return None


class EchoSource(RealtimeSource):
    """A simulated room: the user's recording, fed in real time, plus what ``speaker`` plays
    coming back into the microphone ``delay_ms`` later at ``gain`` (for barge-in and echo
    cancellation tests and benchmarks). It drives the speaker's clock."""

    def __init__(
        self, samples: np.ndarray, speaker: VirtualSpeaker, delay_ms: float = 40.0, gain: float = 0.5
    ) -> None:
        super().__init__(samples)
        self.speaker = speaker
        self.delay = int(delay_ms * self.sample_rate / 1000)
        self.gain = gain

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        position = 0
        async for block in super().blocks():
            end = position + len(block)
            echo = self.speaker.render(position - self.delay, end - self.delay)
            self.speaker.now = end
            position = end
            yield block + self.gain * echo


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
