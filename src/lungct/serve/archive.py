"""Zip uploads for batch prediction: every limit is checked on the central directory before anything is
decompressed, and every member is read into memory with a hard cap (never extracted to disk).

Python's zipfile does the parsing; the checks here are what zipfile leaves to the caller: member count,
declared and actual uncompressed sizes, compression ratio (zip bombs), and names that are absolute, climb
out with `..`, or are symbolic links. An archive that breaks one is rejected whole: it is hostile or
broken, not one bad slice among good ones.
"""

from __future__ import annotations

import io
import stat
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from lungct.serve.errors import ApiError

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty archive
ZIP_TYPES = {"application/zip", "application/x-zip-compressed", "application/x-zip"}


@dataclass(frozen=True)
class ZipLimits:
    max_members: int
    max_member_bytes: int
    max_total_bytes: int
    max_ratio: float


def is_zip(data: bytes, name: str, content_type: str) -> bool:
    return data[:4] in ZIP_MAGIC or content_type in ZIP_TYPES or name.lower().endswith(".zip")


def _skipped(info: zipfile.ZipInfo) -> bool:
    """Folders and the metadata files archivers add (__MACOSX/, ._name, .DS_Store) are not slices."""
    path = PurePosixPath(info.filename)
    return info.is_dir() or path.parts[:1] == ("__MACOSX",) or path.name.startswith(".")


def _check_name(archive: str, info: zipfile.ZipInfo) -> None:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts or "\x00" in name:
        raise ApiError(400, "unsafe_archive", f"{archive}: member {name!r} points outside the archive")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ApiError(400, "unsafe_archive", f"{archive}: member {name!r} is a symbolic link")
    if info.flag_bits & 0x1:
        raise ApiError(400, "unsafe_archive", f"{archive}: member {name!r} is encrypted")


def zip_members(data: bytes, archive: str, limits: ZipLimits) -> list[tuple[str, bytes]]:
    """[(member file name, bytes)] of a zip upload, names reduced to their last component; ApiError if hostile."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise ApiError(400, "bad_archive", f"{archive} is not a readable zip archive ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members * 2 + 16:  # folders and metadata included, still bounded
            raise ApiError(
                413, "too_many_files", f"{archive} has {len(infos)} entries; at most {limits.max_members} files"
            )
        for info in infos:
            _check_name(archive, info)
        members = [i for i in infos if not _skipped(i)]
        if len(members) > limits.max_members:
            raise ApiError(413, "too_many_files", f"{archive} has {len(members)} files; at most {limits.max_members}")
        total = 0
        for info in members:
            if info.file_size > limits.max_member_bytes:
                raise ApiError(
                    413,
                    "archive_too_large",
                    f"{archive}: member {info.filename!r} unpacks to more than the per-file limit",
                )
            if info.file_size > 1024 * 1024 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise ApiError(
                    413,
                    "archive_too_large",
                    f"{archive}: member {info.filename!r} is compressed more than {limits.max_ratio:g}:1 (a zip bomb?)",
                )
            total += info.file_size
        if total > limits.max_total_bytes:
            raise ApiError(413, "archive_too_large", f"{archive} unpacks to more than the batch size limit")
        out = []
        for info in members:
            out.append((PurePosixPath(info.filename.replace("\\", "/")).name, _read_member(zf, info, archive, limits)))
        return out


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: str, limits: ZipLimits) -> bytes:
    """The member's bytes, read with a cap: the sizes in the directory are the archive's claim, not a fact."""
    try:
        with zf.open(info) as fh:
            blob = fh.read(limits.max_member_bytes + 1)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ApiError(400, "bad_archive", f"{archive}: member {info.filename!r} cannot be unpacked ({exc})") from None
    if len(blob) > limits.max_member_bytes:
        raise ApiError(
            413, "archive_too_large", f"{archive}: member {info.filename!r} unpacks to more than the per-file limit"
        )
    return blob
