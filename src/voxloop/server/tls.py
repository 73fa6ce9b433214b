"""HTTPS for `voxloop serve`: a browser gives a page the microphone only in a secure context
(HTTPS, or localhost), so a phone on the LAN needs TLS to talk to voxloop at all.

With ``--cert``/``--key`` voxloop serves those files. Without them it is its own small
certificate authority, kept in ``data_dir()/tls``::

    ca.pem       the CA certificate: install and trust it once on each phone or tablet
    ca-key.pem   its key (0600); it never leaves this machine
    cert.pem     the server certificate the CA signs, for every name this machine is reached by
    key.pem      its key (0600)

The CA is kept, so a device that trusts it goes on trusting voxloop; the server certificate is
re-issued whenever its names change (a new address on another network, a new --allow-host) or
it is within 30 days of expiry, which no device notices. Certificates are built and checked
with ``cryptography`` (the addresses come from ``psutil``: every interface, not only the one
the default route uses).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from voxloop.errors import ConfigError
from voxloop.settings import data_dir

log = logging.getLogger(__name__)

CA_DAYS = 3650  # a device trusts the CA once, for years
SERVER_DAYS = 397  # within every browser's limit on a server certificate's lifetime
RENEW_DAYS = 30  # re-issue the server certificate this close to its expiry
WILDCARD = {"0.0.0.0", "::", ""}
# The kinds of key a certificate is signed with, and a TLS server serves with.
SIGNING_KEYS = (
    ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)  # fmt: skip
PHONE_HINT = (
    "  To use it from a phone: copy ca.pem there and install it as a trusted CA certificate "
    "(Android: Settings > Security > Install a certificate > CA certificate; iPhone: open it, "
    "install the profile, then turn it on in Settings > General > About > Certificate Trust Settings)."
)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What uvicorn serves (``cert``, ``key``) and what a device must trust: voxloop's CA
    (``own_ca``), or the given certificate itself."""

    cert: Path
    key: Path
    trust: Path
    fingerprint: str  # SHA-256 of ``trust``, as phones and ``openssl x509 -fingerprint`` show it
    own_ca: bool


# -- when, and for which names --------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address: a browser on this machine calls it secure over http."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def wants_https(host: str, https: bool | None, cert: str | None = None) -> bool:
    """--https / --no-https if given; else HTTPS with a certificate given, or off loopback."""
    if https is not None:
        return https
    return cert is not None or not is_loopback(host)


def machine_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback ones, interface by interface."""
    import psutil

    found: list[str] = []
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family == socket.AF_INET and not ipaddress.ip_address(entry.address).is_loopback:
                found.append(entry.address)
    return list(dict.fromkeys(found))


def machine_names() -> list[str]:
    """This machine's host name and its mDNS name (``NAME.local``)."""
    hostname = socket.gethostname().lower().rstrip(".")
    if not hostname:
        return []
    return list(dict.fromkeys([hostname, hostname.split(".")[0] + ".local"]))


def _canonical(name: str) -> str:
    """An address in its one short form; a name in lower case, as an A-label (IDNA)."""
    name = name.strip().strip("[]").lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(
            f"{name!r} is not a host name a certificate can hold; check --allow-host."
        ) from None


def certificate_names(host: str, allowed_hosts: Sequence[str] = ()) -> tuple[str, ...]:
    """Every name a browser may reach this server by: loopback, the machine's names and
    addresses, the bound --host, the --allow-host names."""
    names = ["localhost", "127.0.0.1", "::1", *machine_names(), *machine_addresses()]
    if host.strip("[]") not in WILDCARD:
        names.append(host)
    names += allowed_hosts
    return tuple(dict.fromkeys(_canonical(n) for n in names if n.strip()))


# -- voxloop's own CA and server certificate -----------------------------------------------------
def own_certificate(
    names: Sequence[str], folder: Path | None = None, now: dt.datetime | None = None
) -> TlsFiles:
    """The server certificate for ``names``, signed by voxloop's CA in ``folder``; the CA is made
    the first time, the server certificate whenever it is missing, stale or for other names."""
    folder = folder or data_dir() / "tls"
    now = now or dt.datetime.now(dt.timezone.utc)
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        folder.chmod(0o700)
    with _locked(folder):
        ca, ca_key = _ca(folder, now)
        cert_path, key_path = folder / "cert.pem", folder / "key.pem"
        wanted = {_canonical(n) for n in names}
        reason = _stale(cert_path, key_path, ca, wanted, now)
        if reason:
            log.info("issuing a server certificate (%s) for %s", reason, ", ".join(sorted(wanted)))
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _server_certificate(names, key, ca, ca_key, now)
            _write(key_path, _key_pem(key), private=True)
            _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return TlsFiles(cert_path, key_path, folder / "ca.pem", _fingerprint(ca), own_ca=True)


def _ca(folder: Path, now: dt.datetime) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """The kept CA, or a new one. A damaged CA is an error, not silently replaced: every device
    that trusts it would have to trust a new one."""
    cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
    if not cert_path.exists() and not key_path.exists():
        new_key = ec.generate_private_key(ec.SECP256R1())
        new_cert = _ca_certificate(new_key, now)
        _write(key_path, _key_pem(new_key), private=True)
        _write(cert_path, new_cert.public_bytes(serialization.Encoding.PEM), private=False)
        log.info("made a local CA in %s", folder)
        return new_cert, new_key
    fix = (
        f"Delete the folder {folder} to make a new CA (devices that trusted the old one must then "
        "install the new ca.pem)."
    )
    for path in (cert_path, key_path):
        if not path.exists():
            raise ConfigError(f"voxloop's local CA is incomplete: {path} is missing. {fix}")
    cert = _read_certificate(cert_path, "voxloop's CA certificate", fix)
    key = _read_key(key_path, "voxloop's CA key", fix)
    if _public(key) != _public(cert):
        raise ConfigError(f"voxloop's CA key {key_path} does not belong to {cert_path}. {fix}")
    if cert.not_valid_after_utc <= now:
        raise ConfigError(f"voxloop's CA {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}. {fix}")
    return cert, key


def _stale(
    cert_path: Path, key_path: Path, ca: x509.Certificate, names: set[str], now: dt.datetime
) -> str | None:
    """Why the server certificate must be issued again, or None when it is fine as it is. A
    missing or damaged one is simply made again: only the CA is worth keeping."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError:
        return "none yet"
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return f"the old one is unreadable: {exc}"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "signed by another CA"
    if not isinstance(key, SIGNING_KEYS) or _public(key) != _public(cert):
        return "its key does not match"
    if cert_names(cert) != names:
        return "the names changed"
    if cert.not_valid_after_utc - now < dt.timedelta(days=RENEW_DAYS):
        return f"it expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def cert_names(cert: x509.Certificate) -> set[str]:
    """The subjectAltNames of a certificate: host names and addresses, in their short forms."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    dns = san.get_values_for_type(x509.DNSName)
    ips = san.get_values_for_type(x509.IPAddress)
    return {*(n.lower() for n in dns), *(str(ip) for ip in ips)}


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    hostname = socket.gethostname() or "this machine"
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "voxloop"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"voxloop local CA ({hostname[:40]}, {now:%Y-%m-%d})"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))  # a phone whose clock runs behind
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    names: Sequence[str],
    key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    now: dt.datetime,
) -> x509.Certificate:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(_canonical(n) for n in names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    common = next((n for n in names if not _is_address(n)), "localhost")
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common[:64])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(entries), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(sign_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign_certificates,
        crl_sign=sign_certificates,
        encipher_only=False,
        decipher_only=False,
    )


# -- --cert and --key ----------------------------------------------------------------------------
def given_certificate(cert: Path, key: Path, now: dt.datetime | None = None) -> TlsFiles:
    """--cert and --key, checked now so that a wrong file is one clear line, not a traceback
    from deep inside uvicorn's start."""
    now = now or dt.datetime.now(dt.timezone.utc)
    certificate = _read_certificate(cert, "--cert", "Give a PEM certificate (-----BEGIN CERTIFICATE-----).")
    private = _read_key(key, "--key", "Give the certificate's PEM private key, unencrypted.")
    if _public(private) != _public(certificate):
        raise ConfigError(f"--key {key} is not the private key of --cert {cert}; give the matching pair.")
    if certificate.not_valid_after_utc <= now:
        raise ConfigError(
            f"--cert {cert} expired on {certificate.not_valid_after_utc:%Y-%m-%d}; give a current one."
        )
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"--cert {cert} and --key {key} cannot serve TLS ({exc}).") from None
    return TlsFiles(cert, key, cert, _fingerprint(certificate), own_ca=False)


def _read_certificate(path: Path, what: str, fix: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())[0]  # the first one: a chain's leaf
    except OSError as exc:
        raise ConfigError(f"Cannot read {what} {path} ({exc.strerror or exc}). {fix}") from None
    except ValueError:
        raise ConfigError(f"{what} {path} is not a PEM certificate. {fix}") from None


def _read_key(path: Path, what: str, fix: str) -> CertificateIssuerPrivateKeyTypes:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"Cannot read {what} {path} ({exc.strerror or exc}). {fix}") from None
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise ConfigError(f"{what} {path} is encrypted with a passphrase. {fix}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{what} {path} is not a PEM private key (or it is damaged). {fix}") from None
    if isinstance(key, SIGNING_KEYS):
        return key
    raise ConfigError(f"{what} {path} holds a kind of key TLS servers do not use. {fix}")


# -- the decision, and what is said at start -----------------------------------------------------
def tls_files(
    https: bool | None, cert: str | None, key: str | None, host: str, allowed_hosts: Sequence[str] = ()
) -> TlsFiles | None:
    """The certificate `voxloop serve` is to serve with, or None for plain HTTP."""
    if (cert is None) != (key is None):
        raise ConfigError(
            "Give --cert and --key together (a certificate and its private key), or neither: "
            "voxloop then makes its own."
        )
    if not wants_https(host, https, cert):
        if cert is not None:
            raise ConfigError("--cert and --key are for HTTPS; drop --no-https.")
        return None
    if cert is not None and key is not None:
        return given_certificate(Path(cert), Path(key))
    return own_certificate(certificate_names(host, allowed_hosts))


def open_urls(
    host: str, port: int, token: str | None, tls: TlsFiles | None, allowed_hosts: Sequence[str] = ()
) -> list[str]:
    """The page's URLs: the first for this machine, then those for other devices."""
    scheme = "https" if tls else "http"
    bound = host.strip("[]")
    if is_loopback(bound):
        hosts = ["localhost" if bound in ("127.0.0.1", "localhost", "::1") else bound, *allowed_hosts]
    elif bound in WILDCARD:
        hosts = ["localhost", *machine_addresses(), *(machine_names()[-1:] if tls else []), *allowed_hosts]
    else:
        hosts = [bound, *allowed_hosts]
    query = f"?token={token}" if token else ""
    shown = (f"[{h}]" if ":" in h else h for h in dict.fromkeys(hosts))
    return [f"{scheme}://{h}:{port}/{query}" for h in shown]


def announce(
    say: Callable[[str], None],
    host: str,
    port: int,
    token: str | None,
    tls: TlsFiles | None,
    allowed_hosts: Sequence[str] = (),
) -> None:
    """Where to open the page, and for HTTPS what a phone must trust."""
    first, *others = open_urls(host, port, token, tls, allowed_hosts)
    say(f"voxloop is listening on {first}")
    for url in others:
        say(f"  also: {url}")
    if tls is None:
        if not is_loopback(host):
            say("  Plain HTTP: browsers on other devices will not give this page the microphone.")
        return
    what = "CA certificate" if tls.own_ca else "certificate"
    say(f"  {what}: {tls.trust} (SHA-256 {tls.fingerprint})")
    if tls.own_ca:
        say(PHONE_HINT)


# -- small helpers ---------------------------------------------------------------------------------
def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _public(item: x509.Certificate | CertificateIssuerPrivateKeyTypes) -> bytes:
    public = item.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write all or nothing; a key is 0600 from the moment it exists."""
    mode = 0o600 if private else 0o644
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    partial.chmod(mode)  # exactly: the umask only ever narrows it
    os.replace(partial, path)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One `voxloop serve` at a time makes or renews the files (two starting together would
    otherwise each write a CA)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
