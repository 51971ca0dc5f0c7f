"""DICOM TLS (PS3.15 B.12/B.13 secure transport): SSL contexts for the SCP and for the
destinations, from the ``[tls]`` config table.

TLS 1.2 is the minimum, 1.3 is preferred (OpenSSL negotiates the highest both offer).
The SCP's handshake happens in the association's own thread, under the connection
guard's deadline (a client that never finishes its handshake cannot block the listener);
a client certificate, when required, is checked against ``allowed_client_subjects``
right after the handshake.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

from dxr_node.node.config import TlsConfig


class TlsConfigError(Exception):
    """The certificate, key or CA file cannot be used (the message says which and why)."""


def _base(context: ssl.SSLContext, tls: TlsConfig) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if tls.certificate is not None:
            context.load_cert_chain(tls.certificate, tls.private_key)
        if tls.ca_certificates is not None:
            context.load_verify_locations(tls.ca_certificates)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"tls: cannot load certificates: {exc}") from None
    return context


def server_context(tls: TlsConfig, socket_class: type | None = None) -> ssl.SSLContext:
    """The SCP's context; ``socket_class`` (an ssl.SSLSocket subclass) is what it makes."""
    context = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls)
    if tls.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    if socket_class is not None:
        context.sslsocket_class = socket_class
    return context


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """For the destinations: verifies the server against ``ca_certificates`` (else the
    system's CAs) and its host name; presents the node's certificate (mutual TLS)."""
    context = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), tls)
    if tls.ca_certificates is None:
        context.load_default_certs()
    context.check_hostname = tls.verify_server_hostname
    return context


def subject_text(certificate: dict[str, Any] | None) -> str:
    """``CN=node,O=Hospital`` from ``SSLSocket.getpeercert()``; empty without one."""
    if not certificate:
        return ""
    names = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
             "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}
    parts = [f"{names.get(key, key)}={value}"
             for rdn in certificate.get("subject", ()) for key, value in rdn]
    return ",".join(parts)


def subject_allowed(certificate: dict[str, Any] | None, allowed: Sequence[str]) -> bool:
    """Empty list: any certificate the CA vouches for. Else the subject's CN or its whole
    ``CN=...,O=...`` text must be listed."""
    if not allowed:
        return True
    text = subject_text(certificate)
    common = next((part[3:] for part in text.split(",") if part.startswith("CN=")), None)
    return text in allowed or (common is not None and common in allowed)
