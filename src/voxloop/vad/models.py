"""The Silero VAD model, pinned and verified like the Whisper models and the LLM presets.

Silero VAD v6 (ONNX, 1.2 MB, MIT) ships inside faster-whisper, which voxloop depends on at an
exact version; voxloop loads it from there, its sha256 checked before first use and the result
cached by size and mtime (:mod:`voxloop.packaged`).
"""

from __future__ import annotations

from pathlib import Path

from voxloop.packaged import Bundle, Part, ready

# fmt: off
SILERO = Bundle(
    name="silero", title="Silero VAD v6", file="silero-vad/silero_vad_v6.onnx", version="1.2.1",
    size=1_245_151, sha256="4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
    parts=(Part("faster-whisper", 1_245_151,
                "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2", "assets/silero_vad_v6.onnx"),),
    license="MIT",  # silero-vad's licence; the file and its notice come with faster-whisper
    extra="", kind="VAD model", flag="--vad",
)
# fmt: on

BUNDLED: dict[str, Bundle] = {"silero": SILERO}


def silero() -> Path:
    """The Silero VAD ONNX file, verified (ModelNotFoundError naming the reinstall otherwise)."""
    return ready(SILERO)
