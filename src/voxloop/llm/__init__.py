"""The chat model seam: any OpenAI-compatible server, streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

Message = dict[str, str]


class ChatModel(Protocol):
    """Streams the assistant's reply to a list of chat messages, piece by piece.

    Closing the iterator early (barge-in, Ctrl-C) must stop generation on the server.
    """

    @property
    def model(self) -> str:
        """The model name requests go to (known after connect)."""

    @property
    def context_tokens(self) -> int:
        """The context window in tokens, for trimming the history."""

    async def connect(self) -> None:
        """Check the server answers and pick the model; raise an LLMError that says why not."""

    def stream(self, messages: list[Message]) -> AsyncIterator[str]: ...

    async def prefill(self, messages: list[Message]) -> None:
        """Have the server read ``messages`` into its prompt cache ahead of the real request
        (while the user is still talking), so the reply's first token comes sooner. Best
        effort: never raises."""

    async def aclose(self) -> None: ...


__all__ = ["ChatModel", "Message"]
