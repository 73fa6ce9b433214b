"""The reference design's loop, exactly, on an audio clock: the baseline voxloop is measured against.

webrtcvad mode 3 on 30 ms frames, 1.0 s of silence ends a turn, turns under 2.0 s of voiced
audio are dropped, faster-whisper's default ``transcribe(audio, language="en")``, then one
blocking chat request (user message only, ``max_tokens`` 128) whose reply text is printed. While
it transcribes and waits for the reply it reads no audio, as the reference's single loop does.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from voxloop.audio.sources import RealtimeSource
from voxloop.events import SpeechEnded
from voxloop.vad.reference import ReferenceEndpointer


@dataclass(frozen=True, slots=True)
class ReferenceTurn:
    user: str
    reply: str
    start_s: float
    end_s: float  # VAD end of speech
    endpoint_at_s: float
    stt_ms: float
    llm_ms: float
    reply_at_s: float  # audio clock: when the reply text was printed


def _transcribe(whisper: Any, audio: Any) -> str:
    segments, _ = whisper.transcribe(audio, language="en")
    return " ".join(seg.text.strip() for seg in segments).strip()


def _ask(url: str, model: str, text: str) -> str:
    response = httpx.post(
        url + "/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 128},
        timeout=120,
    )
    result = response.json()
    if "choices" not in result:
        return f"Error from the LLM: {result.get('error', 'unknown error')}"
    return str(result["choices"][0]["message"]["content"]).strip()


async def run_reference(source: RealtimeSource, whisper: Any, url: str, model: str) -> list[ReferenceTurn]:
    """``whisper`` is a faster_whisper.WhisperModel (the same weights voxloop uses)."""
    endpointer = ReferenceEndpointer()
    turns: list[ReferenceTurn] = []
    async for block in source.blocks():
        assert source.started_at is not None
        for event in endpointer.feed(block):
            if not isinstance(event, SpeechEnded):
                continue
            t0 = time.perf_counter()
            text = await asyncio.to_thread(_transcribe, whisper, event.audio)
            t1 = time.perf_counter()
            reply = await asyncio.to_thread(_ask, url, model, text)
            t2 = time.perf_counter()
            turns.append(
                ReferenceTurn(
                    user=text,
                    reply=reply,
                    start_s=event.start_s,
                    end_s=event.end_s,
                    endpoint_at_s=event.endpoint_at_s,
                    stt_ms=(t1 - t0) * 1000,
                    llm_ms=(t2 - t1) * 1000,
                    reply_at_s=t2 - source.started_at,
                )
            )
    return turns
