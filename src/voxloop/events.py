"""Typed events that flow between voxloop's stages and out to the printer.

Each is frozen: once a stage has said something, nobody downstream can change it. Times on
the *audio clock* are seconds from the first sample of the input; durations are milliseconds.

Each event also owns its wire form, ``to_dict()``: what ``--json`` prints, what the WebSocket
protocol sends (docs/protocol.md) and what ``conversation.jsonl`` keeps, so one fact has one
name everywhere. A dict holds no audio; times on the audio clock are rounded to the
millisecond, durations to a tenth of one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

_utterances = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Ready:
    """The audio clock starts: sample 0 of the input is being fed now."""

    wall: float  # time.perf_counter() at sample 0

    def to_dict(self) -> dict[str, object]:
        return {"type": "ready"}


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The VAD heard the start of an utterance (``resumed``: the user went on after a pause
    that voxloop had already started answering)."""

    at_s: float
    resumed: bool = False

    def to_dict(self) -> dict[str, object]:
        # No ``resumed``: a resumed start is never written out (it only cancels an early answer).
        return {"type": "speech_started", "at_s": round(self.at_s, 3)}


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """An utterance ended: its audio (16 kHz mono float32) and where it sat on the audio clock.

    ``endpoint_at_s`` is when the endpointer decided (speech end plus the silence it waited
    for). ``final`` is False for a pause that may still be followed by more speech: voxloop
    starts transcribing and answering it speculatively, and commits once the pause is final.
    ``utterance`` names the pause: the final end of a pause carries the id of the speculative
    one reported for it, so the early answer is committed to the turn it was made for; any other
    end gets an id of its own.
    """

    audio: np.ndarray = field(repr=False)
    start_s: float
    end_s: float
    endpoint_at_s: float
    final: bool = True
    utterance: int = field(default_factory=lambda: next(_utterances))

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict[str, object]:
        return {
            "type": "speech_ended",
            "utterance": self.utterance,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "endpoint_at_s": round(self.endpoint_at_s, 3),
            "final": self.final,
        }


@dataclass(frozen=True, slots=True)
class Transcript:
    """What the user said in one turn (``partial``: so far, while still talking)."""

    text: str
    stt_ms: float
    partial: bool = False

    def to_dict(self) -> dict[str, object]:
        # A partial transcript is its own message: a client shows it and replaces it, and
        # keeps only the final one.
        if self.partial:
            return {"type": "partial", "text": self.text}
        return {"type": "transcript", "text": self.text, "stt_ms": round(self.stt_ms, 1)}


@dataclass(frozen=True, slots=True)
class ReplyDelta:
    """A piece of the assistant's reply text as the LLM streams it."""

    text: str

    def to_dict(self) -> dict[str, object]:
        return {"type": "reply_delta", "text": self.text}


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Synthesized reply audio (float32) for one sentence."""

    samples: np.ndarray = field(repr=False)
    sample_rate: int
    text: str
    first: bool = False  # the reply's first audio: the moment latency is measured to

    def to_dict(self) -> dict[str, object]:
        # The samples travel on their own (a WAV, binary frames); only the first chunk is an
        # event worth a line: the moment the reply can be heard.
        return {"type": "first_audio" if self.first else "audio", "text": self.text}


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The user talked over the reply: playback was cut and the reply stream closed."""

    at_s: float
    spoken: str  # the part of the reply that was heard, which is all the history keeps

    def to_dict(self) -> dict[str, object]:
        return {"type": "interrupted", "at_s": round(self.at_s, 3), "spoken": self.spoken}


@dataclass(frozen=True, slots=True)
class TurnDone:
    """One finished turn: what was said, what was answered, and how long each stage took."""

    index: int
    user: str
    assistant: str | None
    reply_audio: str | None
    timings: dict[str, float]
    error: str | None = None
    interrupted: bool = False
    speech_end_s: float = 0.0  # audio clock: where the user's speech ended (VAD)
    first_audio_at_s: float | None = None  # audio clock: when the first reply audio was ready
    tools: tuple[str, ...] = ()  # the tools run for the reply

    def to_dict(self) -> dict[str, object]:
        return {
            "type": "turn_done",
            "turn": self.index,
            "user": self.user,
            "assistant": self.assistant,
            "reply_audio": self.reply_audio,
            "timings": {k: round(v, 1) for k, v in self.timings.items()},
            "error": self.error,
            "interrupted": self.interrupted,
            "tools": list(self.tools),
        }


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A failure worth telling the user about without ending the conversation."""

    message: str

    def to_dict(self) -> dict[str, object]:
        return {"type": "error", "message": self.message}


@dataclass(frozen=True, slots=True)
class ToolUsed:
    """The model called a tool in its reply: what it asked for, and what came back (or why
    nothing did)."""

    name: str
    arguments: str  # the JSON text the model wrote
    result: str | None
    error: str | None = None
    ms: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "type": "tool",
            "name": self.name,
            "arguments": self.arguments,
            "result": self.result,
            "error": self.error,
            "ms": round(self.ms, 1),
        }


@dataclass(frozen=True, slots=True)
class Notice:
    """voxloop speaks up between turns (a timer rang); ``samples`` is the spoken notice."""

    text: str
    samples: np.ndarray | None = field(default=None, repr=False)
    sample_rate: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"type": "notice", "text": self.text}


Event = (
    Ready
    | SpeechStarted
    | SpeechEnded
    | Transcript
    | ReplyDelta
    | AudioChunk
    | TurnDone
    | Interrupted
    | ErrorEvent
    | ToolUsed
    | Notice
)
