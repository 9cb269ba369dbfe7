"""Ports for the commands that listen (`serve`, `app`): a port that cannot be used is one clear error, at once."""

from __future__ import annotations

import socket

from lungct.errors import LungCTError


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening socket bound before anything slow happens. uvicorn binds only after the app (and the model) is
    built, then logs the errno and exits with status 3; Streamlit prints "Port N is not available" after lungct has
    announced its URL. Binding here first gives `lungct: error: cannot listen on ...`, as `lungct dicom-listen`
    does. The same options as uvicorn's own bind (SO_REUSEADDR, inheritable)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:  # in use, not an address of this machine, a name that does not resolve
        sock.close()
        raise LungCTError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
