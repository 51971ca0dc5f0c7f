"""Who may open the console, and who may do what.

On a loopback address with no credentials configured, only clients on this machine are
served. Anywhere else the console needs a bearer token or basic-auth credentials from
the config, or reader accounts (``dxr-node user add``), and refuses to start without
them. Patient IDs are therefore only ever shown to an authenticated or local client.

Principals: a reader signed in with a session cookie (or sending their account's
basic-auth credentials), the config's token or basic credentials ("operator"), or a
local client. Roles of accounts: viewer (read only), reviewer (also review and retry),
admin (everything). Review actions need a reviewer or admin account: the final SR names
the person who verified it. Browser forms of cookie sessions carry a CSRF token.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Depends, HTTPException, Request

from dxr_node.node.config import WebConfig
from dxr_node.node.review_store import ReviewStore, User

SESSION_COOKIE = "dxr_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
MAX_FORM_BYTES = 16_384  # the console's forms are a few short fields


@dataclass(frozen=True)
class Principal:
    kind: str  # "session" | "account" (basic auth) | "token" | "basic" | "local"
    name: str
    role: str  # viewer | reviewer | admin; "operator" for config credentials and local
    user: User | None = None
    csrf_token: str | None = None  # cookie sessions only

    @property
    def can_review(self) -> bool:
        return self.user is not None and self.role in ("reviewer", "admin")

    @property
    def read_only(self) -> bool:
        return self.role == "viewer"


class LoginRequired(Exception):
    """A person on a page without credentials: send them to the sign-in form."""


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


def check_console_access(web: WebConfig, accounts: bool = False) -> None:
    """Refuse a console reachable from the network without credentials (config ones,
    or reader ``accounts`` in the database)."""
    if web.username and not web.password or web.password and not web.username:
        raise ConsoleConfigError("web.username and web.password must be set together")
    if web.enabled and not is_loopback(web.host) and not has_credentials(web) \
            and not accounts:
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


def _authenticated(header: str, web: WebConfig, accounts: ReviewStore) -> Principal | None:
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and web.token:
        return Principal("token", "token", "operator") if _equal(value.strip(), web.token) \
            else None
    if scheme != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value.strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if web.username and web.password and \
            _equal(user, web.username) & _equal(password, web.password):
        return Principal("basic", user, "operator")
    account = accounts.authenticate(user, password)  # API clients of a reader's account
    if account is not None:
        return Principal("account", account.username, account.role, account)
    return None


def _session(request: Request, accounts: ReviewStore) -> Principal | None:
    token = request.cookies.get(SESSION_COOKIE)
    session = accounts.session(token) if token else None
    if session is None:
        return None
    return Principal("session", session.user.username, session.user.role, session.user,
                     session.csrf_token)


def principal(request: Request) -> Principal | None:
    """Who ``require_access`` let in (None on unguarded routes)."""
    return getattr(request.state, "principal", None)


def require_access(request: Request) -> None:
    """FastAPI dependency guarding every console route but /healthz, /static and the
    sign-in form; sets ``request.state.principal``."""
    web: WebConfig = request.app.state.config.web
    accounts = ReviewStore(request.app.state.store)
    found = _session(request, accounts)
    header = request.headers.get("authorization", "")
    if found is None and header:
        found = _authenticated(header, web, accounts)
    client = request.client.host if request.client else None
    if found is None and not has_credentials(web) and is_loopback(client):
        found = Principal("local", "local", "operator")
    if found is not None:
        request.state.principal = found
        return
    has_accounts = accounts.has_users()
    path = request.url.path
    if has_accounts and not header and not path.startswith("/api/") and path != "/metrics":
        raise LoginRequired()
    if not has_credentials(web) and not has_accounts:
        raise HTTPException(403, "the console without credentials serves this machine only")
    challenge = 'Basic realm="dxr-node console"' if web.username or has_accounts else "Bearer"
    raise HTTPException(401, "credentials required", headers={"WWW-Authenticate": challenge})


async def form_fields(request: Request) -> dict[str, str]:
    """An url-encoded form body, bounded (no multipart parser needed for a few fields)."""
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        return {}
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, f"form larger than {MAX_FORM_BYTES} bytes")
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(422, "unreadable form") from None
    return {key: values[0] for key, values in parsed.items()}


async def require_csrf(request: Request) -> None:
    """A POST only from the console's own pages or non-browser clients: a browser sends
    basic-auth credentials to any site's form, so check its Origin; a cookie session's
    request must carry its CSRF token (form field or X-CSRF-Token header)."""
    origin = request.headers.get("origin")
    if origin and origin.split("://", 1)[-1] != request.headers.get("host", ""):
        raise HTTPException(403, "cross-site request refused")
    who = principal(request)
    if who is not None and who.csrf_token is not None:
        given = request.headers.get(CSRF_HEADER) or (await form_fields(request)).get(CSRF_FIELD)
        if not given or not _equal(given, who.csrf_token):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page")


async def require_same_origin(request: Request) -> None:
    """Actions (POST): ``require_csrf``, and never from a viewer account (read only)."""
    await require_csrf(request)
    who = principal(request)
    if who is not None and who.read_only:
        raise HTTPException(403, f"{who.name} has a viewer account: read only")


def require_reviewer(request: Request) -> Principal:
    """Review actions: a reviewer's (or admin's) own account, never a shared credential."""
    who = principal(request)
    if who is None or not who.can_review:
        role = who.role if who is not None else "none"
        raise HTTPException(403, "review actions need a signed-in reviewer account "
                                 f"(this request's role: {role})")
    return who



Reviewer = Annotated[Principal, Depends(require_reviewer)]  # a route's reviewer parameter
