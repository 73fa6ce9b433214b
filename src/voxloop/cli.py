"""voxloop's command line: parse flags, build settings, call app code, print errors on one line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxloop import __version__
from voxloop.errors import VoxloopError
from voxloop.llm.deploy import DEFAULT_PROFILE, PROFILES
from voxloop.printer import make_printer
from voxloop.settings import BENCHMARKS, Settings, default_config_path, load_settings

if TYPE_CHECKING:
    from voxloop.server.wyoming import WyomingOptions

log = logging.getLogger("voxloop")


def _home(path: Path) -> str:
    """``path`` as a user writes it: ``~/…`` under the home folder."""
    with contextlib.suppress(ValueError):
        return f"~/{path.relative_to(Path.home())}"
    return str(path)


def _relative(path: Path) -> str:
    """``path`` from the current folder when it is under it (the repository's benchmarks/)."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML settings file (default {_home(default_config_path())})",
    )
    p.add_argument("--debug", action="store_true", default=None, help="log details and show tracebacks")


def _stt_model_default() -> str:
    """The Whisper model used when none is named: the bundled one the empty name stands for."""
    from voxloop.stt.models import ALIASES

    model = Settings().stt.model
    return ALIASES.get(model, model)


def _stt_flags(p: argparse.ArgumentParser) -> None:
    defaults = Settings()
    p.add_argument(
        "--stt-model",
        metavar="NAME|DIR",
        help="bundled tiny.en (English) or base (multilingual), or a faster-whisper model folder "
        f"(default {_stt_model_default()})",
    )
    p.add_argument(
        "--language", metavar="CODE",
        help=f"what the user speaks (default {defaults.stt.language}): en, de, fr, ... or '' to detect "
        "it (needs --stt-model base)",
    )  # fmt: skip
    p.add_argument(
        "--stt-allow-download", action="store_true", default=None,
        help="allow --stt-model to be a model name fetched from the Hugging Face hub",
    )  # fmt: skip
    p.add_argument(
        "--vad",
        choices=["silero", "webrtc"],
        help=f"endpointing: silero, or webrtc for the reference webrtcvad (default {defaults.vad.engine})",
    )
    p.add_argument(
        "--end-silence-ms", type=int, metavar="MS",
        help=f"silence that ends a turn (default {defaults.vad.end_silence_ms})",
    )  # fmt: skip


def _turn_flag(p: argparse.ArgumentParser) -> None:
    default = "on" if Settings().vad.turn_model else "off"
    p.add_argument(
        "--turn-model", action=argparse.BooleanOptionalAction, default=None,
        help=f"let the turn model (Smart Turn v3.2) set the endpoint wait (default {default}; as "
        "rarely cuts a pause mid-phrase and ends a sure turn in ~0.2 s, but waits 1.6 s on a turn "
        "it is unsure of; see voxloop bench --endpointing)",
    )  # fmt: skip


def _preset_flag(p: argparse.ArgumentParser) -> None:
    from voxloop.llm.models import PRESETS

    names = ", ".join(f"{n} = {m.title}" for n, m in PRESETS.items())
    p.add_argument(
        "--llm-preset", choices=list(PRESETS), metavar="NAME",
        help=f"the embedded model: {names} (default {Settings().llm.preset})",
    )  # fmt: skip


def _tools_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tools", dest="model_calls", choices=["auto", "on", "off"], default=None,
        help="offer the LLM the clock, the calculator and timers to call: on, off, or auto for a "
        f"server of your own whose model knows tools (default {Settings().tools.model_calls}); "
        "plain requests are answered from the words on any model",
    )  # fmt: skip
    p.add_argument(
        "--no-tools", dest="tools_enabled", action="store_false", default=None,
        help="no clock, calculator, timers or plugins at all",
    )  # fmt: skip


def _served_llm_flags(p: argparse.ArgumentParser, system: str) -> None:
    """The LLM of a server voxloop runs for others (`serve`, `wyoming`)."""
    p.add_argument(
        "--llm-url", action="append", metavar="URL", help="OpenAI-compatible server(s) (default: embedded)"
    )
    p.add_argument("--llm-model", metavar="NAME", help="model name on the server")
    _preset_flag(p)
    p.add_argument("--system", metavar="TEXT", help=system)


def _parser() -> argparse.ArgumentParser:
    from voxloop.bench.sessions import DEFAULT_PROTOCOLS, DEFAULT_ROUNDS, PROTOCOLS

    defaults = Settings()  # the help states the settings' own defaults, so the two cannot drift
    parser = argparse.ArgumentParser(
        prog="voxloop", description="A real-time, fully offline voice assistant."
    )
    parser.add_argument("--version", action="version", version=f"voxloop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    chat = sub.add_parser("chat", help="talk with the assistant (microphone, or --input FILE)")
    chat.add_argument(
        "--input",
        "-i",
        metavar="FILE",
        help="a recording (WAV/FLAC/OGG/MP3) instead of the microphone",
    )
    chat.add_argument(
        "--realtime", action="store_true",
        help="feed --input at speech speed, as a microphone would (for latency measurements)",
    )  # fmt: skip
    chat.add_argument(
        "--llm-url", action="append", metavar="URL",
        help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (default: embedded llama.cpp)",
    )  # fmt: skip
    chat.add_argument(
        "--llm-model", metavar="NAME", help="model name on the server (default: the first it lists)"
    )
    _preset_flag(chat)
    chat.add_argument("--system", metavar="TEXT", help="system prompt")
    chat.add_argument(
        "--max-tokens", type=int, metavar="N",
        help=f"longest reply in tokens (default {defaults.llm.max_tokens})",
    )  # fmt: skip
    chat.add_argument(
        "--no-speak",
        action="store_true",
        default=None,
        help="do not play replies (still synthesized)",
    )
    chat.add_argument("--voice", metavar="NAME", help=f"TTS voice (default {defaults.tts.voice})")
    chat.add_argument("--output-dir", "-o", metavar="DIR", help="save reply WAVs and conversation.jsonl here")
    chat.add_argument("--json", action="store_true", default=None, help="one JSON object per line on stdout")
    _stt_flags(chat)
    _turn_flag(chat)
    _tools_flag(chat)
    _common(chat)

    tr = sub.add_parser("transcribe", help="print what is said in a recording")
    tr.add_argument("file", metavar="FILE")
    tr.add_argument("--json", action="store_true", default=None, help="one JSON object per utterance")
    _stt_flags(tr)
    _common(tr)

    say = sub.add_parser("say", help="speak text, or write it to a WAV with -o")
    say.add_argument("text", metavar="TEXT")
    say.add_argument("-o", "--output", metavar="FILE.wav", help="write a WAV instead of playing")
    say.add_argument("--voice", metavar="NAME", help=f"TTS voice (default {defaults.tts.voice})")
    _common(say)

    llm = sub.add_parser("llm", help="the embedded LLM server: start, status, stop, prepare")
    llm_sub = llm.add_subparsers(dest="llm_command", required=True, metavar="ACTION")
    start = llm_sub.add_parser("start", help="start the embedded server in the background")
    start.add_argument("--port", type=int, help=f"port on 127.0.0.1 (default {defaults.llm.port})")
    start.add_argument(
        "--model", metavar="PATH",
        help="llamacpp: a GGUF file (default: the --llm-preset's); vllm: a Hugging Face model folder "
        "(default: SmolLM2-135M-Instruct)",
    )  # fmt: skip
    start.add_argument("--engine", choices=["llamacpp", "vllm"], default="llamacpp", help="server engine")
    _preset_flag(start)
    start.add_argument(
        "--profile", metavar="NAME",
        help=f"vllm: {', '.join(PROFILES)} (default {DEFAULT_PROFILE}; the others are the reference GPU flags)",
    )  # fmt: skip
    _common(start)
    for name, text in (("status", "show the running server"), ("stop", "stop the running server")):
        _common(llm_sub.add_parser(name, help=text))
    prepare = llm_sub.add_parser(
        "prepare", help="join, check and re-pack the embedded model now (else the first chat does it)"
    )
    _preset_flag(prepare)
    _common(prepare)

    bench = sub.add_parser("bench", help="latency: voxloop vs the reference pipeline on the same recordings")
    bench.add_argument(
        "--set", metavar="DIR", help=f"recordings + manifest.json (default {_relative(BENCHMARKS / 'set')})"
    )
    bench.add_argument(
        "--llm-url", action="append", metavar="URL", help="server both pipelines use (default: embedded)"
    )
    bench.add_argument("--llm-model", metavar="NAME", help="model name on the server")
    _preset_flag(bench)
    bench.add_argument(
        "--limit", type=int, metavar="N",
        help="only the first N recordings (with --sessions: N rounds at each level, default "
        f"{DEFAULT_ROUNDS})",
    )  # fmt: skip
    bench.add_argument("--plot", metavar="OUT.png", help="draw the per-stage comparison")
    bench.add_argument(
        "--sessions", metavar="N,N,…",
        help="instead: N clients at once against one `voxloop serve` (e.g. 1,2,4,8), first-audio latency",
    )  # fmt: skip
    bench.add_argument(
        "--protocols", metavar="NAME,NAME,…",
        help=f"with --sessions: the clients' protocols, taken in turn ({', '.join(PROTOCOLS)}; "
        f"default {DEFAULT_PROTOCOLS[0]}); the latencies per protocol, at the same load",
    )  # fmt: skip
    bench.add_argument(
        "--no-reference", action="store_true", help="voxloop only (to compare voxloop's own settings)"
    )
    bench.add_argument(
        "--load", metavar="N,N,…",
        help="instead: N concurrent conversations per server (e.g. 1,2,4,8), time to first token",
    )  # fmt: skip
    bench.add_argument(
        "--quality", action="store_true",
        help="instead: heard, answered right, memory and latency per configuration (benchmarks/quality)",
    )  # fmt: skip
    bench.add_argument(
        "--turns", type=int, metavar="N",
        help="instead: one conversation of N questions (a question every ~8 s): first audio and memory per 10 turns",
    )  # fmt: skip
    bench.add_argument(
        "--soak", type=int, nargs="?", const=500, metavar="N",
        help="the same as --turns, %(const)s questions unless N is given (~75 min): does anything grow?",
    )  # fmt: skip
    bench.add_argument(
        "--stt", metavar="MODEL,MODEL,…",
        help="instead: WER and time of Whisper models (e.g. tiny.en,base) on benchmarks/quality's turns",
    )  # fmt: skip
    bench.add_argument(
        "--beams", default=str(defaults.stt.beam_size), metavar="N,N,…",
        help="with --stt: beam sizes (default %(default)s)",
    )  # fmt: skip
    bench.add_argument(
        "--decoders", default="window", metavar="window,30s",
        help="with --stt: voxloop's short encoder windows and/or Whisper's own 30 s (default %(default)s)",
    )  # fmt: skip
    bench.add_argument(
        "--endpointing", action="store_true",
        help="instead: endpoint wait on finished questions, cut-offs on mid-phrase pauses "
        "(benchmarks/pauses) and first audio, with the turn model on and off (with "
        "--interruptions: both in one run)",
    )  # fmt: skip
    bench.add_argument(
        "--interruptions", action="store_true",
        help="instead: how often a cough, an \"okay\" or an interruption over a reply is judged "
        "right, with headphones and through the echo canceller (no LLM needed)",
    )  # fmt: skip
    _turn_flag(bench)
    bench.add_argument(
        "--presets", metavar="NAME,NAME,…",
        help="with --quality: the embedded presets to compare in one run (e.g. tiny,small,base)",
    )  # fmt: skip
    bench.add_argument("--json", action="store_true", default=None, help="results as one JSON object")
    _tools_flag(bench)
    _common(bench)

    srv = sub.add_parser("serve", help="the voice web page: many conversations at once in browser tabs")
    srv.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default %(default)s; others need a token)"
    )
    srv.add_argument(
        "--port", dest="serve_port", type=int, default=8080, help="port (default %(default)s)"
    )  # not the LLM's port
    srv.add_argument("--token", help="access token (generated and printed when --host is not loopback)")
    srv.add_argument(
        "--allow-origin", action="append", default=[], metavar="URL", help="another allowed page origin"
    )
    srv.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME",
        help="a host name the page is opened by, besides loopback and --host (e.g. voice.lan)",
    )  # fmt: skip
    srv.add_argument(
        "--https", action=argparse.BooleanOptionalAction, default=None,
        help="serve over TLS, which browsers on other devices need to allow the microphone "
        "(default: when --host is not loopback; the certificate comes from voxloop's own local CA)",
    )  # fmt: skip
    srv.add_argument("--cert", metavar="FILE", help="with --https: a PEM certificate (chain) of your own")
    srv.add_argument("--key", metavar="FILE", help="with --https: the unencrypted PEM private key of --cert")
    _wyoming_flag(srv)
    _served_llm_flags(srv, "system prompt")
    _tools_flag(srv)
    _common(srv)

    _wyoming_parser(sub)

    doctor = sub.add_parser("doctor", help="check installation, models, LLM and sound devices")
    doctor.add_argument("--llm-url", action="append", metavar="URL", help="also check this server")
    doctor.add_argument(
        "--json", action="store_true", default=None,
        help="one JSON object: every model file voxloop would load (path, size, package, sha256) and the checks",
    )  # fmt: skip
    _preset_flag(doctor)
    _common(doctor)
    return parser


def _wyoming_flag(p: argparse.ArgumentParser) -> None:
    from voxloop.server.wyoming import DEFAULT_PORT

    p.add_argument(
        "--wyoming", type=int, nargs="?", const=DEFAULT_PORT, metavar="PORT",
        help=f"also serve Home Assistant's Wyoming protocol on PORT (default {DEFAULT_PORT}) at --host, "
        "on the same models; Wyoming has no authentication: the token does not cover it",
    )  # fmt: skip


def _wyoming_parser(sub: Any) -> None:
    from voxloop.server.wyoming import WyomingOptions

    defaults = WyomingOptions()
    wy = sub.add_parser(
        "wyoming", help="speech to text, voice and conversation agent for Home Assistant (Wyoming protocol)"
    )
    wy.add_argument(
        "--host", default=defaults.host,
        help=f"address to bind (default {defaults.host}; Wyoming has no authentication: any other "
        "address lets everyone who reaches it use voxloop)",
    )  # fmt: skip
    wy.add_argument(
        "--port", dest="wyoming_port", type=int, default=defaults.port, metavar="PORT",
        help=f"port (default {defaults.port})",
    )  # fmt: skip
    wy.add_argument(
        "--zeroconf", nargs="?", const="", metavar="NAME",
        help="announce it on the LAN over mDNS (_wyoming._tcp) for Home Assistant to discover "
        "(default name voxloop-HOSTNAME; needs --host and pip install 'voxloop[zeroconf]')",
    )  # fmt: skip
    wy.add_argument(
        "--no-streaming", action="store_true",
        help="answer in the one-shot forms only (no transcript-, synthesize- or handled- streams)",
    )  # fmt: skip
    _served_llm_flags(wy, "system prompt of the conversation agent")
    wy.add_argument(
        "--stt-model", metavar="NAME|DIR",
        help=f"bundled tiny.en or base, or a faster-whisper model folder (default {_stt_model_default()})",
    )  # fmt: skip
    wy.add_argument(
        "--language", metavar="CODE", help=f"what the users speak (default {Settings().stt.language})"
    )
    wy.add_argument("--voice", metavar="NAME", help=f"TTS voice (default {Settings().tts.voice})")
    _common(wy)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags the user gave, in the settings file's shape."""
    mapping: dict[str, tuple[str, str]] = {
        "llm_url": ("llm", "urls"),
        "llm_model": ("llm", "model"),
        "llm_preset": ("llm", "preset"),
        "max_tokens": ("llm", "max_tokens"),
        "port": ("llm", "port"),
        "stt_model": ("stt", "model"),
        "stt_allow_download": ("stt", "allow_download"),
        "language": ("stt", "language"),
        "vad": ("vad", "engine"),
        "end_silence_ms": ("vad", "end_silence_ms"),
        "voice": ("tts", "voice"),
        "model_calls": ("tools", "model_calls"),
        "tools_enabled": ("tools", "enabled"),
        "output_dir": ("output", "output_dir"),
        "json": ("output", "json"),
        "debug": ("output", "debug"),
    }
    tree: dict[str, Any] = {}
    for flag, (section, key) in mapping.items():
        value = getattr(args, flag, None)
        if value is not None:
            tree.setdefault(section, {})[key] = value
    if getattr(args, "no_speak", None):
        tree.setdefault("tts", {})["speak"] = False
    if getattr(args, "turn_model", None) is not None:
        tree.setdefault("vad", {})["turn_model"] = args.turn_model
    if getattr(args, "system", None) is not None:
        tree["system_prompt"] = args.system
    return tree


# -- commands -----------------------------------------------------------------------------------
def cmd_chat(args: argparse.Namespace, settings: Settings) -> int:
    from voxloop.app import chat, failed

    printer = make_printer(settings.output.json)
    turns = asyncio.run(chat(settings, printer, args.input, realtime=args.realtime))
    if not turns:
        printer.info("No speech was heard" + (f" in {args.input}." if args.input else "."))
    return failed(turns)


def cmd_transcribe(args: argparse.Namespace, settings: Settings) -> int:
    from voxloop.app import transcribe

    items = transcribe(settings, args.file)
    for event, heard in items:
        if settings.output.json:  # where in the file, beside the transcript's own fields
            where = {"start_s": round(event.start_s, 3), "end_s": round(event.end_s, 3)}
            print(json.dumps({**heard.to_dict(), **where}))
        else:
            print(heard.text)
    if not items:
        print("No speech was heard in " + args.file + ".", file=sys.stderr)
    return 0


def cmd_say(args: argparse.Namespace, settings: Settings) -> int:
    from voxloop.app import say

    path = say(settings, args.text, args.output)
    if path:
        print(path)
    return 0


def cmd_llm(args: argparse.Namespace, settings: Settings) -> int:
    from voxloop.llm import server

    if args.llm_command == "start":
        running = server.read_state()
        if running is not None:
            print(f"Already running: {running.url} ({running.engine}, {running.model}, pid {running.pid})")
            return 0

        def progress(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        progress(f"Starting {args.engine}…")
        info, _proc = server.start_server(
            settings.llm,
            port=args.port or settings.llm.port,
            model=args.model,
            engine=args.engine,
            profile_name=args.profile,
            progress=progress,
        )
        server.save_state(info)
        print(info.url)
        return 0
    if args.llm_command == "prepare":
        print(server.embedded_gguf(settings.llm, lambda line: print(line, file=sys.stderr, flush=True)))
        return 0
    if args.llm_command == "status":
        running = server.read_state()
        if running is None:
            print("Not running. Start it with: voxloop llm start")
            return 3
        state = "ready" if server.answers(running.url) else "not answering"
        print(
            f"{running.engine} {running.model} at {running.url} (pid {running.pid}, {state}); log {running.log}"
        )
        return 0
    stopped = server.stop_server()
    print(f"Stopped {stopped.url}" if stopped else "Not running.")
    return 0


def _bench_set(args: argparse.Namespace, name: str, installed: Path) -> Path:
    """--set, else ``benchmarks/<name>`` in the current folder (a checkout), else the installed one."""
    local = Path("benchmarks") / name
    return Path(args.set) if args.set else (local if local.is_dir() else installed)


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from voxloop.app import llm_urls
    from voxloop.bench import DEFAULT_SET, run_bench, table, to_json
    from voxloop.printer import HumanPrinter

    if args.protocols and not args.sessions:
        from voxloop.errors import ConfigError

        raise ConfigError(
            "--protocols goes with --sessions: e.g. --sessions 1,2 --protocols voxloop,wyoming."
        )
    if args.load:
        return _bench_load(args, settings)
    if args.quality:
        return _bench_quality(args, settings)
    if args.soak:
        args.turns = args.soak
    if args.turns:
        return _bench_long(args, settings)
    if args.stt:
        return _bench_stt(args, settings)
    if args.endpointing or args.interruptions:
        return _bench_turn_taking(args, settings)
    folder = _bench_set(args, "set", DEFAULT_SET)
    if args.sessions:
        return _bench_sessions(args, settings, folder)
    printer = HumanPrinter()
    with llm_urls(settings, printer) as urls:
        turns, summary = run_bench(
            settings, urls[0], folder, args.limit, printer.info, reference=not args.no_reference
        )
    if settings.output.json:
        print(to_json(turns, summary))
    else:
        print(table(summary))
    if args.plot:
        from voxloop.bench.plot import plot

        printer.info(f"plot: {plot(summary, Path(args.plot))}")
    return 0


def _bench_quality(args: argparse.Namespace, settings: Settings) -> int:
    from voxloop.bench.quality import (
        DEFAULT_QUALITY_SET,
        Config,
        plot_quality,
        preset_configs,
        quality_table,
        run_quality,
    )
    from voxloop.printer import HumanPrinter

    folder = _bench_set(args, "quality", DEFAULT_QUALITY_SET)
    if settings.llm.urls:
        configs = [Config(url, settings, url) for url in settings.llm.urls]
    else:  # an unknown name is a ConfigError from the settings, naming the presets
        names = [n.strip() for n in (args.presets or settings.llm.preset).split(",") if n.strip()]
        configs = preset_configs(settings, names)
    printer = HumanPrinter()
    results = run_quality(configs, folder, args.limit, printer.info)
    print(json.dumps(results, default=str) if settings.output.json else quality_table(results))
    if args.plot:
        printer.info(f"plot: {plot_quality(results, Path(args.plot))}")
    return 0


def _bench_turn_taking(args: argparse.Namespace, settings: Settings) -> int:
    """``--endpointing`` and/or ``--interruptions``; with both, one run and one report: when a
    turn ends, and what a sound over the reply does to it."""
    from voxloop.app import llm_urls
    from voxloop.bench import DEFAULT_SET
    from voxloop.bench.endpointing import DEFAULT_PAUSE_SET, endpointing_table, run_endpointing
    from voxloop.bench.interruptions import interruptions_table, run_interruptions
    from voxloop.printer import HumanPrinter

    printer = HumanPrinter()
    results: dict[str, dict[str, Any]] = {}
    if args.endpointing:
        finished = _bench_set(args, "set", DEFAULT_SET)
        local = Path("benchmarks") / "pauses"
        pauses = local if local.is_dir() else DEFAULT_PAUSE_SET
        with llm_urls(settings, printer) as urls:
            results["endpointing"] = run_endpointing(
                settings, urls[0], finished, pauses, args.limit, printer.info
            )
    if args.interruptions:  # a scripted reply: no LLM needed
        results["interruptions"] = run_interruptions(settings, args.limit, printer.info)
    if settings.output.json:  # one benchmark: its own object, as before; both: one object of two
        print(json.dumps(results if len(results) > 1 else next(iter(results.values())), default=str))
    else:
        tables = {"endpointing": endpointing_table, "interruptions": interruptions_table}
        print("\n\n".join(tables[name](result) for name, result in results.items()))
    return 0


def _bench_stt(args: argparse.Namespace, settings: Settings) -> int:
    from voxloop.bench.quality import DEFAULT_QUALITY_SET
    from voxloop.bench.stt import configs, run_stt, stt_table
    from voxloop.printer import HumanPrinter

    def names(text: str) -> list[str]:
        return [n.strip() for n in text.split(",") if n.strip()]

    beams = _levels(args.beams, "--beams")
    folder = _bench_set(args, "quality", DEFAULT_QUALITY_SET)
    chosen = configs(settings.stt, names(args.stt), beams, names(args.decoders))
    results = run_stt(chosen, folder, args.limit, HumanPrinter().info)
    print(json.dumps(results, default=str) if settings.output.json else stt_table(results))
    return 0


def _bench_long(args: argparse.Namespace, settings: Settings) -> int:
    from voxloop.app import llm_urls
    from voxloop.bench.long import long_table, run_long
    from voxloop.bench.quality import DEFAULT_QUALITY_SET
    from voxloop.printer import HumanPrinter

    folder = _bench_set(args, "quality", DEFAULT_QUALITY_SET)
    printer = HumanPrinter()
    with llm_urls(settings, printer) as urls:
        result = run_long(settings, urls[0], folder, args.turns, printer.info)
    print(json.dumps(result, default=str) if settings.output.json else long_table(result))
    return 0


def _levels(text: str, flag: str) -> list[int]:
    from voxloop.errors import ConfigError

    try:
        levels = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise ConfigError(f"{flag} takes whole numbers like 1,2,4,8 (got {text!r}).")
    return levels


def _bench_load(args: argparse.Namespace, settings: Settings) -> int:
    from voxloop.app import llm_urls
    from voxloop.bench.load import load_table, run_load
    from voxloop.printer import HumanPrinter

    levels = _levels(args.load, "--load")
    with llm_urls(settings, HumanPrinter()) as urls:
        rows = run_load(urls, settings.llm, levels)
    print(json.dumps(rows) if settings.output.json else load_table(rows))
    return 0


def _bench_sessions(args: argparse.Namespace, settings: Settings, folder: Path) -> int:
    from voxloop.app import llm_urls, serving
    from voxloop.bench.sessions import parse_protocols, run_sessions, sessions_table
    from voxloop.printer import HumanPrinter

    levels = _levels(args.sessions, "--sessions")
    protocols = parse_protocols(args.protocols)
    rounds = _rounds(args.limit)
    with llm_urls(serving(settings), HumanPrinter()) as urls:
        rows = run_sessions(urls, folder, levels, protocols, rounds)
    print(json.dumps(rows) if settings.output.json else sessions_table(rows))
    return 0


def _rounds(limit: int | None) -> int:
    from voxloop.bench.sessions import DEFAULT_ROUNDS
    from voxloop.errors import ConfigError

    if limit is not None and limit < 1:
        raise ConfigError(f"--limit takes a whole number of at least 1 (got {limit}).")
    return limit or DEFAULT_ROUNDS


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from voxloop.app import llm_urls, serving
    from voxloop.printer import HumanPrinter
    from voxloop.server import serve, stop_on_sigterm
    from voxloop.server.tls import tls_files

    # The certificate before the LLM: a wrong --cert or --key is told at once.
    tls = tls_files(args.https, args.cert, args.key, args.host, args.allow_host)
    wyoming = _serve_wyoming(args)
    printer = HumanPrinter()
    with stop_on_sigterm(), llm_urls(serving(settings), printer) as urls:
        serve(
            settings,
            urls,
            args.host,
            args.serve_port,
            args.token,
            tuple(args.allow_origin),
            printer.info,
            allowed_hosts=tuple(args.allow_host),
            tls=tls,
            wyoming=wyoming,
        )
    return 0


def _serve_wyoming(args: argparse.Namespace) -> WyomingOptions | None:
    """`serve --wyoming [PORT]`: the Wyoming server at --host, on PORT."""
    from voxloop.errors import ConfigError
    from voxloop.server.wyoming import WyomingOptions

    if args.wyoming is None:
        return None
    if not 0 < args.wyoming < 65536:
        raise ConfigError(f"--wyoming takes a port from 1 to 65535 (got {args.wyoming}).")
    if args.wyoming == args.serve_port:
        raise ConfigError(f"--wyoming {args.wyoming} is the page's --port too; pass another port to either.")
    return WyomingOptions(host=args.host, port=args.wyoming)


def cmd_wyoming(args: argparse.Namespace, settings: Settings) -> int:
    from voxloop.app import llm_urls, serving
    from voxloop.printer import HumanPrinter
    from voxloop.server import stop_on_sigterm
    from voxloop.server.wyoming import WyomingOptions, serve_wyoming

    options = WyomingOptions(
        host=args.host, port=args.wyoming_port, streaming=not args.no_streaming, zeroconf=args.zeroconf
    )
    printer = HumanPrinter()
    with stop_on_sigterm(), llm_urls(serving(settings), printer) as urls:
        serve_wyoming(settings, urls, options, printer)
    return 0


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from voxloop.doctor import report, run_checks

    if settings.output.json:
        print(json.dumps(report(settings), indent=1))
        return 0
    for check in run_checks(settings):
        mark = "ok     " if check.ok else "problem"
        fix = f"  → {check.fix}" if check.fix and not check.ok else ""
        print(f"{mark} {check.name:14s} {check.detail}{fix}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "chat": cmd_chat,
    "transcribe": cmd_transcribe,
    "say": cmd_say,
    "llm": cmd_llm,
    "doctor": cmd_doctor,
    "bench": cmd_bench,
    "serve": cmd_serve,
    "wyoming": cmd_wyoming,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    debug = bool(args.debug)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings(_overrides(args), config_file=args.config)
        return COMMANDS[args.command](args, settings)
    except VoxloopError as exc:
        if debug:
            raise
        if getattr(args, "json", None):
            print(json.dumps({"type": "error", "message": str(exc)}), flush=True)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Stopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
