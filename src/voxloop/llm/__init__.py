"""The chat model seam: any OpenAI-compatible server, streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from voxloop.tools import ToolCall

# A chat message: role and content, and for tool calling the assistant's ``tool_calls`` and a
# ``tool`` message's ``tool_call_id``.
Message = dict[str, Any]


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

    @property
    def takes_tools(self) -> bool:
        """Whether requests may carry ``tools`` (known after connect; may turn False later)."""

    async def connect(self) -> None:
        """Check the server answers and pick the model; raise an LLMError that says why not."""

    def stream(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        calls: list[ToolCall] | None = None,
    ) -> AsyncIterator[str]:
        """The reply's text as it streams. With ``tools`` (OpenAI function schemas) the model
        may call them instead of or after some text: the calls, whole, are appended to
        ``calls`` when the stream ends."""
        ...

    async def prefill(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> None:
        """Have the server read ``messages`` into its prompt cache ahead of the real request
        (while the user is still talking), so the reply's first token comes sooner. Best
        effort: never raises. ``tools``: as the reply's request will carry them (they are part
        of the prompt)."""

    async def aclose(self) -> None: ...


__all__ = ["ChatModel", "Message"]
