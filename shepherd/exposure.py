"""Safe-default checks at start-up: a gateway open to the network without keys, a port already taken."""

from __future__ import annotations

import ipaddress
import logging

from shepherd.config import GatewayConfig


class BindError(OSError):
    """A listener could not bind; the message is one line for the operator."""


def warn_if_open(config: GatewayConfig, log: logging.Logger) -> bool:
    """One warning when a non-loopback address is served without any key (True if it was logged)."""
    auth = config.auth
    if _is_loopback(config.host) or auth.api_keys or auth.control_plane_keys or auth.jwt_issuer:
        return False
    log.warning("listening on %s without any key: the admin API (/workers, /flush_cache, ...) and the "
                "inference routes are open to anyone who can reach this address; set --api-key and "
                "--control-plane-api-keys, or bind --host 127.0.0.1", config.host)
    return True


def bind_error(what: str, host: str, port: int, exc: OSError) -> BindError:
    reason = exc.strerror or str(exc)
    if "address already in use" in str(exc).lower():
        reason = "address already in use (is another gateway running?)"
    return BindError(exc.errno or 0, f"cannot listen on {host}:{port} ({what}): {reason}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything
