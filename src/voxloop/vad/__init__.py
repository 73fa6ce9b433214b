"""Voice activity detection and endpointing: when a turn starts and when it is over."""

from __future__ import annotations

import dataclasses

from voxloop.settings import VadSettings
from voxloop.vad.base import Endpointer


def make_endpointer(settings: VadSettings, sample_rate: int = 16000) -> Endpointer:
    """voxloop's Silero endpointer, or the reference design's webrtcvad loop (``--vad webrtc``)."""
    if settings.engine == "webrtc":
        from voxloop.vad.reference import REFERENCE, ReferenceEndpointer

        # Fields left at voxloop's defaults take the reference's values (1.0 s, 2.0 s minimum).
        defaults = VadSettings()
        changes = {
            name: getattr(REFERENCE, name)
            for name in ("end_silence_ms", "min_speech_ms", "min_utterance_ms")
            if getattr(settings, name) == getattr(defaults, name)
        }
        return ReferenceEndpointer(dataclasses.replace(settings, **changes), sample_rate)
    from voxloop.vad.endpointer import SileroEndpointer

    return SileroEndpointer(settings, sample_rate)


__all__ = ["Endpointer", "make_endpointer"]
