"""hibari: a 7.9 MB English voice at 24 kHz, over 100x real time on one core."""

from __future__ import annotations

import logging
import re

import numpy as np

from voxloop.errors import ModelNotFoundError
from voxloop.settings import TtsSettings

log = logging.getLogger(__name__)

# hibari's number reader names scales up to decillion (36 digits) and raises beyond; a person
# reads a number that long digit by digit anyway. Counted in digits, grouping commas aside.
_NUMBER = re.compile(r"\d[\d,]*\d")
LONGEST_NUMBER_DIGITS = 18


def respell_numbers(text: str, longest: int = LONGEST_NUMBER_DIGITS) -> str:
    """Numbers of more than ``longest`` digits as their digits, one by one."""

    def digits(m: re.Match[str]) -> str:
        found = [c for c in m.group() if c.isdigit()]
        return " ".join(found) if len(found) > longest else m.group()

    return _NUMBER.sub(digits, text)


def voice_model(voice: str) -> str:
    """The voice's ONNX file on disk: the bundled one ("heart") verified against its pinned
    sha256 (:mod:`voxloop.tts.models`), another as it is in hibari's cache (not pinned).

    hibari would download other voices on first use; voxloop never reaches for the network.
    """
    from hibari.voices import VOICES, cache_dir, voice_path

    from voxloop.tts import models

    if voice not in VOICES:
        raise ModelNotFoundError(f"Unknown voice {voice!r}. Voices: {', '.join(VOICES)}.")
    if (pinned := models.bundled(voice)) is not None:
        return str(models.voice(pinned))
    try:
        return str(voice_path(voice, download_missing=False))
    except FileNotFoundError:
        raise ModelNotFoundError(
            f"Voice {voice!r} is not on this machine (looked in {cache_dir()}). Copy its ONNX file "
            "there, or use the bundled voice: --voice heart."
        ) from None


class HibariSynthesizer:
    def __init__(self, settings: TtsSettings) -> None:
        try:
            from hibari import Hibari
        except ImportError:
            raise ModelNotFoundError(
                "hibari-tts is not installed. Run: pip install hibari-tts==0.2.1"
            ) from None
        self.settings = settings
        self.tts = Hibari(voice=settings.voice, model=voice_model(settings.voice), threads=settings.threads)
        self.sample_rate = int(self.tts.sample_rate)

    def warm_up(self) -> None:
        self.synthesize("Ready.")

    def synthesize(self, text: str, speed: float = 1.0) -> np.ndarray:
        """The text's audio, ``speed`` times the configured pace. A piece hibari cannot read is
        read again with every number spelled digit by digit, and failing that is skipped (empty
        audio), never the end of a turn."""
        for attempt in (respell_numbers(text), respell_numbers(text, longest=1)):
            try:
                return self._voice(attempt, speed)
            except Exception:
                log.debug("hibari could not read %r", attempt, exc_info=True)
        log.warning("the voice could not read %r; skipped", text[:80])
        return np.zeros(0, np.float32)

    def _voice(self, text: str, speed: float = 1.0) -> np.ndarray:
        seed = self.settings.seed if self.settings.seed >= 0 else None
        pace = self.settings.speed * speed
        return np.asarray(self.tts(text, speed=pace, seed=seed), dtype=np.float32)
