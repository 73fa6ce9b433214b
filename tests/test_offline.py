"""Offline, proven: a spoken conversation and `voxloop serve` with a client, each run inside a
network namespace that has nothing but loopback (``unshare -n``), with no ``HF_HUB_OFFLINE``
or the like set. Every Python process there (voxloop, its embedded LLM server when that is the
xllamacpp wheel, the client) loads a recorder that notes each name lookup and each connection
not to loopback: the conversation must complete and the notes must be empty. A C++ llama-server
is not recorded, but the namespace leaves it nothing to reach."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, TEST_PRESET, wer

pytestmark = pytest.mark.integration

# Loaded by every Python process of a test through PYTHONPATH. It lets each call go on (to fail
# in the namespace as it would): it only writes down what was tried.
RECORDER = '''
"""Records name lookups and connections that are not to loopback into $VOXLOOP_NETLOG."""
import ipaddress
import os
import socket
import sys

_LOG = os.environ["VOXLOOP_NETLOG"]


def _note(what, target):
    with open(_LOG, "a") as f:
        f.write(f"{os.getpid()} {what} {target!r} {sys.argv!r}\\n")


def _local(host):
    if host in (None, "", b""):
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False  # a name: resolving it is a DNS lookup
    return ip.is_loopback or ip.is_unspecified


def _lookup(name, original):
    def wrapper(host, *args, **kwargs):
        if not _local(host):
            _note(name, host)
        return original(host, *args, **kwargs)

    return wrapper


for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
    setattr(socket, _name, _lookup(_name, getattr(socket, _name)))


def _address(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _note("connect", address)


_connect, _connect_ex, _sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto


def connect(self, address):
    _address(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _address(self, address)
    return _connect_ex(self, address)


def sendto(self, data, *args):
    _address(self, args[-1])
    return _sendto(self, data, *args)


socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = connect, connect_ex, sendto
with open(_LOG + ".procs", "a") as _f:
    _f.write(f"{os.getpid()} {sys.argv!r}\\n")

# Another sitecustomize (a distribution's) still runs, after this one.
_here, _path, _me = os.path.dirname(os.path.abspath(__file__)), list(sys.path), sys.modules.pop("sitecustomize")
sys.path[:] = [p for p in _path if os.path.abspath(p or ".") != _here]
try:
    import sitecustomize  # noqa: F401
except ImportError:
    pass
finally:
    sys.path[:] = _path
    sys.modules["sitecustomize"] = _me
'''

# Run as `unshare -n python lo_up.py COMMAND...`: a new network namespace's loopback is down;
# bring it up (SIOCGIFFLAGS / SIOCSIFFLAGS, as `ip link set lo up` does, which CI may lack) and
# run the command in its place.
LO_UP = """
import fcntl, os, socket, struct, sys

with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    flags = struct.unpack("16sh22x", fcntl.ioctl(s, 0x8913, struct.pack("16sh22x", b"lo", 0)))[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sh22x", b"lo", flags | 0x1))  # IFF_UP
os.execvp(sys.argv[1], sys.argv[1:])
"""

# `voxloop serve` and a client that speaks to it as the page does, both in the namespace.
SERVE_AND_TALK = """
import asyncio, json, subprocess, sys, time

import httpx

sys.path.insert(0, sys.argv[3])  # tests/: the WebSocket client of test_serve.py
from test_serve import TOKEN, converse
from voxloop.audio.decode import load_audio

port, wav = sys.argv[1], sys.argv[2]
serve = subprocess.Popen(
    [sys.executable, "-m", "voxloop", "serve", "--port", port, "--token", TOKEN],
    stdout=sys.stderr, stderr=sys.stderr,
)
try:
    deadline = time.monotonic() + 100
    while time.monotonic() < deadline and serve.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    events, samples = asyncio.run(converse(f"127.0.0.1:{port}", load_audio(wav)))
    print(json.dumps({"events": events, "samples": samples}))
finally:
    serve.terminate()
    serve.wait(timeout=30)
"""


def _why_not() -> str:
    """Why this machine cannot run the test, or ""."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "unshare -n needs root (CI runs these as root)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        return "unshare -n is not permitted here (a container without CAP_SYS_ADMIN)"
    return ""


@pytest.fixture
def offline(tmp_path) -> Any:
    """offline(*argv) runs argv in a fresh network namespace with only loopback, every Python
    process recorded; returns (the finished process, the recorder's notes, the processes it
    was loaded in)."""
    if why := _why_not():
        pytest.skip(why)
    site = tmp_path / "recorder"
    site.mkdir()
    (site / "sitecustomize.py").write_text(RECORDER)
    (tmp_path / "lo_up.py").write_text(textwrap.dedent(LO_UP))
    netlog = tmp_path / "net.log"
    netlog.write_text("")
    # As the `voxloop` fixture runs the CLI, with the recorder; nothing telling any library to
    # stay offline: voxloop must not need it.
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")},
        "VOXLOOP_HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "VOXLOOP_LLM_TEMPERATURE": "0",
        "VOXLOOP_LLM_PRESET": TEST_PRESET,
        "VOXLOOP_NETLOG": str(netlog),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
    }

    def run(*argv: str, timeout: float = 150) -> tuple[subprocess.CompletedProcess[str], str, str]:
        proc = subprocess.run(
            ["unshare", "-n", sys.executable, str(tmp_path / "lo_up.py"), *argv],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        procs = Path(f"{netlog}.procs")
        return proc, netlog.read_text(), procs.read_text() if procs.exists() else ""

    return run


def test_the_recorder_sees_an_attempt_to_reach_the_hub(offline):
    """The recorder works, so the tests below can fail: a try for huggingface.co is noted."""
    probe = "import socket\ntry:\n socket.create_connection(('huggingface.co', 443), timeout=2)\nexcept OSError:\n pass"
    proc, notes, _ = offline(sys.executable, "-c", probe)
    assert proc.returncode == 0, proc.stderr
    assert "getaddrinfo 'huggingface.co'" in notes


def test_a_spoken_conversation_with_no_network(offline):
    proc, notes, procs = offline(
        sys.executable, "-m", "voxloop", "chat", "--input", "samples/hello.wav", "--no-speak", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    done = [json.loads(line) for line in proc.stdout.splitlines() if '"turn_done"' in line]
    # The sample's two questions, each heard and answered.
    assert [("puppy" in t["user"], "spider" in t["user"]) for t in done] == [(True, False), (False, True)], (
        proc.stdout
    )
    assert all(t["assistant"].strip() and t["error"] is None for t in done), done
    assert "Starting the embedded LLM" in proc.stderr  # the replies came from a server in the namespace
    assert "'chat'" in procs  # the recorder was loaded in voxloop's process
    assert notes == ""


def test_voxloop_serve_and_a_client_with_no_network(offline, speech, tmp_path):
    question = "What is the capital of France?"
    script = tmp_path / "serve_and_talk.py"
    script.write_text(textwrap.dedent(SERVE_AND_TALK))
    wav = speech([question])
    proc, notes, procs = offline(sys.executable, str(script), "8080", str(wav), str(ROOT / "tests"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = json.loads(proc.stdout.splitlines()[-1])["events"]
    kinds = [e["type"] for e in events]
    assert kinds.index("transcript") < kinds.index("turn_done"), kinds
    assert "interrupted" not in kinds and "error" not in kinds, events
    assert wer(question, next(e for e in events if e["type"] == "transcript")["text"]) <= 0.25
    reply = next(e for e in events if e["type"] == "turn_done")["assistant"]
    assert reply.strip() and "".join(e["text"] for e in events if e["type"] == "reply_delta").strip()
    assert json.loads(proc.stdout.splitlines()[-1])["samples"] > 24000 * 0.5  # its audio came back
    assert "'serve'" in procs and "serve_and_talk.py" in procs  # the recorder was loaded in both
    assert notes == ""
