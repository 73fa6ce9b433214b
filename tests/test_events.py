"""Each event's one wire form: the same object in `voxloop chat --json`, on the WebSocket and in
conversation.jsonl, whoever writes it."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any, get_args

import numpy as np

from voxloop.events import (
    AudioChunk,
    ErrorEvent,
    Event,
    Interrupted,
    Notice,
    Ready,
    ReplyDelta,
    SpeechEnded,
    SpeechStarted,
    ToolUsed,
    Transcript,
    TurnDone,
)
from voxloop.printer import JsonPrinter
from voxloop.server.session import SocketPrinter

# A turn the user cut short, after a tool ran: every field of turn_done set.
TURN = TurnDone(
    index=3,
    user="Set a timer for ten minutes.",
    assistant="Okay, 10 minute timer",
    reply_audio="out/turn-003.wav",
    timings={"stt_ms": 81.26, "llm_first_token_ms": 240.04, "interrupted": 1.0},
    error=None,
    interrupted=True,
    speech_end_s=4.5,
    first_audio_at_s=4.9,
    tools=("set_timer",),
)

# One of each event (both kinds of transcript and of audio chunk), with its audio.
EVENTS: list[Event] = [
    Ready(wall=1234.5),
    SpeechStarted(at_s=1.23456),
    SpeechEnded(np.zeros(16000, np.float32), start_s=1.23456, end_s=2.5, endpoint_at_s=3.00049, utterance=7),
    Transcript("set a timer", stt_ms=0.0, partial=True),
    Transcript("Set a timer for ten minutes.", stt_ms=81.26),
    ReplyDelta("Okay, "),
    AudioChunk(np.zeros(2400, np.float32), 24000, "Okay, 10 minute timer", first=True),
    AudioChunk(np.zeros(2400, np.float32), 24000, "started.", first=False),
    ToolUsed("set_timer", '{"minutes": 10}', '{"ok": true}', ms=0.432),
    Interrupted(at_s=5.4321, spoken="Okay, 10 minute timer"),
    TURN,
    ErrorEvent("Turn 4 got no complete reply: the server went away."),
    Notice("Your 10 minute timer is done.", np.zeros(2400, np.float32), 24000),
]


def test_every_event_has_one_wire_form_and_no_two_share_a_name():
    assert {type(e) for e in EVENTS} == set(get_args(Event))  # every event type is here
    owner: dict[str, type] = {}
    for event in EVENTS:
        wire = event.to_dict()
        assert owner.setdefault(str(wire["type"]), type(event)) is type(event), (wire, owner)
        assert json.loads(json.dumps(wire)) == wire, wire  # plain JSON: no audio, no numpy numbers
    assert len(owner) == len(EVENTS)  # partial/transcript and first_audio/audio are told apart
    assert TURN.to_dict() == {
        "type": "turn_done",
        "turn": 3,
        "user": "Set a timer for ten minutes.",
        "assistant": "Okay, 10 minute timer",
        "reply_audio": "out/turn-003.wav",
        "timings": {"stt_ms": 81.3, "llm_first_token_ms": 240.0, "interrupted": 1.0},
        "error": None,
        "interrupted": True,
        "tools": ["set_timer"],
    }
    assert EVENTS[2].to_dict() == {
        "type": "speech_ended",
        "utterance": 7,
        "start_s": 1.235,
        "end_s": 2.5,
        "endpoint_at_s": 3.0,
        "final": True,
    }


async def test_json_lines_and_the_websocket_send_the_same_object_for_each_event():
    out = io.StringIO()
    lines = JsonPrinter(out=out, err=io.StringIO())
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(json.loads(json.dumps(message)))  # as the socket carries it

    socket = SocketPrinter(send)
    try:
        for event in EVENTS:
            lines.emit(event)
            socket.emit(event)
        async with asyncio.timeout(5):
            while len(sent) < 10:  # all but ready, speech_ended and the audio, plus metrics
                await asyncio.sleep(0.01)
    finally:
        socket.task.cancel()
    printed = [json.loads(line) for line in out.getvalue().splitlines()]
    kinds = [e["type"] for e in printed]
    assert kinds == [
        "ready",
        "speech_started",
        "speech_ended",
        "partial",
        "transcript",
        "reply_delta",
        "first_audio",  # the later chunks are in the reply's WAV
        "tool",
        "interrupted",
        "turn_done",
        "error",
        "notice",
    ]
    # The socket leaves out where the audio clock stands and sends the audio as binary frames;
    # everything else is the line --json prints, and the turn's timings again as `metrics`.
    assert [e for e in sent if e["type"] != "metrics"] == [
        e for e in printed if e["type"] not in {"ready", "speech_ended", "first_audio"}
    ]
    done = next(e for e in sent if e["type"] == "turn_done")
    assert done == TURN.to_dict() and done["interrupted"] is True
    assert sent[sent.index(done) + 1] == {"type": "metrics", "turn": 3, "timings": done["timings"]}
