"""The one place that writes user-facing output: human text, or one JSON object per line."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, Protocol, TextIO

import numpy as np

from voxloop.events import (
    AudioChunk,
    ErrorEvent,
    Event,
    Interrupted,
    Notice,
    ReplyDelta,
    SpeechEnded,
    ToolUsed,
    Transcript,
    TurnDone,
)

_NO_AUDIO = np.zeros(0, np.float32)


def metrics_line(timings: dict[str, float]) -> str:
    parts = [
        ("endpoint", "endpoint_wait_ms"),
        ("stt", "stt_ms"),
        ("llm", "llm_first_token_ms"),
        ("first audio", "speech_end_to_first_audio_ms"),
    ]
    return " · ".join(f"{label} {timings[key]:.0f} ms" for label, key in parts if key in timings)


class HumanPrinter:
    """``User: ...`` / ``AI  : ...`` like the reference, the reply printed as it streams."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._replying = False
        self._dim = self.out.isatty()

    def emit(self, event: Event) -> None:
        if isinstance(event, Transcript) and not event.partial:
            self.out.write(f"User: {event.text}\n")
        elif isinstance(event, ReplyDelta):
            text = event.text.replace("\n", " ")  # one "AI  :" line per reply
            if not self._replying:
                self._replying = True
                self.out.write("AI  : ")
                text = text.lstrip()
            self.out.write(text)
        elif isinstance(event, TurnDone):
            if self._replying:
                self.out.write("\n")
            elif event.assistant == "" and event.error is None:
                self.out.write("AI  : (no reply)\n")
            self._replying = False
            line = metrics_line(event.timings)
            if line:
                self.out.write(f"\033[2m      {line}\033[0m\n" if self._dim else f"      {line}\n")
        elif isinstance(event, Interrupted):
            self.out.write(" [interrupted]")
        elif isinstance(event, ToolUsed):
            outcome = event.result if event.error is None else f"failed: {event.error}"
            shown = outcome if len(outcome or "") <= 70 else (outcome or "")[:69] + "…"
            self.out.write(f" [{event.name} → {shown}]")
        elif isinstance(event, Notice):
            self.out.write(("\n" if self._replying else "") + f"AI  : {event.text}\n")
            self._replying = False
        elif isinstance(event, ErrorEvent):
            if self._replying:
                self.out.write("\n")
                self._replying = False
            self.out.flush()
            self.err.write(f"error: {event.message}\n")
            self.err.flush()
        self.out.flush()

    def info(self, message: str) -> None:
        self.err.write(message + "\n")
        self.err.flush()


class JsonPrinter:
    """One JSON object per line on stdout, flushed at once, for programs and tests: each
    event's own ``to_dict()``, the same dicts the WebSocket protocol sends."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def _write(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.out.flush()

    def emit(self, event: Event) -> None:
        if isinstance(event, AudioChunk) and not event.first:
            return  # the audio is in the reply WAV; the first chunk marks when it could be heard
        self._write(event.to_dict())
        if isinstance(event, ErrorEvent):
            self.err.write(f"error: {event.message}\n")
            self.err.flush()

    def info(self, message: str) -> None:
        self.err.write(message + "\n")
        self.err.flush()


class Printer(Protocol):
    """Where events and notices for the user go."""

    def emit(self, event: Event) -> None: ...

    def info(self, message: str) -> None: ...


class CollectingPrinter:
    """Keeps the events instead of printing them (benchmarks, embedding voxloop in a program);
    ``keep_audio=False`` leaves out the reply audio and each utterance's own, for long runs that
    must not hoard it (a 500-turn soak kept ~0.2 MB of the user's speech a turn)."""

    def __init__(self, keep_audio: bool = True) -> None:
        self.events: list[Event] = []
        self.keep_audio = keep_audio

    def emit(self, event: Event) -> None:
        if self.keep_audio:
            self.events.append(event)
        elif isinstance(event, SpeechEnded):
            self.events.append(dataclasses.replace(event, audio=_NO_AUDIO))
        elif not isinstance(event, AudioChunk | Notice):
            self.events.append(event)

    def info(self, message: str) -> None:
        return None


def make_printer(as_json: bool) -> Printer:
    return JsonPrinter() if as_json else HumanPrinter()
