"""Reading Wyoming events off a socket, with limits, without giving up on a bad one.

The wire form is wyoming's own: a JSON header line (``type``, optional ``data``,
``data_length``, ``payload_length``), then ``data_length`` bytes of JSON merged into ``data``,
then ``payload_length`` bytes of payload (audio). The wyoming package reads it with
``wyoming.event.async_read_event``; voxloop reads it here instead, for two reasons: that function
answers a line that is not JSON, or one longer than the reader's limit, by ending the connection
(it returns None, as at end of stream), and it reads any ``payload_length`` a client announces
into memory. Here a malformed event is reported (:class:`WireError`, which the connection
answers with an ``error`` event) once its declared bytes are consumed, and the connection goes
on; sizes over the limits are read and thrown away, never held.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from wyoming.event import Event

MAX_LINE_BYTES = 1 << 16  # the header line; asyncio's reader refuses longer lines itself
MAX_DATA_BYTES = 1 << 16  # JSON data after the header: text to speak, a context
MAX_PAYLOAD_BYTES = 4 << 20  # one audio chunk (voxloop's own WebSocket frames stop there too)
_DISCARD_STEP = 1 << 16


class WireError(Exception):
    """One event could not be read; the next one can."""


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next event, or None at the end of the stream (also when it ends mid-event).

    Raises :class:`WireError` for an event that is not well formed or too big, after reading
    past it, so that the stream stays in step.
    """
    try:
        line = await reader.readline()
    except ValueError:  # over the reader's limit: asyncio has dropped it up to its newline
        raise WireError(f"Event header line longer than {MAX_LINE_BYTES} bytes; it was skipped.") from None
    if not line:
        return None
    problems: list[str] = []
    try:
        header = json.loads(line)
    except ValueError:
        raise WireError(
            "Not a Wyoming event: a header is one line of JSON like "
            '{"type": "describe"}, then data_length and payload_length bytes.'
        ) from None
    if not isinstance(header, dict):
        raise WireError("Not a Wyoming event: the header line must be a JSON object.")
    kind = header.get("type")
    data = header.get("data")
    data = {} if data is None else data
    if not isinstance(kind, str) or not kind:
        problems.append('the header has no "type"')
    if not isinstance(data, dict):
        problems.append('"data" must be a JSON object')
        data = {}
    data_length = _length(header, "data_length", problems)
    payload_length = _length(header, "payload_length", problems)
    # Whatever is wrong, read what the header declared, so the next event starts where it should.
    extra = await _read(reader, data_length, MAX_DATA_BYTES, "data", problems)
    payload = await _read(reader, payload_length, MAX_PAYLOAD_BYTES, "payload", problems)
    if extra is _EOF or payload is _EOF:
        return None
    if isinstance(extra, bytes) and extra:
        try:
            merged = json.loads(extra)
        except ValueError:
            merged = None
        if isinstance(merged, dict):
            data.update(merged)
        else:
            problems.append(f"its {data_length} bytes of data are not a JSON object")
    if problems:
        name = f" {kind!r}" if isinstance(kind, str) and kind else ""
        raise WireError(f"Malformed event{name}: " + "; ".join(problems) + ".")
    assert isinstance(kind, str)
    return Event(type=kind, data=data, payload=payload if isinstance(payload, bytes) and payload else None)


def _length(header: dict[str, Any], key: str, problems: list[str]) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.append(f'"{key}" must be a whole number of bytes')
        return 0
    return value


class _End:
    pass


_EOF = _End()


async def _read(
    reader: asyncio.StreamReader, length: int, limit: int, what: str, problems: list[str]
) -> bytes | _End | None:
    """``length`` bytes, or None (thrown away) when over ``limit``; _EOF if the stream ends."""
    try:
        if length <= limit:
            return await reader.readexactly(length) if length else b""
        left = length
        while left:
            left -= len(await reader.readexactly(min(left, _DISCARD_STEP)))
    except asyncio.IncompleteReadError:
        return _EOF
    problems.append(f"its {what} of {length} bytes is over the limit of {limit} bytes and was skipped")
    return None
