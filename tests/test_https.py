"""`voxloop serve --https`: voxloop's own CA and the server certificate it signs (names, renewal,
file modes, damaged files), a real server over TLS that a client trusting only that CA reaches
(page, /health, the WebSocket), and Chromium: the page at a LAN name is a secure context over
HTTPS (the microphone API exists) and is not one over plain http, and a spoken turn completes
there through the page's microphone."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from conftest import ROOT, wer
from test_serve import TOKEN, _chromium, start_serve, talk
from voxloop.audio.speech import spoken_turns
from voxloop.errors import ConfigError
from voxloop.server import tls


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _san(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return set(san.get_values_for_type(x509.DNSName)), ips


# -- the certificates ---------------------------------------------------------------------------
def test_the_certificate_names_every_way_to_reach_the_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "Kitchen.home.arpa")
    monkeypatch.setattr(tls, "machine_addresses", lambda: ["192.168.1.20", "10.0.0.5"])
    names = tls.certificate_names("192.168.7.7", ["Voice.LAN", "voice.lan"])
    files = tls.own_certificate(names, tmp_path / "tls")

    cert, ca = _cert(files.cert), _cert(files.trust)
    dns, ips = _san(cert)
    assert dns == {"localhost", "kitchen.home.arpa", "kitchen.local", "voice.lan"}
    assert ips == {"127.0.0.1", "::1", "192.168.1.20", "10.0.0.5", "192.168.7.7"}
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert files.own_ca and files.fingerprint == ca.fingerprint(hashes.SHA256()).hex(":").upper()
    # a wildcard bind is not a name; the bound address is one only when it is an address
    assert "0.0.0.0" not in tls.certificate_names("0.0.0.0")
    assert "::" not in tls.certificate_names("[::]")


def test_the_machine_s_own_addresses_are_found():
    """Independently of psutil: the address this machine would send from is among them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))  # UDP: no packet is sent
        except OSError:
            pytest.skip("no IPv4 route on this machine")
        own = probe.getsockname()[0]
    names = tls.certificate_names("0.0.0.0")
    assert own in names and socket.gethostname().lower() in names
    assert not any(n.startswith("127.") for n in names if n != "127.0.0.1")


def test_the_server_certificate_is_issued_again_on_a_new_name_or_near_expiry_and_the_ca_is_kept(tmp_path):
    folder = tmp_path / "tls"

    def snapshot() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in folder.glob("*.pem")}

    first = tls.own_certificate(["localhost", "127.0.0.1"], folder)
    before = snapshot()
    assert set(before) == {"ca.pem", "ca-key.pem", "cert.pem", "key.pem"}
    assert tls.own_certificate(["127.0.0.1", "localhost"], folder) == first
    assert snapshot() == before  # same names, far from expiry: nothing written

    renamed = tls.own_certificate(["localhost", "127.0.0.1", "voice.lan"], folder)
    after = snapshot()
    assert after["ca.pem"] == before["ca.pem"] and after["ca-key.pem"] == before["ca-key.pem"]
    assert after["cert.pem"] != before["cert.pem"] and after["key.pem"] != before["key.pem"]
    assert "voice.lan" in _san(_cert(renamed.cert))[0]
    assert renamed.fingerprint == first.fingerprint  # what a phone trusts has not changed

    old = _cert(renamed.cert)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=tls.SERVER_DAYS - tls.RENEW_DAYS + 1)
    renewed = tls.own_certificate(["localhost", "127.0.0.1", "voice.lan"], folder, now=later)
    new = _cert(renewed.cert)
    assert new.serial_number != old.serial_number
    assert new.not_valid_after_utc > later + dt.timedelta(days=tls.SERVER_DAYS - 2)
    assert snapshot()["ca.pem"] == before["ca.pem"]
    new.verify_directly_issued_by(_cert(renewed.trust))


def test_key_files_are_0600_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        files = tls.own_certificate(["localhost"], tmp_path / "tls")
    finally:
        os.umask(previous)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files.cert.parent.glob("*.pem")}
    assert mode["ca-key.pem"] == 0o600 and mode["key.pem"] == 0o600, mode
    assert mode["ca.pem"] == 0o644 and mode["cert.pem"] == 0o644, mode
    assert stat.S_IMODE(files.cert.parent.stat().st_mode) == 0o700


def test_a_damaged_ca_key_is_an_error_naming_it_and_a_damaged_server_key_is_made_again(tmp_path):
    folder = tmp_path / "tls"
    tls.own_certificate(["localhost"], folder)
    (folder / "key.pem").write_text("not a key")
    again = tls.own_certificate(["localhost"], folder)
    assert b"PRIVATE KEY" in again.key.read_bytes()

    (folder / "ca-key.pem").write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as error:
        tls.own_certificate(["localhost"], folder)
    message = str(error.value)
    assert str(folder / "ca-key.pem") in message and "Delete the folder" in message and "\n" not in message


def _pair(folder: Path, name: str, now: dt.datetime | None = None) -> tls.TlsFiles:
    return tls.own_certificate(["localhost", "127.0.0.1"], folder / name, now=now)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing cert", "Cannot read --cert"),
        ("text as cert", "is not a PEM certificate"),
        ("text as key", "is not a PEM private key"),
        ("encrypted key", "encrypted with a passphrase"),
        ("another's key", "is not the private key of --cert"),
        ("expired cert", "expired on"),
        ("cert without key", "Give --cert and --key together"),
    ],
)
def test_bad_cert_or_key_files_are_one_line_config_errors(tmp_path, case, expected):
    good = _pair(tmp_path, "good")
    cert, key = str(good.cert), str(good.key)
    if case == "missing cert":
        cert = str(tmp_path / "nowhere.pem")
    elif case == "text as cert":
        (tmp_path / "c.pem").write_text("hello")
        cert = str(tmp_path / "c.pem")
    elif case == "text as key":
        (tmp_path / "k.pem").write_text("hello")
        key = str(tmp_path / "k.pem")
    elif case == "encrypted key":
        loaded = serialization.load_pem_private_key(good.key.read_bytes(), password=None)
        encrypted = loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        (tmp_path / "k.pem").write_bytes(encrypted)
        key = str(tmp_path / "k.pem")
    elif case == "another's key":
        key = str(_pair(tmp_path, "other").key)
    elif case == "expired cert":
        old = _pair(tmp_path, "old", now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=800))
        cert, key = str(old.cert), str(old.key)
    with pytest.raises(ConfigError) as error:
        tls.tls_files(True, cert, None if case == "cert without key" else key, "127.0.0.1")
    message = str(error.value)
    assert expected in message and "\n" not in message
    if case != "cert without key":
        assert (cert if "cert" in case else key) in message  # names the file
    assert error.value.exit_code == 2


def test_a_cert_and_key_of_your_own_are_served_as_given(tmp_path):
    own = _pair(tmp_path, "mine")
    files = tls.tls_files(None, str(own.cert), str(own.key), "127.0.0.1")  # a cert means HTTPS
    assert files is not None and (files.cert, files.key, files.own_ca) == (own.cert, own.key, False)
    assert files.fingerprint == _cert(own.cert).fingerprint(hashes.SHA256()).hex(":").upper()


def test_https_is_on_off_loopback_unless_told_otherwise():
    assert tls.wants_https("0.0.0.0", None) and tls.wants_https("192.168.1.5", None)
    assert not tls.wants_https("127.0.0.1", None) and not tls.wants_https("localhost", None)
    assert not tls.wants_https("127.0.0.2", None) and not tls.wants_https("::1", None)
    assert tls.wants_https("127.0.0.1", True) and not tls.wants_https("0.0.0.0", False)
    assert tls.wants_https("127.0.0.1", None, cert="c.pem")


def test_start_names_every_url_to_open_and_warns_of_plain_http_off_loopback(tmp_path, monkeypatch):
    monkeypatch.setenv("VOXLOOP_HOME", str(tmp_path))  # the CA goes to VOXLOOP_HOME/tls
    monkeypatch.setattr(socket, "gethostname", lambda: "kitchen")
    monkeypatch.setattr(tls, "machine_addresses", lambda: ["192.168.1.20", "10.0.0.5"])
    files = tls.tls_files(None, None, None, "0.0.0.0", ["voice.lan"])
    assert files is not None and files.own_ca  # off loopback: HTTPS unless told otherwise
    said: list[str] = []
    tls.announce(said.append, "0.0.0.0", 8443, "tok", files, ["voice.lan"])
    urls = [line.split()[-1] for line in said if "://" in line]
    assert urls == [
        f"https://{name}:8443/?token=tok"
        for name in ("localhost", "192.168.1.20", "10.0.0.5", "kitchen.local", "voice.lan")
    ]
    assert said[0] == "voxloop is listening on https://localhost:8443/?token=tok"
    assert f"CA certificate: {files.trust} (SHA-256 {files.fingerprint})" in "\n".join(said)

    said.clear()
    tls.announce(said.append, "0.0.0.0", 8080, "tok", tls.tls_files(False, None, None, "0.0.0.0"))
    assert said[0] == "voxloop is listening on http://localhost:8080/?token=tok"
    assert "will not give this page the microphone" in said[-1]
    said.clear()
    tls.announce(said.append, "127.0.0.1", 8080, None, None)
    assert said == ["voxloop is listening on http://localhost:8080/"]  # as before on loopback


def test_serve_with_a_bad_key_exits_2_with_one_line(tmp_path):
    good = _pair(tmp_path, "good")
    (tmp_path / "bad-key.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    run = subprocess.run(
        [sys.executable, "-m", "voxloop", "serve", "--https", "--cert", str(good.cert),
         "--key", str(tmp_path / "bad-key.pem"), "--llm-url", "http://127.0.0.1:9/v1"],
        env={**os.environ, "VOXLOOP_HOME": str(tmp_path / "home")}, cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --key ") and "bad-key.pem" in lines[0], lines
    assert "is not a PEM private key" in lines[0]


# -- a real server over TLS ---------------------------------------------------------------------
@dataclass
class Served:
    base: str  # 127.0.0.1:PORT
    port: int
    ca: Path
    output: list[str] = field(default_factory=list)

    def trust(self) -> ssl.SSLContext:
        """A client that trusts voxloop's CA and nothing else."""
        return ssl.create_default_context(cafile=str(self.ca))

    def printed(self, marker: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while marker not in "".join(self.output) and time.monotonic() < deadline:
            time.sleep(0.1)
        return "".join(self.output)


@pytest.fixture(scope="module")
def https_server(llm_server, tmp_path_factory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("https-home")
    proc, base = start_serve(
        llm_server, str(home), "--https", "--host", "127.0.0.1", "--allow-host", "voice.test", scheme="https"
    )
    served = Served(base, int(base.rsplit(":", 1)[1]), home / "tls" / "ca.pem")

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            served.output.append(line)

    threading.Thread(target=read, daemon=True).start()
    yield served
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.integration
def test_start_prints_the_https_url_the_ca_and_its_fingerprint(https_server):
    text = https_server.printed("install it as a trusted CA certificate")
    ca = _cert(https_server.ca)
    fingerprint = ca.fingerprint(hashes.SHA256()).hex(":").upper()
    assert f"voxloop is listening on https://localhost:{https_server.port}/?token={TOKEN}" in text, text
    assert f"https://voice.test:{https_server.port}/?token={TOKEN}" in text, text
    assert f"CA certificate: {https_server.ca} (SHA-256 {fingerprint})" in text, text
    assert "install it as a trusted CA certificate" in text and "Traceback" not in text


@pytest.mark.integration
def test_the_page_and_health_over_https_to_a_client_that_trusts_only_voxloop_s_ca(https_server):
    for host in ("127.0.0.1", "localhost"):
        page = httpx.get(f"https://{host}:{https_server.port}/?token={TOKEN}", verify=https_server.trust())
        assert page.status_code == 200 and "getUserMedia" in page.text, host
    health = httpx.get(f"https://{https_server.base}/health", verify=https_server.trust())
    assert health.json()["status"] == "ok"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://{https_server.base}/health")  # the usual CAs do not know voxloop's


@pytest.mark.integration
async def test_a_websocket_over_wss_gets_the_hello(https_server):
    for origin in (None, f"https://voice.test:{https_server.port}"):
        async with websockets.connect(
            f"wss://voice.test:{https_server.port}/ws?token={TOKEN}",
            host="127.0.0.1",
            port=https_server.port,
            ssl=https_server.trust(),
            origin=origin,
        ) as ws:
            hello = json.loads(await ws.recv())
        assert hello["type"] == "hello" and hello["protocol"] == 2, origin


class _Page(BaseHTTPRequestHandler):
    """voxloop's page over plain http: what a LAN user gets from `voxloop serve --no-https`."""

    def do_GET(self) -> None:
        from voxloop.server.app import page

        body = page().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.integration
def _pin(served: Served) -> str:
    """The server certificate's key, as Chromium's ``--ignore-certificate-errors-spki-list``
    takes it: only that certificate is let through, not any."""
    leaf = _cert(served.ca.parent / "cert.pem").public_key()
    spki = leaf.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_chromium_at_a_lan_name_is_a_secure_context_over_https_only(https_server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    pin = _pin(https_server)
    plain = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    probe = """async () => {
      const reply = window.isSecureContext ? await new Promise((done) => {
        const ws = new WebSocket(wsUrl);
        ws.onmessage = (e) => { done(JSON.parse(e.data).type); ws.close(); };
        ws.onerror = () => done("error");
      }) : null;
      return {secure: window.isSecureContext, protocol: location.protocol, wsUrl,
              getUserMedia: typeof navigator.mediaDevices?.getUserMedia, reply};
    }"""
    try:
        with sync_api.sync_playwright() as p:
            browser = _chromium(
                p,
                "--host-resolver-rules=MAP voice.test 127.0.0.1",
                f"--ignore-certificate-errors-spki-list={pin}",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
            )
            try:
                page = browser.new_page()
                page.goto(f"https://voice.test:{https_server.port}/?token={TOKEN}", timeout=20_000)
                over_https = page.evaluate(probe)
                page.goto(f"http://voice.test:{plain.server_address[1]}/?token={TOKEN}", timeout=20_000)
                over_http = page.evaluate(probe)
                page.click("#talk")
                page.wait_for_function("document.getElementById('status').textContent.includes('HTTPS')")
                refusal = page.inner_text("#status")
            finally:
                browser.close()
    finally:
        plain.shutdown()
        plain.server_close()
    assert over_https == {
        "secure": True,
        "protocol": "https:",
        "wsUrl": f"wss://voice.test:{https_server.port}/ws?token={TOKEN}",
        "getUserMedia": "function",
        "reply": "hello",  # the page's own wss:// URL, Origin https://voice.test:PORT accepted
    }, over_https
    assert over_http["secure"] is False and over_http["protocol"] == "http:", over_http
    assert over_http["getUserMedia"] == "undefined", over_http
    assert "https://" in refusal, refusal


@pytest.mark.integration
def test_chromium_at_a_lan_name_over_https_hears_a_question_and_plays_the_reply(
    https_server, synthesizer, tmp_path
):
    """A phone's view of it: the page at a LAN name over voxloop's HTTPS takes the (fake)
    microphone, and a spoken question is transcribed, answered and played."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    from voxloop.audio import save_wav

    question = "What is the capital of France?"
    mic = tmp_path / "mic.wav"
    speech = spoken_turns(synthesizer, [question])
    save_wav(mic, np.concatenate([speech, np.zeros(16000 * 8, np.float32)]), 16000)
    with sync_api.sync_playwright() as p:
        browser = _chromium(
            p,
            "--host-resolver-rules=MAP voice.test 127.0.0.1",
            f"--ignore-certificate-errors-spki-list={_pin(https_server)}",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic}",
        )
        try:
            page = browser.new_page()
            page.goto(f"https://voice.test:{https_server.port}/?token={TOKEN}", timeout=20_000)
            user, reply = talk(page)
            secure = page.evaluate("window.isSecureContext")
        finally:
            browser.close()
    assert secure is True
    assert wer(question, user) <= 0.25, user
    assert reply.strip(), reply
