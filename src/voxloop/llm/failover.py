"""Several OpenAI-compatible servers for one conversation (``--llm-url A --llm-url B``).

The conversation lives in voxloop, not on the server, so any server can take over at any turn.
When the server in use fails before the reply has started, the same request goes to the next
healthy one at once; when it fails mid-reply, that turn is reported and the next turn goes to
the next server. Nothing said is lost either way.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from voxloop.errors import LLMContextOverflowError, LLMError, LLMUnavailableError
from voxloop.llm import Message
from voxloop.llm.openai_http import OpenAIChat
from voxloop.tools import ToolCall

log = logging.getLogger(__name__)


class FailoverChat:
    def __init__(self, chats: list[OpenAIChat]) -> None:
        if not chats:
            raise ValueError("at least one server")
        self.chats = chats
        self.current = 0

    @property
    def model(self) -> str:
        return self.chats[self.current].model

    @property
    def context_tokens(self) -> int:
        return self.chats[self.current].context_tokens

    @property
    def takes_tools(self) -> bool:
        return self.chats[self.current].takes_tools

    @property
    def url(self) -> str:
        return self.chats[self.current].url

    async def connect(self) -> None:
        """Use the first server that answers; fail only if none does."""
        errors: list[LLMError] = []
        for i in range(len(self.chats)):
            index = (self.current + i) % len(self.chats)
            try:
                await self.chats[index].connect()
            except LLMError as exc:
                log.warning("%s", exc)
                errors.append(exc)
                continue
            self.current = index
            return
        if len(errors) == 1:
            raise errors[0]
        raise LLMUnavailableError("No LLM server is usable. " + " | ".join(str(e) for e in errors))

    async def _next_healthy(self) -> bool:
        """Move on to the next server that answers; False if none does."""
        for _ in range(len(self.chats) - 1):
            self.current = (self.current + 1) % len(self.chats)
            try:
                await self.chats[self.current].connect()
                log.warning("switched to the LLM server at %s", self.url)
                return True
            except LLMError as exc:
                log.warning("%s", exc)
        return False

    async def stream(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        calls: list[ToolCall] | None = None,
    ) -> AsyncIterator[str]:
        for _attempt in range(len(self.chats)):
            started = False
            chat = self.chats[self.current]
            stream = chat.stream(messages, tools, calls)
            try:
                async for piece in stream:
                    started = True
                    yield piece
                return
            except LLMContextOverflowError:
                raise  # the same on every server: the caller trims the history
            except LLMError:
                moved = await self._next_healthy()
                if started or not moved:
                    raise  # this turn is reported; the next one goes to the next server
            finally:
                await stream.aclose()  # type: ignore[attr-defined]

    async def prefill(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> None:
        await self.chats[self.current].prefill(messages, tools)

    async def aclose(self) -> None:
        for chat in self.chats:
            await chat.aclose()
