"""Whether a host name or address is this machine: the service's listen check and the
worker's dialling check share it."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """`localhost` (any case) or a loopback address; another host name may resolve to
    anything, so it is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
