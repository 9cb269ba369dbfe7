"""DICOM TLS (PS3.15 Annex B, the BCP 195 profile) with the standard library's `ssl` contexts: the one that
pynetdicom's `start_server(ssl_context=...)` wraps each received association in, and the one that C-STORE to a
`--forward` destination uses (`associate(tls_args=...)`).

With a CA file the listener also asks every sender for a certificate and accepts only those signed by that CA
(mutual TLS), which, unlike an AE title, is a credential.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from lungct.errors import LungCTError


def _readable(path: Path, option: str) -> str:
    if not path.is_file():
        raise LungCTError(f"{option} {path}: no such file")
    return str(path)


def _load_own_certificate(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(_readable(cert, "--tls-cert"), _readable(key, "--tls-key"))
    except ssl.SSLError as exc:
        raise LungCTError(f"--tls-cert/--tls-key: not a certificate and its private key ({exc.reason})") from None


def _trust(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=_readable(ca, "--tls-ca"))
    except ssl.SSLError as exc:
        raise LungCTError(f"--tls-ca {ca}: not a CA certificate file ({exc.reason})") from None


def server_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context with this node's certificate and key; with `ca`, senders must present a
    certificate signed by it. Unreadable or mismatched files are one LungCTError naming the option."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_own_certificate(context, cert, key)
    if ca is not None:
        _trust(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ context for sending (C-STORE SCU): the destination's certificate is checked against `ca` (the
    system's CAs without it) and its host name; `cert` and `key`, when given, are presented to destinations that
    require a certificate of their senders."""
    if ca is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # the system's CAs
    else:  # what create_default_context makes (host name and certificate checked), trusting `ca` alone
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _trust(context, ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        _load_own_certificate(context, cert, key)
    return context
