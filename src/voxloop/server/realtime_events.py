"""The wire forms of the OpenAI Realtime API subset that `voxloop serve` speaks at /v1/realtime.

Each server event is built by one function here, in the GA names and shapes; ``Dialect`` turns
it into the older beta form for a client that speaks beta (``response.audio.delta`` for
``response.output_audio.delta``, ``modalities`` for ``output_modalities``...). The session's
settings are a ``RealtimeConfig``, which reads ``session.update`` in either shape and writes
itself back in the client's. The rules are documented in docs/openai.md ("Realtime").
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, replace
from typing import Any

RATE = 24000  # OpenAI's pcm16: 24 kHz mono, little-endian
FORMAT_GA = {"type": "audio/pcm", "rate": RATE}
MAX_INSTRUCTIONS = 4_000

# GA event name -> beta event name, for the events that were renamed.
BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}
GA_ONLY = {"conversation.item.added", "conversation.item.done"}
BETA_SESSION_KEYS = {
    "voice", "turn_detection", "input_audio_format", "output_audio_format", "modalities",
    "input_audio_transcription", "max_response_output_tokens",
}  # fmt: skip

_counter = itertools.count(1)


def new_id(prefix: str) -> str:
    """An id in OpenAI's style (``item_…``, ``resp_…``): unique in the process, not guessable."""
    return f"{prefix}_{next(_counter):06d}{secrets.token_hex(5)}"


class RealtimeError(Exception):
    """A client event refused: sent back as an ``error`` event, and the session goes on."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


# -- the session -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RealtimeConfig:
    """What a client can set with ``session.update``: the rest is voxloop's own and fixed."""

    instructions: str
    voice: str  # voxloop has one voice; the name a client gives is accepted and reported
    server_vad: bool = True  # False: the client commits the input buffer itself
    model: str = ""
    transcriber: str = ""
    silence_ms: int = 600
    voiced: bool = True  # False: replies in text only (output modalities ["text"]), never spoken

    def update(self, session: Any) -> tuple[RealtimeConfig, bool | None]:
        """This config with ``session`` (a ``session.update``'s object) applied, and the dialect
        the object is written in (True: beta, False: GA, None: cannot tell). Nothing is applied
        when any field is refused."""
        if not isinstance(session, dict):
            raise RealtimeError("session.update needs a `session` object.", param="session")
        beta: bool | None = None
        if session.get("type") == "realtime" or "audio" in session or "output_modalities" in session:
            beta = False
        elif BETA_SESSION_KEYS & session.keys():
            beta = True
        if session.get("type") not in (None, "realtime"):
            raise RealtimeError(
                f"Session type {session.get('type')!r} is not served here: only `realtime` (a voice "
                "conversation); for transcription alone use POST /v1/audio/transcriptions.",
                param="session.type",
            )
        new = self
        if "instructions" in session:
            text = session["instructions"]
            if not isinstance(text, str) or len(text) > MAX_INSTRUCTIONS:
                raise RealtimeError(
                    f"`instructions` must be a string of at most {MAX_INSTRUCTIONS} characters.",
                    param="session.instructions",
                )
            new = replace(new, instructions=text)
        audio = session.get("audio") or {}
        if not isinstance(audio, dict):
            raise RealtimeError("`audio` must be an object.", param="session.audio")
        given_in = audio.get("input") or {}
        given_out = audio.get("output") or {}
        for fmt, where in (
            (given_in.get("format"), "session.audio.input.format"),
            (given_out.get("format"), "session.audio.output.format"),
            (session.get("input_audio_format"), "session.input_audio_format"),
            (session.get("output_audio_format"), "session.output_audio_format"),
        ):
            _check_format(fmt, where)
        modalities = session.get("output_modalities", session.get("modalities"))
        if modalities is not None:
            new = replace(new, voiced=read_modalities(modalities, "session.output_modalities"))
        voice = given_out.get("voice", session.get("voice"))
        if isinstance(voice, dict):
            voice = voice.get("id")
        if voice is not None:
            if not isinstance(voice, str) or not voice or len(voice) > 64:
                raise RealtimeError("`voice` must be a voice name.", param="session.audio.output.voice")
            new = replace(new, voice=voice)
        key = "turn_detection"
        if key in given_in or key in session:
            turn = given_in[key] if key in given_in else session[key]
            if turn is None:
                new = replace(new, server_vad=False)
            elif isinstance(turn, dict) and turn.get("type", "server_vad") in ("server_vad", "semantic_vad"):
                new = replace(new, server_vad=True)
            else:
                raise RealtimeError(
                    '`turn_detection` must be {"type": "server_vad"} (voxloop\'s endpointing) or '
                    "null (the client commits the input buffer).",
                    param="session.audio.input.turn_detection",
                )
        return new, beta

    def _turn_detection(self) -> dict[str, Any] | None:
        if not self.server_vad:
            return None
        return {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 200,
            "silence_duration_ms": self.silence_ms,
            "create_response": True,
            "interrupt_response": True,
            "idle_timeout_ms": None,
        }

    def to_dict(self, session_id: str, beta: bool) -> dict[str, Any]:
        transcription = {"model": self.transcriber, "language": None, "prompt": None}
        if beta:
            return {
                "id": session_id,
                "object": "realtime.session",
                "model": self.model,
                "modalities": modalities(self.voiced, beta),
                "instructions": self.instructions,
                "voice": self.voice,
                "input_audio_format": "pcm16",
                "output_audio_format": "pcm16",
                "input_audio_transcription": transcription,
                "turn_detection": self._turn_detection(),
                "tools": [],
                "tool_choice": "auto",
                "max_response_output_tokens": "inf",
            }
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": self.model,
            "output_modalities": modalities(self.voiced, beta),
            "instructions": self.instructions,
            "audio": {
                "input": {
                    "format": FORMAT_GA,
                    "transcription": transcription,
                    "noise_reduction": None,
                    "turn_detection": self._turn_detection(),
                },
                "output": {"format": FORMAT_GA, "voice": self.voice, "speed": 1.0},
            },
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
        }


def read_modalities(value: Any, param: str) -> bool:
    """Whether output modalities (GA ``output_modalities``, beta ``modalities``) ask for speech:
    ``["audio"]`` (GA) or ``["text", "audio"]`` (beta) do, ``["text"]`` asks for text only."""
    if not isinstance(value, list) or not value or not set(value) <= {"text", "audio"}:
        raise RealtimeError(
            'Output modalities must be ["audio"] (speech and its transcript) or ["text"] (text only).',
            param=param,
        )
    return "audio" in value


def modalities(voiced: bool, beta: bool) -> list[str]:
    """Output modalities as each dialect writes them: beta lists the transcript's text too."""
    if not voiced:
        return ["text"]
    return ["text", "audio"] if beta else ["audio"]


def _check_format(fmt: Any, where: str) -> None:
    """Only OpenAI's default, PCM16 at 24 kHz: ``"pcm16"`` (beta) or ``{"type": "audio/pcm"}``."""
    if fmt is None or fmt == "pcm16":
        return
    if (
        isinstance(fmt, dict)
        and fmt.get("type", "audio/pcm") == "audio/pcm"
        and fmt.get("rate", RATE) == RATE
    ):
        return
    raise RealtimeError(
        f'Audio format {fmt!r} is not served: use PCM16 at 24 kHz ({{"type": "audio/pcm", "rate": '
        '24000}, or "pcm16").',
        code="invalid_audio_format",
        param=where,
    )


# -- the dialects --------------------------------------------------------------------------------
@dataclass
class Dialect:
    """Which names a connection gets: GA by default, beta for a client that speaks beta."""

    beta: bool = False

    def events(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The event as this client names it (none: a GA-only event for a beta client)."""
        kind = event["type"]
        if not self.beta:
            return [event]
        if kind in GA_ONLY:
            return []
        return [{**event, "type": BETA_NAMES.get(kind, kind)}]


# -- items and responses ------------------------------------------------------------------------
def user_item(item_id: str, *, audio: bool, text: str | None = None) -> dict[str, Any]:
    part = (
        {"type": "input_audio", "transcript": text} if audio else {"type": "input_text", "text": text or ""}
    )
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [part],
    }


def output_part(text: str, voiced: bool, beta: bool) -> dict[str, Any]:
    """An assistant message's one content part: speech with its transcript, or text."""
    if voiced:
        return {"type": "audio" if beta else "output_audio", "transcript": text}
    return {"type": "text" if beta else "output_text", "text": text}


def assistant_item(
    item_id: str, text: str | None, status: str, beta: bool, voiced: bool = True
) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [output_part(text, voiced, beta)] if text is not None else [],
    }


@dataclass
class Reply:
    """One response: an assistant message item with one part, an audio part and its transcript
    or (``voiced`` False: output modalities ``["text"]``) a text part."""

    id: str
    item_id: str
    voice: str
    voiced: bool = True
    status: str = "in_progress"  # then completed, cancelled or failed
    reason: str | None = None  # why it was cancelled: client_cancelled or turn_detected
    error: str | None = None
    transcript: str = ""  # the reply's words: the audio's transcript, or the text

    @property
    def open(self) -> bool:
        return self.status == "in_progress"

    def to_dict(self, beta: bool) -> dict[str, Any]:
        output = [] if self.status == "in_progress" else [self.item(beta)]
        details: dict[str, Any] | None = None
        if self.status == "cancelled":
            details = {"type": "cancelled", "reason": self.reason}
        elif self.status == "failed":
            details = {
                "type": "failed",
                "error": {"type": "server_error", "code": None, "message": self.error},
            }
        body: dict[str, Any] = {
            "id": self.id,
            "object": "realtime.response",
            "status": self.status,
            "status_details": details,
            "output": output,
            "conversation_id": "conv_voxloop",
            "usage": None,
            "metadata": None,
        }
        if beta:
            body |= {
                "modalities": modalities(self.voiced, beta),
                "voice": self.voice,
                "output_audio_format": "pcm16",
            }
        else:
            body |= {
                "output_modalities": modalities(self.voiced, beta),
                "audio": {"output": {"format": FORMAT_GA, "voice": self.voice}},
                "max_output_tokens": "inf",
            }
        return body

    def item(self, beta: bool) -> dict[str, Any]:
        status = "completed" if self.status == "completed" else "incomplete"
        if self.open:
            status = "in_progress"
        return assistant_item(self.item_id, None if self.open else self.transcript, status, beta, self.voiced)

    def _where(self) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": self.item_id, "output_index": 0, "content_index": 0}

    # The events of a response, in the order OpenAI sends them.
    def started(self, beta: bool) -> list[dict[str, Any]]:
        item = self.item(beta)
        part = output_part("", self.voiced, beta)
        return [
            {"type": "response.created", "response": self.to_dict(beta)},
            {"type": "response.output_item.added", "response_id": self.id, "output_index": 0, "item": item},
            {"type": "conversation.item.added", "previous_item_id": None, "item": item},
            {"type": "conversation.item.created", "previous_item_id": None, "item": item},
            {
                "type": "response.content_part.added",
                "response_id": self.id,
                "item_id": self.item_id,
                "output_index": 0,
                "content_index": 0,
                "part": part,
            },
        ]

    def text_delta(self, text: str) -> dict[str, Any]:
        """The reply's next words: the audio's transcript, or the text of a text-only reply."""
        self.transcript += text
        kind = "response.output_audio_transcript.delta" if self.voiced else "response.output_text.delta"
        return {"type": kind, **self._where(), "delta": text}

    def audio_delta(self, b64: str) -> dict[str, Any]:
        return {"type": "response.output_audio.delta", **self._where(), "delta": b64}

    def finished(self, beta: bool) -> list[dict[str, Any]]:
        """The closing events, once ``status`` says how it ended."""
        item = self.item(beta)
        part = output_part(self.transcript, self.voiced, beta)
        where = self._where()
        if self.voiced:
            words = [
                {"type": "response.output_audio.done", **where},
                {"type": "response.output_audio_transcript.done", **where, "transcript": self.transcript},
            ]
        else:
            words = [{"type": "response.output_text.done", **where, "text": self.transcript}]
        return [
            *words,
            {"type": "response.content_part.done", **where, "part": part},
            {"type": "response.output_item.done", "response_id": self.id, "output_index": 0, "item": item},
            {"type": "conversation.item.done", "previous_item_id": None, "item": item},
            {"type": "response.done", "response": self.to_dict(beta)},
        ]


# -- the other server events --------------------------------------------------------------------
def session_event(kind: str, config: RealtimeConfig, session_id: str, beta: bool) -> dict[str, Any]:
    return {"type": kind, "session": config.to_dict(session_id, beta)}


def speech_started(item_id: str, at_s: float) -> dict[str, Any]:
    return {
        "type": "input_audio_buffer.speech_started",
        "audio_start_ms": round(at_s * 1000),
        "item_id": item_id,
    }


def speech_stopped(item_id: str, at_s: float) -> dict[str, Any]:
    return {
        "type": "input_audio_buffer.speech_stopped",
        "audio_end_ms": round(at_s * 1000),
        "item_id": item_id,
    }


def committed(item_id: str, previous: str | None) -> dict[str, Any]:
    return {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous}


def cleared() -> dict[str, Any]:
    return {"type": "input_audio_buffer.cleared"}


def item_created(item: dict[str, Any], previous: str | None) -> list[dict[str, Any]]:
    """A user item in the conversation: ``created`` (both dialects), ``added``/``done`` (GA)."""
    return [
        {"type": kind, "previous_item_id": previous, "item": item}
        for kind in ("conversation.item.created", "conversation.item.added", "conversation.item.done")
    ]


def transcription_delta(item_id: str, delta: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.input_audio_transcription.delta",
        "item_id": item_id,
        "content_index": 0,
        "delta": delta,
    }


def transcription_completed(item_id: str, text: str, seconds: float) -> dict[str, Any]:
    return {
        "type": "conversation.item.input_audio_transcription.completed",
        "item_id": item_id,
        "content_index": 0,
        "transcript": text,
        "usage": {"type": "duration", "seconds": round(seconds, 3)},
    }


def error(
    message: str,
    code: str | None = None,
    param: str | None = None,
    event_id: str | None = None,
    kind: str = "invalid_request_error",
) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id},
    }
