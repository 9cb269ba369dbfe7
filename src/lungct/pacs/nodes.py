"""DICOM application entities: AE titles and the HOST:PORT:AET form the command line takes."""

from __future__ import annotations

from dataclasses import dataclass

from lungct.errors import LungCTError


def check_ae_title(title: str, what: str = "AE title") -> str:
    """An AE title as DICOM allows it (1-16 characters, no backslash or control characters), else LungCTError."""
    if not title.strip() or len(title) > 16 or "\\" in title or any(ord(c) < 32 or ord(c) > 126 for c in title):
        raise LungCTError(f"{what} {title!r} is not a valid AE title (1-16 printable ASCII characters, no backslash)")
    return title


def check_port(port: int, what: str = "port") -> int:
    if not 1 <= port <= 65535:
        raise LungCTError(f"{what} {port} is not a TCP port (1-65535)")
    return port


@dataclass(frozen=True)
class Node:
    """A remote DICOM node: where C-STORE sends results."""

    host: str
    port: int
    ae_title: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}:{self.ae_title}"


def parse_node(text: str) -> Node:
    """ "HOST:PORT:AET" (an IPv6 host in brackets: "[::1]:104:PACS") to a Node; a LungCTError saying the form."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise LungCTError(f"{text!r} is not HOST:PORT:AET (e.g. 127.0.0.1:4242:ORTHANC)")
    host, port_text, aet = parts
    if host.startswith("[") != host.endswith("]") or host.count("[") > 1:
        raise LungCTError(f"{text!r} is not HOST:PORT:AET: the brackets around the host {host!r} do not pair")
    try:
        port = int(port_text)
    except ValueError:
        raise LungCTError(f"{text!r} is not HOST:PORT:AET: {port_text!r} is not a port number") from None
    return Node(host.strip("[]"), check_port(port), check_ae_title(aet))
