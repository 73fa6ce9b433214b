"""Tool calls a model wrote as text.

Small models often call a tool in a form their server does not parse: a bare JSON object, one
in a ```json fence, or inside ``<tools>`` instead of ``<tool_call>`` tags (Qwen2.5-Coder 0.5B
and 1.5B on llama.cpp do all three). Spoken, that is a stream of braces. voxloop holds back a
reply that starts like a call until it ends, and reads the calls out of it when they name a
tool it offered; a reply that turns out to be prose is spoken as it would have been.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Collection
from typing import Any

from voxloop.tools import ToolCall

_OPENINGS = ("{", "[", "<", "`", "json")
_WRAPPERS = re.compile(r"</?tool_?calls?>|</?tools?>|</?function_?calls?>|```(?:json)?", re.IGNORECASE)


def looks_like_a_call(text: str) -> bool | None:
    """True/False once the start of a reply tells whether it may be a call; None: too early."""
    head = text.lstrip()
    if not head:
        return None
    if any(head.lower().startswith(o) for o in _OPENINGS):
        return True
    if any(o.startswith(head.lower()) for o in _OPENINGS):  # "js": may become "json"
        return None
    return False


def _objects(text: str) -> list[Any]:
    """Every top-level JSON value in ``text``, in order."""
    decoder = json.JSONDecoder()
    found, i = [], 0
    while (start := _next_open(text, i)) >= 0:
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            i = start + 1
            continue
        found.append(value)
        i = end
    return found


def _next_open(text: str, i: int) -> int:
    positions = [p for p in (text.find("{", i), text.find("[", i)) if p >= 0]
    return min(positions) if positions else -1


def parse_calls(text: str, known: Collection[str]) -> list[ToolCall]:
    """The calls of offered tools written in ``text`` ({"name", "arguments"} objects, alone, in a
    list or wrapped), or [] when it holds none."""
    calls: list[ToolCall] = []
    values = _objects(_WRAPPERS.sub(" ", text))
    items = [v for value in values for v in (value if isinstance(value, list) else [value])]
    for item in items:
        if not isinstance(item, dict):
            continue
        inner = item.get("function")
        function: dict[str, Any] = inner if isinstance(inner, dict) else item
        name = str(function.get("name") or "").strip().replace(" ", "_")
        if name not in known:
            continue
        arguments = function.get("arguments", function.get("parameters", {}))
        if isinstance(arguments, dict) and arguments.get("type") == "object" and "properties" in arguments:
            arguments = {}  # the tool's schema echoed back: a call with no arguments
        text_args = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
        calls.append(ToolCall(f"text_call_{len(calls)}", name, text_args))
    return calls


async def calls_in_text(
    stream: AsyncIterator[str], known: Collection[str], calls: list[ToolCall]
) -> AsyncIterator[str]:
    """``stream``'s pieces, except a reply that starts like a tool call: that one is held back
    to its end, and the calls in it go to ``calls`` (if it holds none, its text comes out then).
    Closing this closes ``stream`` (which stops generation on the server)."""
    held: str | None = ""
    try:
        async for piece in stream:
            if held is None:
                yield piece
                continue
            held += piece
            if looks_like_a_call(held) is False:
                yield held
                held = None
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]
    if held:
        found = parse_calls(held, known)
        if found:
            calls.extend(found)
        else:
            yield held
