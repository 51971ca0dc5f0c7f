"""Who may open the console.

On a loopback address with no credentials configured, only clients on this machine are
served. Anywhere else the console needs a bearer token or basic-auth credentials from
the config, and refuses to start without them. Patient IDs are therefore only ever
shown to an authenticated or local client.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress

from fastapi import HTTPException, Request

from dxr_node.node.config import WebConfig


class ConsoleConfigError(Exception):
    """The console cannot start with this configuration (the message says why)."""


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False


def has_credentials(web: WebConfig) -> bool:
    return bool(web.token or (web.username and web.password))


def check_console_access(web: WebConfig) -> None:
    """Refuse a console reachable from the network without credentials."""
    if web.username and not web.password or web.password and not web.username:
        raise ConsoleConfigError("web.username and web.password must be set together")
    if web.enabled and not is_loopback(web.host) and not has_credentials(web):
        raise ConsoleConfigError(
            f"the console would listen on {web.host}, which is not a loopback address, "
            "without credentials: set web.token (DXR_NODE__WEB__TOKEN) or web.username "
            "and web.password, or set web.host = \"127.0.0.1\"")


def host_name(header: str) -> str:
    """The name part of a Host header, lower case: ``[::1]:8080`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def host_allowed(header: str, web: WebConfig) -> bool:
    """Whether the console answers a request sent to this Host (DNS-rebinding defence):
    localhost names and loopback addresses, web.host and web.allowed_hosts; any name
    when credentials are set and no list is configured."""
    name = host_name(header)
    if not name:
        return False
    if name == "localhost" or is_loopback(name) or name == web.host.lower():
        return True
    if name in (allowed.lower() for allowed in web.allowed_hosts):
        return True
    return has_credentials(web) and not web.allowed_hosts


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _authenticated(header: str, web: WebConfig) -> bool:
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and web.token:
        return _equal(value.strip(), web.token)
    if scheme == "basic" and web.username and web.password:
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return _equal(user, web.username) & _equal(password, web.password)
    return False


def require_access(request: Request) -> None:
    """FastAPI dependency guarding every console route but /healthz and /static."""
    web: WebConfig = request.app.state.config.web
    if not has_credentials(web):
        client = request.client.host if request.client else None
        if not is_loopback(client):
            raise HTTPException(403, "the console without credentials serves this machine only")
        return
    if _authenticated(request.headers.get("authorization", ""), web):
        return
    challenge = 'Basic realm="dxr-node console"' if web.username else "Bearer"
    raise HTTPException(401, "credentials required", headers={"WWW-Authenticate": challenge})


def require_same_origin(request: Request) -> None:
    """Operator actions (POST) only from the console's own pages or non-browser clients:
    a browser sends basic-auth credentials to any site's form, so check its Origin."""
    origin = request.headers.get("origin")
    if origin and origin.split("://", 1)[-1] != request.headers.get("host", ""):
        raise HTTPException(403, "cross-site request refused")
