"""The bundled hibari voice, pinned and verified like the Whisper models and the LLM presets.

hibari-tts ships one voice ("heart", 7.9 MB of ONNX) with the grapheme-to-phoneme model it reads
unknown words with; voxloop depends on hibari-tts at an exact version and checks both files'
sha256 before first use, the result cached by size and mtime (:mod:`voxloop.packaged`). Other
voices are fetched by hibari into its own cache (checked by hibari when it downloads them);
voxloop uses one a user put there as it is, not pinned.
"""

from __future__ import annotations

from pathlib import Path

from voxloop.packaged import Bundle, Part, ready

# fmt: off
HEART = Bundle(
    name="heart", title="hibari voice heart (Kokoro af_heart)", file="hibari/hibari.onnx",
    version="0.2.1", size=7_936_868,
    sha256="5f70741d4e900f4e85d0037498736cc1b3e1b9a63a13546a5da1e63abf4fccd8",
    parts=(Part("hibari-tts", 7_936_868, "5f70741d4e900f4e85d0037498736cc1b3e1b9a63a13546a5da1e63abf4fccd8",
                "assets/hibari.onnx", imports="hibari"),),
    license="Apache-2.0",  # hibari's and Kokoro's licence; the text comes with hibari-tts
    extra="", kind="TTS voice", flag="--voice",
    extras=(
        # the model that spells out words its lexicon lacks (American voices), and the phoneme ids
        Part("hibari-tts", 2_975_020, "d3cfd8122c5f172a98c8de38268bf1213ee09f2c2ae4df6e055fc6532590fe76", "assets/oov.onnx", imports="hibari"),
        Part("hibari-tts", 1_144, "70abefbe8a1c8865e43e0a43bbdc25b91a33e4aa053479d443ccf23e20a59e5d", "assets/vocab.json", imports="hibari"),
    ),
)
# fmt: on

BUNDLED: dict[str, Bundle] = {"heart": HEART}


def bundled(voice: str) -> Bundle | None:
    """The pinned bundle for a voice, or None for one hibari keeps in its cache (not pinned)."""
    return BUNDLED.get(voice)


def voice(b: Bundle) -> Path:
    """The voice's ONNX file, verified (ModelNotFoundError naming the reinstall otherwise)."""
    return ready(b)
