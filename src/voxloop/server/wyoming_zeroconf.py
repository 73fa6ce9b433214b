"""Announcing the Wyoming server on the LAN over mDNS (``_wyoming._tcp``), the way Home
Assistant discovers Wyoming services: it then offers voxloop under Settings → Devices & services
without anyone typing a host and port.

Not ``wyoming.zeroconf.HomeAssistantZeroconf``: it cannot withdraw the announcement, so a server
stopped inside a process that goes on (tests, a program embedding voxloop) would still be
announced; here the owner withdraws it (mDNS goodbye packets) and closes its sockets on the way
out. Needs the optional ``zeroconf`` package: ``pip install 'voxloop[zeroconf]'``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

from voxloop.errors import ConfigError

log = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
_MDNS_GROUP = "224.0.0.251"


def default_name() -> str:
    """``voxloop-<host name>``: what Home Assistant shows for the discovered service."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"voxloop-{host}"[:63]


def lan_address() -> str:
    """The address this machine reaches the LAN (and its mDNS group) from; no packet is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((_MDNS_GROUP, 5353))
        return str(probe.getsockname()[0])


def announced_address(host: str) -> str:
    """The IPv4 address to announce for a server bound to ``host``."""
    if host in ("", "0.0.0.0", "::"):
        return lan_address()
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    if address.is_loopback:
        raise ConfigError(
            f"--zeroconf announces voxloop on the LAN, but it listens on {host} (this machine only). "
            "Pass --host 0.0.0.0 (or this machine's LAN address) too."
        )
    if address.version != 4:
        raise ConfigError(f"--zeroconf announces an IPv4 address; --host {host} is IPv6. Bind to IPv4.")
    return str(address)


def service_info(name: str, address: str, port: int) -> Any:
    """The mDNS record: ``<name>._wyoming._tcp.local.`` at ``address``:``port``."""
    from zeroconf.asyncio import AsyncServiceInfo

    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"{name}.{SERVICE_TYPE}",
        port=port,
        addresses=[socket.inet_aton(address)],
        server=f"{name}.local.",
    )


@contextlib.asynccontextmanager
async def advertised(name: str, host: str, port: int) -> AsyncIterator[str]:
    """Announce the server for the block; yields the address announced."""
    try:
        from zeroconf.asyncio import AsyncZeroconf
    except ImportError:
        raise ConfigError(
            "--zeroconf needs the zeroconf package. Run: pip install 'voxloop[zeroconf]'"
        ) from None
    address = announced_address(host)
    info = service_info(name, address, port)
    zc = AsyncZeroconf()
    try:
        await zc.async_register_service(info, allow_name_change=True)
        log.info("announced %s at %s:%d over mDNS", info.name, address, port)
        yield address
    finally:
        with contextlib.suppress(Exception):
            await zc.async_unregister_service(info)
        await zc.async_close()
