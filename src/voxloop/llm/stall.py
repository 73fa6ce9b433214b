"""The embedded llama.cpp server, watched for the stall of its two threads on a busy box.

llama.cpp's threads meet at a spinning barrier after every operation. On 2 cores two threads
are the fastest for one conversation (~17 ms a token against ~26 ms on one), until another
program keeps a core busy: then the thread that shares that core waits a scheduler slice at
every barrier, and a token takes ~3 s instead of 17 ms. One thread is not touched by one busy
core (~26 ms a token). The guard notices the stall (no token for a while from a server that
gives one every few tens of ms), restarts the server voxloop started on one thread, and asks
again: from the start when nothing was said yet, else on from what was said.

When the server dies instead (``kill -9``, the OOM killer, a crash), :class:`EmbeddedServer`
starts it again; the guard then asks again if nothing was said yet, or reports the reply as cut
short (what was said stays in the history, marked as cut) and the next turn goes to the new
server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

from voxloop.errors import LLMUnavailableError
from voxloop.llm import Message
from voxloop.llm.openai_http import OpenAIChat
from voxloop.llm.server import EmbeddedServer
from voxloop.tools import ToolCall

log = logging.getLogger(__name__)

# A prompt the cache has not read (a long history, the first turn) takes up to ~1.5 s on two
# threads here; a stalled server takes ~3 s for each token.
FIRST_PIECE_S = 2.5
NEXT_PIECE_S = 1.0
# ...plus the time to read a long prompt the cache may not hold (tools, a long history): 60
# tokens a second is the base preset's slowest reading here.
PROMPT_TOKENS_PER_S = 60.0


def first_piece_limit(base_s: float, messages: list[Message], tools: list[dict[str, Any]] | None) -> float:
    chars = sum(len(str(m.get("content") or "")) for m in messages) + len(json.dumps(tools or []))
    return round(base_s + chars / 3.0 / PROMPT_TOKENS_PER_S, 1)


def unecho(piece: str, echo: str) -> tuple[str, str]:
    """``piece`` without what it repeats of ``echo`` (the text a server may stream again before
    going on from it), and what is left of ``echo`` to expect."""
    if echo.startswith(piece):
        return "", echo[len(piece) :]
    if piece.startswith(echo):
        return piece[len(echo) :], ""
    return piece, ""  # not a repeat: the server went on at once


class StallGuard:
    """A :class:`~voxloop.llm.ChatModel` over the embedded server, which it may move to one thread."""

    def __init__(
        self,
        chat: OpenAIChat,
        server: EmbeddedServer,
        notice: Callable[[str], None] = log.warning,
        first_piece_s: float = FIRST_PIECE_S,
        next_piece_s: float = NEXT_PIECE_S,
    ) -> None:
        self.chat = chat
        self.server = server
        self.notice = notice
        self.first_piece_s = first_piece_s
        self.next_piece_s = next_piece_s
        self._restarting = asyncio.Lock()  # a speculative request and the real one may both stall

    @property
    def model(self) -> str:
        return self.chat.model

    @property
    def context_tokens(self) -> int:
        return self.chat.context_tokens

    @property
    def takes_tools(self) -> bool:
        return self.chat.takes_tools

    @property
    def watching(self) -> bool:
        return self.server.proc is not None and self.server.threads > 1

    async def connect(self) -> None:
        await self.chat.connect()

    async def prefill(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> None:
        await self.chat.prefill(messages, tools)

    async def aclose(self) -> None:
        await self.chat.aclose()

    async def stream(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        calls: list[ToolCall] | None = None,
    ) -> AsyncIterator[str]:
        said = ""
        while True:
            # After a restart the server goes on from what was already said (llama.cpp continues
            # a final assistant message), so nothing is repeated or lost. llama-server streams
            # that message again before going on (the xllamacpp wheel's does not): not said twice.
            asked = [*messages, {"role": "assistant", "content": said}] if said else messages
            echo = said
            stream = self.chat.stream(asked, tools, calls)
            proc = self.server.proc
            waited = 0.0
            lost: LLMUnavailableError | None = None
            try:
                pieces = aiter(stream)
                while True:
                    first = first_piece_limit(self.first_piece_s, messages, tools)
                    limit = (self.next_piece_s if said else first) if self.watching else None
                    try:
                        piece = await asyncio.wait_for(anext(pieces), limit)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        waited = limit or 0.0
                        break
                    except LLMUnavailableError as exc:
                        lost = exc
                        break
                    if echo:
                        piece, echo = unecho(piece, echo)
                        if not piece:
                            continue
                    said += piece
                    yield piece
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            if lost is not None:
                await self._after_death(lost, proc, cut_short=bool(said))
                continue  # nothing was said yet: ask the new server
            await self._one_thread(waited)

    async def _after_death(
        self, lost: LLMUnavailableError, proc: subprocess.Popen[bytes] | None, cut_short: bool
    ) -> None:
        """A request could not reach the server: return to ask again once the server voxloop
        started has been started again after its death (:class:`EmbeddedServer` does it); raise
        when the error stands."""
        if not await asyncio.to_thread(self.server.after_loss, proc):
            raise lost  # it runs (or is not voxloop's): the error is told as it is
        self.chat.url = self.server.url
        if cut_short:
            raise LLMUnavailableError(
                f"The embedded LLM server stopped mid-reply ({self.server.ended}); it runs again "
                "for the next turn."
            ) from None

    async def _one_thread(self, waited: float) -> None:
        async with self._restarting:
            if not self.watching:
                return  # the other request restarted it meanwhile
            self.notice(
                f"The embedded LLM gave no token for {waited:g} s: another program is keeping a "
                "core busy, and llama.cpp's two threads stall then. Restarting it on one thread…"
            )
            await asyncio.to_thread(self.server.restart, 1)
            self.chat.url = self.server.url
            log.info("the embedded LLM now runs on one thread at %s", self.server.url)
