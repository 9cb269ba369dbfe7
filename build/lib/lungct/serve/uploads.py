"""Reading multipart uploads from the request stream with hard byte caps, in memory only.

Starlette's form parser spools files over 1 MB to temporary files on disk and learns the size only after
the fact; images must never touch the disk here, and an oversized upload must be stopped while it
streams, whatever its Content-Length claims. So the body is fed chunk by chunk to python-multipart's
streaming parser and every part is counted as it arrives. After a limit is hit the rest of the body is
read and dropped (up to DRAIN_BYTES more) so that the client receives the 413 rather than a reset socket.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from lungct.serve.errors import ApiError

DRAIN_BYTES = 64 * 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers on top of the file bytes themselves
MAX_BOUNDARY = 70  # RFC 2046 section 5.1.1: 1 to 70 characters
NAME_CHARS = 100  # file names echoed in answers are cut to this many characters


@dataclass
class Upload:
    """One uploaded file: `name` is the client's file name reduced to its last component (never a path)."""

    field: str
    name: str
    content_type: str
    data: bytes = b""


def safe_name(filename: str | None, fallback: str) -> str:
    """What answers and messages echo of a client-supplied name (an upload's or a zip member's).

    Its last path component only (folders of DICOM exports are often named after the patient), without
    control or format characters (Unicode category C: newlines, ANSI escapes, right-to-left overrides), at most
    NAME_CHARS characters; `fallback` when nothing is left.
    """
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C")).strip()
    if len(name) > NAME_CHARS:
        name = name[: NAME_CHARS - 3] + "..."
    return name or fallback


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:g} MB"


@dataclass
class _PartState:
    headers: dict[str, str] = field(default_factory=dict)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    is_file: bool = False


class _Collector:
    """python-multipart callbacks that build Uploads and record the first limit broken.

    Only parts named in `fields` and carrying a filename (RFC 7578: how every client sends a file) are files;
    any other form field (a note, a checkbox, a client's extra metadata) is read and dropped: it neither counts
    as a file nor is kept in memory.
    """

    def __init__(self, max_file_bytes: int, max_parts: int, fields: tuple[str, ...]):
        self.max_file_bytes = max_file_bytes
        self.max_parts = max_parts
        self.fields = fields
        self.uploads: list[Upload] = []
        self.part = _PartState()
        self.error: ApiError | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": lambda d, s, e: self.part.header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self.part.header_value.extend(d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self.part = _PartState()

    def on_header_end(self) -> None:
        key = self.part.header_field.decode("latin-1").strip().lower()
        self.part.headers[key] = self.part.header_value.decode("latin-1").strip()
        self.part.header_field.clear()
        self.part.header_value.clear()

    def on_headers_finished(self) -> None:
        field_name, filename = self._disposition()
        self.part.is_file = field_name in self.fields and filename is not None
        if self.part.is_file and len(self.uploads) >= self.max_parts and self.error is None:
            hint = "; use /v1/predict/batch for several" if self.max_parts == 1 else ""
            self.error = ApiError(413, "too_many_files", f"too many files: at most {self.max_parts} per request{hint}")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None or not self.part.is_file:
            return
        self.part.size += end - start
        if self.part.size > self.max_file_bytes:
            name = self._disposition()[1] or "upload"
            self.error = ApiError(
                413,
                "file_too_large",
                f"file {safe_name(name, 'upload')!r} is larger than the {_mb(self.max_file_bytes)} limit",
            )
            self.part.chunks.clear()
            return
        self.part.chunks.append(bytes(data[start:end]))

    def on_part_end(self) -> None:
        if self.error is not None or not self.part.is_file:
            return
        field_name, filename = self._disposition()
        content_type = self.part.headers.get("content-type", "").split(";")[0].strip().lower()
        self.uploads.append(
            Upload(
                field_name,
                safe_name(filename, f"upload-{len(self.uploads) + 1}"),
                content_type,
                b"".join(self.part.chunks),
            )
        )
        self.part.chunks = []

    def _disposition(self) -> tuple[str, str | None]:
        _, options = parse_options_header(self.part.headers.get("content-disposition", ""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        return name, None if filename is None else filename.decode("utf-8", "replace")


async def read_uploads(
    request: Request, max_file_bytes: int, max_total_bytes: int, max_parts: int, fields: tuple[str, ...]
) -> list[Upload]:
    """The parts named in `fields` of a multipart/form-data body (other form fields are dropped), or an
    ApiError (415, 400, 413) naming what is wrong."""
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        shown = ctype.decode("latin-1") or "none"
        raise ApiError(
            415, "unsupported_media_type", f"expected a multipart/form-data upload, got content type {shown}"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "malformed_multipart", "the multipart/form-data content type has no boundary")
    if len(boundary) > MAX_BOUNDARY:
        raise ApiError(
            400,
            "malformed_multipart",
            f"the multipart boundary is {len(boundary)} characters long; RFC 2046 allows at most {MAX_BOUNDARY}",
        )
    limit = max_total_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + DRAIN_BYTES:
        raise ApiError(413, "request_too_large", f"the request is larger than the {_mb(max_total_bytes)} limit")
    collector = _Collector(max_file_bytes, max_parts, fields)
    try:
        parser = MultipartParser(boundary, collector.callbacks(), max_header_count=16)
    except (MultipartParseError, FormParserError, ValueError) as exc:
        raise ApiError(400, "malformed_multipart", f"the multipart boundary is not usable ({exc})") from None
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if collector.error is None:
                parser.write(chunk)  # first, so that a file over its own limit is named as such
            if collector.error is None and total > limit:
                collector.error = ApiError(
                    413, "request_too_large", f"the request is larger than the {_mb(max_total_bytes)} limit"
                )
            if collector.error is not None and total > limit + DRAIN_BYTES:
                break  # past this, stop reading; the rest was being dropped so the client gets our answer
        if collector.error is None:
            parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, "malformed_multipart", f"the multipart body cannot be parsed ({exc})") from None
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client closed the connection mid-upload") from None
    if collector.error is not None:
        raise collector.error
    return collector.uploads
