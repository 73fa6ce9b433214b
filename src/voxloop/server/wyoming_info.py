"""What the Wyoming server's ``describe`` answers: one program of each kind (``asr``, ``tts``,
``handle``), all named ``voxloop`` and installed. Home Assistant makes one entity of each, and
reads the ASR and handle models' ``languages`` and the TTS program's ``voices`` (not ``models``).
"""

from __future__ import annotations

from pathlib import Path

from wyoming.info import (
    AsrModel,
    AsrProgram,
    Attribution,
    HandleModel,
    HandleProgram,
    Info,
    TtsProgram,
    TtsVoice,
)

from voxloop import __version__
from voxloop.settings import Settings

WEBSITE = ""  # Attribution.url is required; voxloop has no public home page to name


def _stt_name(settings: Settings) -> str:
    from voxloop.stt.models import bundled

    found = bundled(settings.stt.model)
    return found.name if found is not None else Path(settings.stt.model).name or settings.stt.model


def build_info(settings: Settings, languages: list[str], model: str, streaming: bool) -> Info:
    """The ``info``: ``languages`` are what Whisper listens for, ``model`` the LLM's name."""
    voxloop = Attribution(name="voxloop", url=WEBSITE)
    stt = _stt_name(settings)
    return Info(
        asr=[
            AsrProgram(
                name="voxloop",
                description=f"voxloop speech to text (faster-whisper {stt})",
                attribution=voxloop,
                installed=True,
                version=__version__,
                models=[
                    AsrModel(
                        name=stt,
                        description=f"Whisper {stt}, int8",
                        attribution=Attribution(
                            name="OpenAI Whisper, faster-whisper",
                            url="https://github.com/SYSTRAN/faster-whisper",
                        ),
                        installed=True,
                        version=None,
                        languages=languages,
                    )
                ],
                supports_transcript_streaming=streaming,
                requires_external_vad=True,  # the client says when the command ends (audio-stop)
            )
        ],
        tts=[
            TtsProgram(
                name="voxloop",
                description="voxloop voice (hibari)",
                attribution=voxloop,
                installed=True,
                version=__version__,
                voices=[
                    TtsVoice(
                        name=settings.tts.voice,
                        description=f"hibari {settings.tts.voice}",
                        attribution=Attribution(name="hibari", url="https://github.com/MMWilliams/hibari"),
                        installed=True,
                        version=None,
                        languages=["en"],  # hibari reads English
                    )
                ],
                supports_synthesize_streaming=streaming,
            )
        ],
        handle=[
            HandleProgram(
                name="voxloop",
                description="voxloop conversation agent (a local LLM)",
                attribution=voxloop,
                installed=True,
                version=__version__,
                models=[
                    HandleModel(
                        name=model,
                        description=f"{model}, with voxloop's system prompt",
                        attribution=voxloop,
                        installed=True,
                        version=None,
                        languages=["en"],  # the system prompt asks for English answers
                    )
                ],
                supports_handled_streaming=streaming,
                supports_home_control=False,
            )
        ],
    )
