"""Zip uploads for batch prediction: every limit is checked on the central directory before anything is
decompressed, and every member is read into memory with a hard cap (never extracted to disk).

Python's zipfile does the parsing; the checks here are what zipfile leaves to the caller: member count,
declared and actual uncompressed sizes, compression ratio (zip bombs), and names that are absolute, climb
out with `..`, or are symbolic links. An archive that breaks one is rejected whole: it is hostile or
broken, not one bad slice among good ones.

Member names are echoed (in results and in messages) as lungct.serve.uploads.safe_name makes them: the last
path component only, never the folders (DICOM exports are often filed under the patient's name), without
control characters, at most 100 characters.
"""

from __future__ import annotations

import io
import stat
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from lungct.serve.errors import ApiError
from lungct.serve.uploads import safe_name

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty archive
RATIO_FLOOR = 1024 * 1024  # compression ratios are judged above 1 MiB unpacked (small files compress freely)


@dataclass(frozen=True)
class ZipLimits:
    max_members: int
    max_member_bytes: int
    max_total_bytes: int
    max_ratio: float


def is_zip(data: bytes) -> bool:
    """A zip archive by its content (a local file header or an empty archive's end record), as DICOM is known by
    its header: a PNG sent as `study.zip` or `application/zip` is still a PNG, and garbage so named is an
    unreadable file in its own result, not a broken archive that fails the batch."""
    return data[:4] in ZIP_MAGIC


def _skipped(info: zipfile.ZipInfo) -> bool:
    """Folders and the metadata files archivers add (__MACOSX/, ._name, .DS_Store) are not slices."""
    path = PurePosixPath(info.filename)
    return info.is_dir() or path.parts[:1] == ("__MACOSX",) or path.name.startswith(".")


def member_name(info: zipfile.ZipInfo) -> str:
    """The member's name as answers show it: base name only, cleaned and shortened (see the module doc)."""
    return safe_name(info.filename, "member")


def _check_name(archive: str, info: zipfile.ZipInfo) -> None:
    name = info.filename
    shown = member_name(info)
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts or "\x00" in name:
        raise ApiError(400, "unsafe_archive", f"{archive}: member {shown!r} points outside the archive")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ApiError(400, "unsafe_archive", f"{archive}: member {shown!r} is a symbolic link")
    if info.flag_bits & 0x1:
        raise ApiError(400, "unsafe_archive", f"{archive}: member {shown!r} is encrypted")


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
                    f"{archive}: member {member_name(info)!r} unpacks to more than the per-file limit",
                )
            if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise ApiError(
                    413,
                    "archive_too_large",
                    f"{archive}: member {member_name(info)!r} is compressed more than {limits.max_ratio:g}:1 "
                    "(a zip bomb?)",
                )
            total += info.file_size
        if total > limits.max_total_bytes:
            raise ApiError(413, "archive_too_large", f"{archive} unpacks to more than the batch size limit")
        # Many small members escape the per-member ratio check (200 x 1 MiB of zeros is a 225 kB zip): the
        # archive as a whole is held to the same ratio.
        if total > RATIO_FLOOR and total > limits.max_ratio * max(len(data), 1):
            raise ApiError(
                413,
                "archive_too_large",
                f"{archive} unpacks to {total / RATIO_FLOOR:.0f} MB from {len(data) / 1024:.0f} kB, more than "
                f"{limits.max_ratio:g}:1 (a zip bomb?)",
            )
        out = []
        budget = limits.max_total_bytes
        for info in members:
            blob = _read_member(zf, info, archive, limits)
            budget -= len(blob)  # what is actually unpacked, not what the directory claims
            if budget < 0:
                raise ApiError(413, "archive_too_large", f"{archive} unpacks to more than the batch size limit")
            out.append((member_name(info), blob))
        return out


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: str, limits: ZipLimits) -> bytes:
    """The member's bytes, read with a cap: the sizes in the directory are the archive's claim, not a fact."""
    try:
        with zf.open(info) as fh:
            blob = fh.read(limits.max_member_bytes + 1)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        shown = member_name(info)
        raise ApiError(400, "bad_archive", f"{archive}: member {shown!r} cannot be unpacked ({exc})") from None
    if len(blob) > limits.max_member_bytes:
        raise ApiError(
            413, "archive_too_large", f"{archive}: member {member_name(info)!r} unpacks to more than the per-file limit"
        )
    return blob
