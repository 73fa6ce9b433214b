"""The conversation: history sent to the LLM, trimmed to its context, and saved after every turn."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxloop.llm import Message

# Without the model's tokenizer, assume ~3 characters a token (English averages ~4), plus a few
# tokens of chat-template framing per message: trimming a little early beats overflowing.
_CHARS_PER_TOKEN = 3.0
_PER_MESSAGE = 8


def estimate_tokens(messages: list[Message]) -> int:
    return sum(int(len(m["content"]) / _CHARS_PER_TOKEN) + _PER_MESSAGE for m in messages)


@dataclass(frozen=True, slots=True)
class Exchange:
    user: str
    assistant: str


class Conversation:
    """System prompt plus the answered turns; failed turns are never sent (they would break the
    user/assistant alternation that chat templates such as Mistral's insist on)."""

    def __init__(self, system_prompt: str) -> None:
        self.system_prompt = system_prompt
        self.exchanges: list[Exchange] = []

    def request(
        self, user_text: str, context_tokens: int, reply_tokens: int, drop_oldest: int = 0
    ) -> list[Message]:
        """Messages for the next reply: the system prompt always, then as many of the most recent
        exchanges as fit in ``context_tokens`` with room for the reply, then the new user turn.
        ``drop_oldest`` removes more old exchanges (a retry after the server said it overflowed).
        """
        head: list[Message] = (
            [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        )
        tail: list[Message] = [{"role": "user", "content": user_text}]
        budget = context_tokens - reply_tokens - estimate_tokens(head + tail)
        history: list[Message] = []
        kept = self.exchanges[drop_oldest:] if drop_oldest else self.exchanges
        for ex in reversed(kept):
            pair: list[Message] = [
                {"role": "user", "content": ex.user},
                {"role": "assistant", "content": ex.assistant},
            ]
            cost = estimate_tokens(pair)
            if cost > budget:
                break
            budget -= cost
            history[:0] = pair
        return head + history + tail

    def add(self, user: str, assistant: str) -> None:
        self.exchanges.append(Exchange(user, assistant))


class ConversationLog:
    """``conversation.jsonl``: one line per turn, appended and flushed as soon as the turn ends, so
    nothing said is lost if anything fails later."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "conversation.jsonl"

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}, ensure_ascii=False)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
