"""Voice actions heard in the words themselves, before any model: the clock, sums, timers.

Home Assistant answers "what time is it" and "set a timer for five minutes" with sentence
patterns before it asks an LLM; voxloop does the same for its built-in tools. A request that
matches is run on the same tool a model would call and answered in one plain sentence, at once
and right whatever the model (the small presets make up the time and get 37 x 43 wrong, and
drop tool calls after the first turn). Anything that does not match goes to the model as before.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from voxloop.tools import ToolCall
from voxloop.tools.builtin import NUMBER_WORDS, TENS, evaluate, words_to_digits, words_value

_UNITS = {"second": 1, "sec": 1, "minute": 60, "min": 60, "hour": 3600}
_SMALL = NUMBER_WORDS
_TENS = TENS
_NUMBER_WORD = (
    r"(?:\d+(?:\.\d+)?|a|an|half an?|"
    + "|".join(list(_TENS) + _SMALL[::-1])
    + r")(?:[ -](?:"
    + "|".join(_SMALL[1:10])
    + r"))?"
)
_DURATION = re.compile(rf"({_NUMBER_WORD})\s*(second|sec|minute|min|hour)s?\b", re.IGNORECASE)

_POLITE = r"(?:(?:hey|ok|okay|please|so|and|um|uh|voxloop|could you|can you|would you)[, ]+)*"
_TIME = re.compile(
    rf"^{_POLITE}(?:what(?:'s| is) the (?:current )?time|what time is it|tell me the time|do you (?:have|know) the time)"
    r"(?: (?:now|right now|please))?[?.!]*$",
    re.IGNORECASE,
)
_DATE = re.compile(
    rf"^{_POLITE}(?:what(?:'s| is) (?:the date|today's date|the date today)|what day is (?:it|today)"
    r"(?: today)?|what(?:'s| is) today)[?.!]*$",
    re.IGNORECASE,
)
_SUM = re.compile(
    rf"^{_POLITE}(?:what(?:'s| is)|how much is|calculate|compute|work out)\s+(.+?)[?.!]*$", re.IGNORECASE
)
_OPERATOR = re.compile(
    r"\d\s*(?:[-+*/x×÷^]|plus|minus|times|multiplied by|divided by|over|to the power of|percent of)\s*\d",
    re.IGNORECASE,
)
_SET_TIMER = re.compile(
    rf"^{_POLITE}(?:set|start|make)\s+(?:a|an|the|my)?\s*(?:(\w+)\s+)?(?:timer|countdown)\s+for\s+(.+?)[?.!]*$"
    rf"|^{_POLITE}(?:set|start)\s+(?:a|an)\s+(.+?)\s+timer(?:\s+for\s+(?:the\s+)?(\w+))?[?.!]*$",
    re.IGNORECASE,
)
_CANCEL_TIMER = re.compile(
    rf"^{_POLITE}(?:cancel|stop|delete|remove)\s+(?:the|my|a)?\s*(?:(\w+)\s+)?timer[?.!]*$", re.IGNORECASE
)
_LIST_TIMERS = re.compile(
    rf"^{_POLITE}(?:how (?:much|long) (?:time )?(?:is )?(?:left|remaining)(?: on (?:the|my) (?:\w+ )?timer)?"
    r"|(?:what|which) timers (?:are|do i have)(?: running| set)?|list (?:my|the) timers)[?.!]*$",
    re.IGNORECASE,
)


def _number(word: str) -> float:
    word = word.lower().strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", word):
        return float(word)
    if word in ("a", "an"):
        return 1.0
    if word.startswith("half"):
        return 0.5
    return float(words_value(word))


def seconds_in(text: str) -> float:
    """The length a phrase names: "3 seconds", "five minutes", "1 hour and 30 minutes", "half an hour"."""
    return sum(_number(m.group(1)) * _UNITS[m.group(2).lower()] for m in _DURATION.finditer(text))


@dataclass(frozen=True, slots=True)
class Intent:
    """A request heard in the words: the tool call that answers it, and how to say the result."""

    call: ToolCall
    phrase: str = ""  # the user's own words for the sum
    kind: str = ""  # what to say of the result ("" = the tool's name)

    def answer(self, result: str) -> str:
        data = json.loads(result)
        name = self.kind or self.call.name
        if name == "get_time":
            return f"It's {data['time']}."
        if name == "date":
            return f"Today is {data['date']}."
        if name == "calculate":
            value = data["result"]
            shown = f"{value:,}" if isinstance(value, int) and abs(value) >= 10000 else str(value)
            return f"{self.phrase[:1].upper()}{self.phrase[1:]} is {shown}."
        if name == "set_timer":
            return f"Okay, {data['set']} started."
        if name == "cancel_timer":
            return f"Okay, I cancelled the {data['cancelled']}."
        if name == "list_timers":
            timers = data["timers"]
            if not timers:
                return "No timer is running."
            return " ".join(f"The {t['name']} has {t['time_left']} left." for t in timers)
        return result


def heard_intent(text: str, offered: set[str]) -> Intent | None:
    """The built-in action ``text`` asks for, if it plainly asks for one that is ``offered``."""
    text = " ".join(text.strip().split())
    if not text:
        return None
    if "get_time" in offered and _TIME.match(text):
        return Intent(ToolCall("intent", "get_time", "{}"))
    if "get_time" in offered and _DATE.match(text):
        return Intent(ToolCall("intent", "get_time", "{}"), kind="date")
    if "calculate" in offered and (m := _SUM.match(text)) and _OPERATOR.search(words_to_digits(m.group(1))):
        phrase = m.group(1).strip()
        try:
            evaluate(phrase)
        except ValueError as exc:
            if "not a sum" in str(exc):
                return None  # words around the numbers: the model's question
        return Intent(ToolCall("intent", "calculate", json.dumps({"expression": phrase})), phrase)
    if "set_timer" in offered and (m := _SET_TIMER.match(text)):
        length = m.group(2) or m.group(3) or ""
        label = m.group(1) or m.group(4) or ""
        seconds = seconds_in(length)
        if seconds and not _DURATION.fullmatch(label or "-"):
            if label.lower() in ("new", "one", "another", "quick"):
                label = ""
            arguments = {"seconds": seconds, "label": label}
            return Intent(ToolCall("intent", "set_timer", json.dumps(arguments)))
    if "cancel_timer" in offered and (m := _CANCEL_TIMER.match(text)):
        return Intent(ToolCall("intent", "cancel_timer", json.dumps({"label": m.group(1) or ""})))
    if "list_timers" in offered and _LIST_TIMERS.match(text):
        return Intent(ToolCall("intent", "list_timers", "{}"))
    return None
