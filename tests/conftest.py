"""Shared fixtures: real models loaded once, spoken test audio made by hibari, a real llama.cpp
server on loopback, and a recording proxy in front of it (to assert what the server received)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from voxloop.audio import save_wav
from voxloop.audio.speech import spoken_turns
from voxloop.settings import SttSettings, TtsSettings

ROOT = Path(__file__).resolve().parents[1]


# -- real models ------------------------------------------------------------------------------
# The tests of voxloop's own plumbing (barge-in, stalls, errors, the web page...) run on the tiny
# preset, SmolLM2-135M: they test voxloop, not the model, and it is the fastest. What the default
# model says is tested in test_quality.py, which asks for the default preset by name.
TEST_PRESET = "tiny"


@pytest.fixture(scope="session", autouse=True)
def shared_models() -> None:
    """The models folder voxloop itself uses, where `./install.sh` joined, checked and re-packed
    the default preset: a preset is prepared (up to 1.1 GB, ~3 min) once per machine, not per
    test or per run. Tests of joining and of damage use folders of their own."""
    from voxloop.settings import models_dir

    os.environ.setdefault("VOXLOOP_MODELS", str(models_dir()))


@pytest.fixture(scope="session")
def synthesizer():
    from voxloop.tts.hibari_tts import HibariSynthesizer

    # A fixed seed: the same text gives the same audio on every run, so a test's input does not
    # change from one run to the next.
    return HibariSynthesizer(TtsSettings(seed=0))


@pytest.fixture(scope="session")
def transcriber():
    from voxloop.stt.whisper import WhisperTranscriber

    return WhisperTranscriber(SttSettings())


@pytest.fixture(scope="session")
def speech(synthesizer, tmp_path_factory) -> Callable[..., Path]:
    """speech(["turn one", "turn two"], name="x.wav") -> a 16 kHz WAV of those turns, cached."""
    folder = tmp_path_factory.mktemp("speech")
    cache: dict[tuple[Any, ...], Path] = {}

    def make(turns: list[str], name: str | None = None, **kwargs: Any) -> Path:
        key = (tuple(turns), tuple(sorted(kwargs.items())))
        if key not in cache:
            path = folder / (name or f"speech-{len(cache)}.wav")
            save_wav(path, spoken_turns(synthesizer, turns, **kwargs), 16000)
            cache[key] = path
        return cache[key]

    return make


def _norm(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate, ignoring case and punctuation."""
    import jiwer

    return float(jiwer.wer(_norm(reference), _norm(hypothesis)))


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate: fair to names Whisper may spell differently ("L'Alma" / "El Alma")."""
    import jiwer

    return float(jiwer.cer(_norm(reference), _norm(hypothesis)))


@pytest.fixture(scope="session")
def mid_phrase_pause(synthesizer, tmp_path_factory) -> Path:
    """ "I would like to", a 0.7 s pause, "order a large pizza with mushrooms.": long enough
    for a plain 0.6 s endpoint to split it, short enough for the 0.9 s wait after "…to"."""
    first = spoken_turns(synthesizer, ["I would like to"], lead_s=0.5, turn_gap_s=0)
    rest = spoken_turns(synthesizer, ["order a large pizza with mushrooms."], lead_s=0.0)
    pause = np.zeros(int(0.6 * 16000), np.float32)
    path = tmp_path_factory.mktemp("pause") / "pause.wav"
    save_wav(path, np.concatenate([first[: len(first) - 8000], pause, rest]), 16000)
    return path


# -- the real LLM server ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def llm_server(tmp_path_factory) -> Iterator[str]:
    """A real llama.cpp server (SmolLM2-135M) on 127.0.0.1, for the whole test session."""
    from voxloop.llm.server import start_server
    from voxloop.settings import LlmSettings

    os.environ.setdefault("VOXLOOP_HOME", str(tmp_path_factory.mktemp("voxloop-home")))
    info, proc = start_server(LlmSettings(preset=TEST_PRESET), detach=False)
    yield info.url
    proc.terminate()
    proc.wait(timeout=10)


# -- a recording (and optionally failing) proxy -----------------------------------------------
@dataclass
class Proxy:
    """Forwards to ``upstream`` and records every chat request body; ``plan`` can make the next
    chat requests fail: "refuse" (HTTP 503 error JSON), "garbage" (200 HTML), "drop" (close the
    connection mid-reply), "ok"; or answer in its place, streamed as a server would:
    "say:TEXT" (any reply), "stall:S:TEXT" (S seconds of silence after the first sentence),
    "multiline:TEXT" (each event's JSON split over two ``data:`` lines, as the SSE spec allows),
    "flood" (20,000 characters of words without punctuation, max_tokens ignored)."""

    upstream: str
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    models_garbage: bool = False
    slow_s: float = 0.0  # pause between forwarded chunks (a slow server)
    client_gone: list[float] = field(default_factory=list)  # when a client hung up mid-reply

    @property
    def chats(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if "messages" in r]


def _handler(proxy: Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if proxy.models_garbage:
                self._send(200, b"<html><body>It works!</body></html>", "text/html")
                return
            r = httpx.get(proxy.upstream.rsplit("/v1", 1)[0] + self.path, timeout=10)
            self._send(r.status_code, r.content, r.headers.get("content-type", "application/json"))

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            request = json.loads(body)
            proxy.requests.append(request)
            mode = proxy.plan.pop(0) if proxy.plan else "ok"
            if mode == "refuse":
                self._send(
                    503,
                    json.dumps({"error": {"message": "engine is overloaded"}}).encode(),
                    "application/json",
                )
                return
            if mode == "garbage":
                self._send(200, b"<html>502 Bad Gateway</html>", "text/html")
                return
            kind, _, text = mode.partition(":")
            if kind in ("say", "stall", "multiline", "flood"):
                self._stand_in(kind, text)
                return
            url = proxy.upstream.rsplit("/v1", 1)[0] + self.path
            with httpx.stream(
                "POST", url, content=body, headers={"Content-Type": "application/json"}, timeout=60
            ) as r:
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
                self.end_headers()
                for i, chunk in enumerate(r.iter_raw()):
                    try:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        proxy.client_gone.append(time.monotonic())
                        return  # closing upstream too, as a real server would stop generating
                    time.sleep(proxy.slow_s)
                    if mode == "drop" and i >= 1:
                        self.connection.shutdown(2)
                        return

        def _stand_in(self, kind: str, text: str) -> None:
            """A reply of the test's choosing, streamed in small pieces."""
            stall_s = 0.0
            if kind == "stall":
                seconds, _, text = text.partition(":")
                stall_s = float(seconds)
            if kind == "flood":
                words = ["river", "stone", "apple", "cloud", "seven", "green", "music", "paper"]
                text = " ".join(words[(i * 7) % len(words)] + str(i % 10) for i in range(3000))[:20000]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            pieces = re.findall(r"\S+\s*", text)
            try:
                for piece in pieces:
                    data = json.dumps({"choices": [{"index": 0, "delta": {"content": piece}}]})
                    if kind == "multiline":  # split inside the JSON: only a joined event parses
                        cut = data.index('"delta"')
                        data = data[:cut] + "\ndata: " + data[cut:]
                    self.wfile.write(f"data: {data}\n\n".encode())
                    self.wfile.flush()
                    if stall_s and piece.rstrip().endswith((".", "!", "?")):
                        time.sleep(stall_s)
                        stall_s = 0.0
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                proxy.client_gone.append(time.monotonic())

    return Handler


@pytest.fixture
def proxy_factory() -> Iterator[Callable[[str], Proxy]]:
    servers: list[ThreadingHTTPServer] = []

    def make(upstream: str) -> Proxy:
        proxy = Proxy(upstream)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        proxy.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        return proxy

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(proxy_factory, llm_server) -> Proxy:
    return proxy_factory(llm_server)


# -- running the CLI like a user --------------------------------------------------------------
@dataclass
class Run:
    code: int
    out: str
    err: str

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.startswith("{")]


@pytest.fixture
def voxloop_env(tmp_path) -> dict[str, str]:
    """The environment the CLI runs in for a test: its own home and config, greedy decoding
    (the same question gets the same reply on every run), the test preset."""
    return {
        **os.environ,
        "VOXLOOP_HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "VOXLOOP_LLM_TEMPERATURE": "0",
        "VOXLOOP_LLM_PRESET": TEST_PRESET,
    }


@pytest.fixture
def voxloop(voxloop_env) -> Callable[..., Run]:
    """voxloop("chat", "--input", f) runs the real CLI in a subprocess, no TTY, no sound card."""
    env = voxloop_env

    def run(*args: str, timeout: float = 300, extra_env: dict[str, str] | None = None) -> Run:
        proc = subprocess.run(
            [sys.executable, "-m", "voxloop", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**env, **(extra_env or {})},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)

    return run


def noise(seconds: float, level: float = 0.1, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * level).astype(np.float32)
