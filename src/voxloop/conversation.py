"""The conversation: history sent to the LLM, trimmed to its context, and saved after every turn."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxloop.llm import Message

log = logging.getLogger(__name__)

# Without the model's tokenizer, assume ~3 characters a token (English averages ~4), plus a few
# tokens of chat-template framing per message: trimming a little early beats overflowing.
_CHARS_PER_TOKEN = 3.0
_PER_MESSAGE = 8
NEW_TURN_TOKENS = 80  # a long spoken question (~240 characters)


def estimate_tokens(messages: list[Message]) -> int:
    return sum(
        int(len(str(m.get("content") or "")) / _CHARS_PER_TOKEN)
        + int(len(str(m.get("tool_calls") or "")) / _CHARS_PER_TOKEN)
        + _PER_MESSAGE
        for m in messages
    )


@dataclass(frozen=True, slots=True)
class Exchange:
    user: str
    assistant: str
    # The tool calls made on the way and their results, as sent to the model: kept, so later
    # turns see how earlier questions were answered (a small model that sees only plain
    # answers in its history stops calling tools).
    steps: tuple[Message, ...] = ()


class Conversation:
    """System prompt plus the answered turns; failed turns are never sent (they would break the
    user/assistant alternation that chat templates such as Mistral's insist on).

    When the history outgrows the model's context, the oldest exchanges are dropped in one go,
    down to half of what fits (``KEEP_AFTER_TRIM``), and the history then starts at the same
    exchange until it fills up again. Dropping one exchange a turn would change the start of
    the history on every turn, and the server's prompt cache, which only reuses an unchanged
    beginning, would have to read the whole history again each time (seconds on a CPU).
    """

    KEEP_AFTER_TRIM = 0.5

    def __init__(self, system_prompt: str) -> None:
        self.system_prompt = system_prompt
        self.exchanges: list[Exchange] = []
        self._first = 0  # the oldest exchange still sent

    def request(
        self,
        user_text: str,
        context_tokens: int,
        reply_tokens: int,
        drop_oldest: int = 0,
        pending: Exchange | None = None,
    ) -> list[Message]:
        """Messages for the next reply: the system prompt always, then the exchanges from the
        current start of the history (see the class), then the new user turn.
        ``drop_oldest``: the history starts at that exchange or later from now on (a retry after
        the server said it overflowed: the estimate was off for this model).
        ``pending``: an exchange not added yet (a reply still playing), counted and sent as if it
        were, so a prefill reads the history as the next request will send it.
        """
        exchanges = self.exchanges + ([pending] if pending is not None else [])
        head: list[Message] = (
            [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        )
        tail: list[Message] = [{"role": "user", "content": user_text}]
        # Room for a new turn of any usual length, so a prefill (with no words yet) trims the
        # history exactly where the request after it will.
        budget = (
            context_tokens
            - reply_tokens
            - estimate_tokens(head)
            - max(NEW_TURN_TOKENS, estimate_tokens(tail))
        )
        self._first = min(len(exchanges), max(self._first, drop_oldest))
        costs = [estimate_tokens(self._pair(ex)) for ex in exchanges]
        if sum(costs[self._first :]) > budget:
            # Full: start again from the newest exchanges that fill half of it (or fewer).
            kept, first = 0, len(exchanges)
            while first > 0 and kept + costs[first - 1] <= budget * self.KEEP_AFTER_TRIM:
                first -= 1
                kept += costs[first]
            self._first = max(self._first, first)
        history = [m for ex in exchanges[self._first :] for m in self._pair(ex)]
        return head + history + tail

    @staticmethod
    def _pair(ex: Exchange) -> list[Message]:
        return [
            {"role": "user", "content": ex.user},
            *ex.steps,
            {"role": "assistant", "content": ex.assistant},
        ]

    def add(self, user: str, assistant: str, steps: tuple[Message, ...] = ()) -> None:
        self.exchanges.append(Exchange(user, assistant, steps))


class ConversationLog:
    """``conversation.jsonl``: one line per turn, appended as soon as the turn ends, so nothing
    said is lost if anything fails later. A line is the turn's ``turn_done`` record
    (``TurnDone.to_dict()``, as ``--json`` prints it) with the time it was written.

    Each line goes to the file in one ``write``, so a voxloop killed at any moment (``kill -9``)
    leaves whole lines; should a write still be cut short (a full disk, a kill inside a long
    write), the piece is dropped when the log is next opened, and the next line starts a line of
    its own. ``earlier_turns``: the lines an earlier run left in the file.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "conversation.jsonl"
        self.earlier_turns = self._mend()

    def _mend(self) -> int:
        """Drop a last line cut short; the number of whole lines."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        whole = data.rfind(b"\n") + 1
        if whole < len(data):
            log.warning(
                "%s ended in a line cut short (%d bytes, voxloop stopped while writing it); dropped it",
                self.path,
                len(data) - whole,
            )
            with self.path.open("r+b") as f:
                f.truncate(whole)
        return data.count(b"\n")

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}, ensure_ascii=False)
        data = memoryview((line + "\n").encode("utf-8"))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:  # one write, unless the system takes it in parts
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
