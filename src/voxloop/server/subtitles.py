"""Timed transcript segments as SubRip (.srt) and WebVTT (.vtt) subtitles, as OpenAI's
transcription endpoint returns them for ``response_format=srt`` and ``vtt``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Timed(Protocol):
    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float: ...

    @property
    def text(self) -> str: ...


def timestamp(seconds: float, decimal: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or, with ``decimal="."``, ``HH:MM:SS.mmm`` (WebVTT)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def to_srt(segments: Iterable[Timed]) -> str:
    """Numbered cues from 1, a blank line after each."""
    return "".join(
        f"{i}\n{timestamp(s.start)} --> {timestamp(s.end)}\n{s.text.strip()}\n\n"
        for i, s in enumerate(segments, start=1)
    )


def to_vtt(segments: Iterable[Timed]) -> str:
    """The ``WEBVTT`` line, then one cue per segment."""
    cues = "".join(
        f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text.strip()}\n\n" for s in segments
    )
    return "WEBVTT\n\n" + cues
