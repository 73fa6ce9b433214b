"""OpenAI-compatible audio endpoints on `voxloop serve`, on the models the server has loaded.

``POST /v1/audio/transcriptions`` (Whisper), ``POST /v1/audio/speech`` (hibari, streamed sentence
by sentence) and ``GET /v1/models``, in OpenAI's request and response shapes, so the official
clients work with ``base_url`` pointed here. The token rule is the server's own: the API key is
the token (``Authorization: Bearer``); on loopback without a token anything goes. Errors come in
OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, never as a traceback.
The wire format is documented in docs/openai.md.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import numpy as np
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message

from voxloop.audio.decode import STT_RATE, load_audio
from voxloop.errors import AudioInputError, VoxloopError
from voxloop.server.audio_formats import FORMATS, Encoder, encoder_for, stretch
from voxloop.server.subtitles import to_srt, to_vtt
from voxloop.settings import SttSettings
from voxloop.stt import Transcriber
from voxloop.stt.models import bundled
from voxloop.stt.whisper import TimedSegment, encoder_window
from voxloop.tts import Synthesizer
from voxloop.tts.pacing import paced
from voxloop.tts.sentences import SentenceSplitter

if TYPE_CHECKING:
    from voxloop.server.app import ServerState

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # OpenAI's limit for an audio file
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the small fields beside the file
MAX_JSON_BYTES = 64 * 1024
MAX_INPUT_CHARS = 4096  # OpenAI's limit for the text to speak
TRANSCRIPT_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
SPEEDS = (0.25, 4.0)
NATIVE_SPEEDS = (0.5, 2.0)  # what hibari paces itself; beyond, the audio is time-stretched


class ApiError(Exception):
    """A request refused, with OpenAI's error body and an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def to_dict(self) -> dict[str, Any]:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.to_dict(), self.status, headers=headers)


UNAUTHORIZED = ApiError(
    401,
    "Incorrect API key: pass the token printed by voxloop serve as the API key (Authorization: Bearer …).",
    code="invalid_api_key",
)


@runtime_checkable
class SegmentingTranscriber(Protocol):
    """A transcriber that also says where each piece of a long recording is (Whisper's)."""

    def timed_segments(
        self, audio: np.ndarray, language: str = "", prompt: str = "", temperature: float = 0.0
    ) -> tuple[str, Iterator[TimedSegment]]: ...


class PacedSynthesizer(Protocol):
    """A synthesizer that reads at a given pace itself (hibari's ``speed``)."""

    sample_rate: int

    def synthesize(self, text: str, speed: float = 1.0) -> np.ndarray: ...


# -- requests ---------------------------------------------------------------------------------
async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (by its Content-Length, or while
    it arrives when it has none)."""
    size = f"{limit // 2**20} MB" if limit >= 2**20 else f"{limit // 2**10} KB"
    too_large = ApiError(413, f"{what} is larger than the limit of {size}.", code="too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
    except ClientDisconnect:
        raise ApiError(400, "The client closed the connection before the request was complete.") from None
    return bytes(body)


async def read_form(request: Request) -> FormData:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "Send the audio as multipart/form-data, the recording in a field named `file`.")
    body = await read_body(request, MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES, "The uploaded file")
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=1, max_fields=32)
    except (MultiPartException, HTTPException) as exc:
        detail = exc.detail if isinstance(exc, HTTPException) else exc.message
        raise ApiError(400, f"Malformed multipart form: {detail}.") from None


def _field(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"`{name}` must be a text field, not a file.", name, "invalid_value")
    return value.strip()


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    response_format: str = "json"
    language: str = ""
    prompt: str = ""
    temperature: float = 0.0
    stream: bool = False

    @classmethod
    def from_form(cls, form: FormData) -> TranscriptionRequest:
        fmt = _field(form, "response_format", "json") or "json"
        if fmt not in TRANSCRIPT_FORMATS:
            raise ApiError(
                400,
                f"Unsupported response_format {fmt!r}: use one of {', '.join(TRANSCRIPT_FORMATS)}.",
                "response_format",
                "invalid_value",
            )
        try:
            temperature = float(_field(form, "temperature", "0") or "0")
        except ValueError:
            temperature = math.nan
        if not 0.0 <= temperature <= 1.0:
            raise ApiError(400, "temperature must be a number from 0 to 1.", "temperature", "invalid_value")
        stream = _field(form, "stream", "false").lower() in ("true", "1")
        if stream and fmt not in ("json", "text"):
            raise ApiError(
                400,
                f"stream=true sends transcript.text events; it works with response_format json or text, not {fmt}.",
                "stream",
                "invalid_value",
            )
        language = _field(form, "language").lower()
        return cls(fmt, language, _field(form, "prompt"), temperature, stream)


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    input: str
    response_format: str = "mp3"
    speed: float = 1.0

    @classmethod
    def from_json(cls, body: bytes) -> SpeechRequest:
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(400, "The request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise ApiError(400, "The request body must be a JSON object with `input`, `model` and `voice`.")
        text = data.get("input")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(
                400, "`input` must be the text to speak, a non-empty string.", "input", "invalid_value"
            )
        if len(text) > MAX_INPUT_CHARS:
            raise ApiError(
                400,
                f"`input` is longer than {MAX_INPUT_CHARS} characters.",
                "input",
                "string_above_max_length",
            )
        fmt = data.get("response_format") or "mp3"
        if fmt not in FORMATS:
            raise ApiError(
                400,
                f"Unsupported response_format {fmt!r}: use one of {', '.join(FORMATS)}.",
                "response_format",
                "invalid_value",
            )
        speed = data.get("speed", 1.0)
        if (
            isinstance(speed, bool)
            or not isinstance(speed, (int, float))
            or not SPEEDS[0] <= speed <= SPEEDS[1]
        ):
            raise ApiError(400, "speed must be a number from 0.25 to 4.0.", "speed", "invalid_value")
        if data.get("stream_format", "audio") != "audio":
            raise ApiError(
                400,
                "Only stream_format=audio is supported: the audio itself is streamed as it is made.",
                "stream_format",
                "invalid_value",
            )
        return cls(text, str(fmt), float(speed))


# -- transcription ----------------------------------------------------------------------------
def decode_upload(data: bytes, filename: str) -> np.ndarray:
    """The uploaded file as 16 kHz mono audio, by the same decoders as ``voxloop chat --input``;
    its own name (never the server's temporary path) in the message when it cannot be read."""
    suffix = Path(filename).suffix
    suffix = suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""
    with tempfile.TemporaryDirectory(prefix="voxloop-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return load_audio(path)
        except AudioInputError as exc:
            message = str(exc).replace(str(path), repr(filename))
            raise ApiError(400, message, "file", "invalid_file") from None


def start_segments(
    transcriber: Transcriber, audio: np.ndarray, request: TranscriptionRequest, settings: SttSettings
) -> tuple[str, Iterator[TimedSegment]]:
    """The recording's language and its timed segments, decoded as they are read. A short
    recording whose times nobody asked for takes the live path instead (the encoder on a window
    just longer than it: 2.5 s of speech in ~150 ms, not ~450 ms padded to 30 s), as one segment;
    so does any recording with a transcriber that gives no times (a test fake)."""
    seconds = len(audio) / STT_RATE
    plain = (
        request.response_format in ("json", "text")
        and not request.prompt
        and request.temperature == 0.0
        and request.language in ("", settings.language)
    )
    timed = not (plain and encoder_window(seconds, settings) is not None)
    if timed and isinstance(transcriber, SegmentingTranscriber):
        return transcriber.timed_segments(audio, request.language, request.prompt, request.temperature)
    text = transcriber.transcribe(audio)
    whole = TimedSegment(0, 0, 0.0, seconds, text, (), request.temperature, 0.0, 0.0, 0.0)
    language = request.language or settings.language or str(getattr(transcriber, "language", "") or "en")
    return language, iter([whole] if text else [])


def transcript_response(fmt: str, language: str, segments: list[TimedSegment], duration: float) -> Response:
    text = " ".join(s.text for s in segments)
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    if fmt == "text":
        return PlainTextResponse(text + "\n")
    if fmt == "srt":
        return PlainTextResponse(to_srt(segments))
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(segments), media_type="text/vtt")
    if fmt == "verbose_json":
        return JSONResponse(
            {
                "task": "transcribe",
                "language": language,
                "duration": round(duration, 3),
                "text": text,
                "segments": [segment_dict(s) for s in segments],
                "usage": usage,
            }
        )
    return JSONResponse({"text": text, "usage": usage})


def segment_dict(s: TimedSegment) -> dict[str, Any]:
    return {
        "id": s.id,
        "seek": s.seek,
        "start": round(s.start, 3),
        "end": round(s.end, 3),
        "text": s.text,
        "tokens": list(s.tokens),
        "temperature": s.temperature,
        "avg_logprob": s.avg_logprob,
        "compression_ratio": s.compression_ratio,
        "no_speech_prob": s.no_speech_prob,
    }


def sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def transcript_events(state: ServerState, segments: Iterator[TimedSegment]) -> AsyncIterator[bytes]:
    """``transcript.text.delta`` for each segment as Whisper decodes it, then
    ``transcript.text.done``. The decoding runs in the STT pool and stops when the client goes."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[TimedSegment | Exception | None] = asyncio.Queue()
    gone = threading.Event()

    def put(item: TimedSegment | Exception | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the server's loop has closed
            gone.set()

    def decode() -> None:
        try:
            for segment in segments:
                if gone.is_set():
                    return
                put(segment)
        except Exception as exc:
            log.exception("transcription failed")
            put(exc)
        finally:
            put(None)

    job = loop.run_in_executor(state.stt_pool, decode)
    texts: list[str] = []
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, Exception):
                message = str(item) if isinstance(item, VoxloopError) else "The transcription failed."
                yield sse(ApiError(500, message).to_dict())
                return
            yield sse({"type": "transcript.text.delta", "delta": (" " if texts else "") + item.text})
            texts.append(item.text)
        yield sse({"type": "transcript.text.done", "text": " ".join(texts)})
    finally:
        gone.set()
        job.cancel()


# -- speech -----------------------------------------------------------------------------------
def speech_sentences(text: str) -> list[str]:
    """What is spoken, cut where the voice can start early (the first clause) and then at
    each sentence, as replies are."""
    splitter = SentenceSplitter()
    return [*splitter.feed(text), *splitter.flush()]


def voice(synth: Synthesizer, sentence: str, speed: float) -> np.ndarray:
    """One sentence at ``speed``, followed by the pause its end calls for: paced by the voice
    itself where it can (hibari, 0.5-2.0), time-stretched (pitch kept) for the rest."""
    native = 1.0
    if speed != 1.0 and "speed" in inspect.signature(synth.synthesize).parameters:
        native = min(max(speed, NATIVE_SPEEDS[0]), NATIVE_SPEEDS[1])
        audio = cast(PacedSynthesizer, synth).synthesize(sentence, speed=native)
    else:
        audio = synth.synthesize(sentence)
    rate = synth.sample_rate
    return stretch(paced(audio, rate, sentence), rate, speed / native)


async def speech_audio(
    state: ServerState, sentences: list[str], encoder: Encoder, speed: float
) -> AsyncIterator[bytes]:
    """The encoded audio, sentence by sentence: the next one is synthesized in the TTS pool
    while this one is sent; when the client goes, what is queued is dropped."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()

    def piece(sentence: str) -> bytes:
        return encoder.encode(voice(state.synthesizer, sentence, speed))

    pending: asyncio.Future[bytes] | None = loop.run_in_executor(state.tts_pool, piece, sentences[0])
    try:
        for i in range(len(sentences)):
            assert pending is not None
            data = await pending
            pending = None
            if i + 1 < len(sentences):
                pending = loop.run_in_executor(state.tts_pool, piece, sentences[i + 1])
            if i == 0:
                log.info("speech: first audio after %.0f ms", (time.perf_counter() - started) * 1000)
            if data:
                yield data
        yield await loop.run_in_executor(state.tts_pool, encoder.finish)
    except Exception:
        log.exception("speech synthesis failed; the stream is cut short")
    finally:
        if pending is not None:
            pending.cancel()


# -- models -----------------------------------------------------------------------------------
def stt_model_id(name: str) -> str:
    """``whisper-tiny.en`` for a bundled model; a hub name as given; a folder's own name."""
    if (b := bundled(name)) is not None:
        return f"whisper-{b.name}"
    return Path(name).name if name.startswith(("/", ".", "~")) else name


def model_ids(state: ServerState) -> list[str]:
    ids = [stt_model_id(state.settings.stt.model), f"hibari-{state.settings.tts.voice}"]
    return [*ids, state.chat.model] if state.chat.model else ids


# -- routes -----------------------------------------------------------------------------------
def openai_routes(state: ServerState) -> list[Route]:
    created = int(time.time())

    async def transcriptions(request: Request) -> Response:
        if not state.token_ok(request):
            return UNAUTHORIZED.response()
        loop = asyncio.get_running_loop()
        try:
            form = await read_form(request)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "Missing the audio: send it as a file in the `file` field.", "file")
            options = TranscriptionRequest.from_form(form)
            data = await upload.read()
            filename = upload.filename or "file"
            await form.close()
            started = time.perf_counter()
            audio = await loop.run_in_executor(state.stt_pool, decode_upload, data, filename)
            language, found = await loop.run_in_executor(
                state.stt_pool, start_segments, state.transcriber, audio, options, state.settings.stt
            )
        except ApiError as exc:
            return exc.response()
        except VoxloopError as exc:  # a language the model does not know
            return ApiError(400, str(exc), "language", "invalid_value").response()
        if options.stream:
            headers = {"Cache-Control": "no-cache"}
            return StreamingResponse(
                transcript_events(state, found), media_type="text/event-stream", headers=headers
            )
        try:
            segments = await loop.run_in_executor(state.stt_pool, list, found)
        except Exception:
            log.exception("transcription failed")
            return ApiError(500, "The transcription failed; the server log says why.").response()
        duration = len(audio) / STT_RATE
        log.info(
            "transcribed %.1f s of audio in %.0f ms",
            duration,
            (time.perf_counter() - started) * 1000,
        )
        return transcript_response(options.response_format, language, segments, duration)

    async def speech(request: Request) -> Response:
        if not state.token_ok(request):
            return UNAUTHORIZED.response()
        try:
            options = SpeechRequest.from_json(await read_body(request, MAX_JSON_BYTES, "The request"))
            sentences = speech_sentences(options.input)
            if not sentences:
                raise ApiError(400, "`input` has nothing to speak (only symbols).", "input", "invalid_value")
            try:
                encoder = encoder_for(options.response_format, state.synthesizer.sample_rate)
            except ValueError as exc:
                raise ApiError(400, str(exc), "response_format", "invalid_value") from None
        except ApiError as exc:
            return exc.response()
        return StreamingResponse(
            speech_audio(state, sentences, encoder, options.speed), media_type=encoder.media_type
        )

    async def models(request: Request) -> Response:
        if not state.token_ok(request):
            return UNAUTHORIZED.response()
        data = [
            {"id": i, "object": "model", "created": created, "owned_by": "voxloop"} for i in model_ids(state)
        ]
        return JSONResponse({"object": "list", "data": data})

    return [
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ]
