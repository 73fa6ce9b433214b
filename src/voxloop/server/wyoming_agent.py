"""The Wyoming ``handle`` program: voxloop as a conversation agent. Text in, the reply's text out,
with the history of each conversation id kept, as ``voxloop chat`` keeps one.

The reply is made the way a spoken turn's is (:mod:`voxloop.reply`): the same system prompt and
history trimming (:class:`~voxloop.conversation.Conversation`), the LLM streamed and cut into
speakable sentences (markdown gone, :class:`~voxloop.tts.sentences.SentenceSplitter`), a reply
that loops or runs over its budget cut short (:class:`~voxloop.tts.sentences.LoopGuard`), and
an apology instead of silence when the model says nothing speakable twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator

from voxloop.conversation import Conversation
from voxloop.errors import LLMContextOverflowError
from voxloop.llm import ChatModel, Message
from voxloop.reply import CHARS_PER_TOKEN, NOTHING_TO_SAY
from voxloop.settings import LlmSettings
from voxloop.tts.sentences import SpokenReply, spoken

log = logging.getLogger(__name__)

MAX_CONVERSATIONS = 100


class Conversations:
    """The history of each conversation id, the ``limit`` most recently used ones kept (Home
    Assistant starts a new id for every exchange that is not a follow-up). Turns of one
    conversation are answered one at a time, in the order they come."""

    def __init__(self, system_prompt: str, limit: int = MAX_CONVERSATIONS) -> None:
        self.system_prompt = system_prompt
        self.limit = limit
        self._items: OrderedDict[str, tuple[Conversation, asyncio.Lock]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    @contextlib.asynccontextmanager
    async def turn(self, conversation_id: str) -> AsyncIterator[Conversation]:
        entry = self._items.get(conversation_id)
        if entry is None:
            entry = (Conversation(self.system_prompt), asyncio.Lock())
            self._items[conversation_id] = entry
            while len(self._items) > self.limit:
                dropped, _ = self._items.popitem(last=False)
                log.debug("conversation %s forgotten (more than %d)", dropped, self.limit)
        self._items.move_to_end(conversation_id)
        conversation, lock = entry
        async with lock:
            yield conversation


async def answer(
    chat: ChatModel, conversation: Conversation, user: str, llm: LlmSettings
) -> AsyncGenerator[str, None]:
    """The reply to ``user`` as speakable sentences, while the LLM streams it. The caller adds
    the exchange to the history once it has them all. Closing the iterator closes the stream,
    which stops generation on the server."""
    messages = conversation.request(user, chat.context_tokens, llm.max_tokens)
    for attempt in range(2):
        said = False
        try:
            async with contextlib.aclosing(_sentences(chat, messages, llm)) as sentences:
                async for sentence in sentences:
                    said = True
                    yield sentence
        except LLMContextOverflowError:
            if said or attempt:
                raise
            # The estimate of the history's length was off: keep only the newest exchange.
            log.warning("context overflow; retrying with the oldest history dropped")
            drop = max(0, len(conversation.exchanges) - 1)
            messages = conversation.request(user, chat.context_tokens, llm.max_tokens, drop)
            continue
        if said:
            return
        log.info("the reply had nothing to say; asking again")
    yield NOTHING_TO_SAY


async def _sentences(chat: ChatModel, messages: list[Message], llm: LlmSettings) -> AsyncGenerator[str, None]:
    reply = SpokenReply(llm.max_tokens * CHARS_PER_TOKEN)  # for a server that ignores max_tokens
    async for sentence in spoken(chat.stream(messages), reply):
        yield sentence
