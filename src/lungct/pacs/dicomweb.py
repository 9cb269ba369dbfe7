"""DICOMweb primitives (dicomweb-client): a client whose credentials come from the environment only,
a study retrieved one instance at a time (WADO-RS), and objects stored (STOW-RS).

Credentials never come from the command line, where `ps` and shell history would show them:
LUNGCT_DICOMWEB_USER with LUNGCT_DICOMWEB_PASSWORD (HTTP basic), or LUNGCT_DICOMWEB_TOKEN (bearer).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from lungct.errors import LungCTError

USER, PASSWORD, TOKEN = "LUNGCT_DICOMWEB_USER", "LUNGCT_DICOMWEB_PASSWORD", "LUNGCT_DICOMWEB_TOKEN"
TIMEOUT = 60.0  # seconds for one HTTP request


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LungCTError(f"{url!r} is not a DICOMweb base URL (http:// or https://...)")
    if parts.username or parts.password:
        raise LungCTError(f"put credentials in {USER}/{PASSWORD} or {TOKEN}, not in the URL")
    return url.rstrip("/")


def session_from_env(env: Mapping[str, str] | None = None) -> requests.Session:
    """A requests session with basic or bearer authentication from the environment, or none."""
    env = os.environ if env is None else env
    user, password, token = env.get(USER), env.get(PASSWORD), env.get(TOKEN)
    session = requests.Session()
    if token and (user or password):
        raise LungCTError(f"set either {TOKEN} or {USER}/{PASSWORD}, not both")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user or password:
        if not (user and password):
            raise LungCTError(f"HTTP basic authentication needs both {USER} and {PASSWORD}")
        session.auth = (user, password)
    return session


def make_client(url: str, env: Mapping[str, str] | None = None, attempts: int = 1) -> DICOMwebClient:
    """A client; `attempts` > 1 lets dicomweb-client retry a request (also on a refused connection) with waits
    of 0.5, 1, 2... seconds. Storing uses 1: the outgoing queue retries, with its own backoff."""
    client = DICOMwebClient(check_url(url), session=session_from_env(env), timeout=TIMEOUT)
    client.set_http_retry_params(retry=attempts > 1, max_attempts=attempts, wait_exponential_multiplier=500)
    return client


def describe_http_error(exc: Exception) -> str:
    """One line for a failed request: the status and reason, or the connection problem (never the headers)."""
    response = getattr(exc, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason or ''}".strip()
    return type(exc).__name__


def http_status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return None if response is None else int(response.status_code)


def iter_study(client: DICOMwebClient, study_uid: str) -> Iterator[Dataset]:
    """The study's instances, one at a time (WADO-RS); a LungCTError naming the HTTP problem."""
    try:
        yield from client.iter_study(study_uid)
    except requests.RequestException as exc:
        status = http_status(exc)
        hint = {401: f" (set {USER}/{PASSWORD} or {TOKEN})", 403: " (not allowed)", 404: " (no such study)"}
        raise LungCTError(
            f"cannot retrieve the study from {client.base_url}: {describe_http_error(exc)}{hint.get(status, '')}"
        ) from None


def stow(client: DICOMwebClient, datasets: list[Dataset]) -> Dataset:
    """STOW-RS: the server's response (ReferencedSOPSequence, FailedSOPSequence); requests' errors propagate."""
    return client.store_instances(datasets=datasets)
